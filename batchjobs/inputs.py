"""Reading a batch job's input file as a stream of items, whatever its format:

- the public client's CSV: header `id,url` or `id,args`, written with `quotechar="'"`;
  `args` is JSON text (scale-launch 0.3.x) or base64 of JSON text (newer clients), per row;
  a CSV quoted the usual way (`"`, as spreadsheets and pandas write it) is read too;
- JSON lines: one object per line with `args` or `url` and an optional `id` (default: the
  line number, from 1);
- a JSON list of such objects (`id` defaults to the position, from 0).

Items come out as `{"id": ..., "args": ...}` or `{"id": ..., "url": ...}`. A bad line raises
InputError naming it; nothing here holds more than one item (plus a read buffer) in memory.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterator
from typing import IO

READ_BLOCK = 1 << 20
HEAD_BYTES = 64 * 1024


class InputError(ValueError):
    """A problem with the input file; the message names the line or item."""


def detect_format(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    if text.startswith(b"["):
        return "json"
    return "csv"


def iter_items(stream: IO[bytes]) -> Iterator[dict]:
    """Items of a binary stream, in file order."""
    head = stream.read(HEAD_BYTES)
    rest = io.BufferedReader(_Prepend(head, stream), READ_BLOCK)
    fmt = detect_format(head)
    if fmt == "jsonl":
        return _jsonl_items(rest)
    if fmt == "json":
        return _json_list_items(rest)
    return _csv_items(rest, csv_quotechar(head))


def csv_quotechar(head: bytes) -> str:
    """`"` when the first data row's first or second field opens with it, else the client's `'`."""
    for line in head.lstrip(b"\xef\xbb\xbf").splitlines()[1:]:
        if line.strip():
            _, _, second = line.partition(b",")
            return '"' if line.startswith(b'"') or second.startswith(b'"') else "'"
    return "'"


def check_head(head: bytes) -> None:
    """Cheap checks on the first bytes of an input file (at create time)."""
    if not head.strip():
        raise InputError("the input file is empty")
    try:
        items = iter_items(io.BytesIO(head))
        next(items, None)
    except InputError:
        raise
    except UnicodeDecodeError:
        raise InputError("the input file is not UTF-8 text") from None


def count_items(stream: IO[bytes]) -> int:
    """How many items a file holds: exact for JSON lists (parsed), a line count otherwise
    (minus the CSV header), which is exact for what the clients write."""
    head = stream.read(HEAD_BYTES)
    fmt = detect_format(head)
    if fmt == "json":
        return sum(1 for _ in _json_list_items(io.BufferedReader(_Prepend(head, stream), READ_BLOCK)))
    lines, last = 0, b""
    block = head
    while block:
        lines += block.count(b"\n")
        last = block
        block = stream.read(READ_BLOCK)
    if last and not last.endswith(b"\n"):
        lines += 1
    return max(lines - (1 if fmt == "csv" else 0), 0)


# --- formats ------------------------------------------------------------------------------


def _item(position: str, obj: object, default_id: object) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f'{position}: expected an object with "args" or "url", got {type(obj).__name__}')
    has_args, has_url = "args" in obj, "url" in obj
    if has_args == has_url:
        raise InputError(f'{position}: needs exactly one of "args" or "url"')
    item_id = obj.get("id", default_id)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise InputError(f'{position}: "id" must be a string or an integer')
    if has_url:
        if not isinstance(obj["url"], str):
            raise InputError(f'{position}: "url" must be a string')
        return {"id": item_id, "url": obj["url"]}
    return {"id": item_id, "args": obj["args"]}


def _jsonl_items(stream: IO[bytes]) -> Iterator[dict]:
    for number, raw in enumerate(stream, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"line {number}: not valid JSON ({error})") from None
        yield _item(f"line {number}", obj, number)


def _json_list_items(stream: IO[bytes]) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    buffer = text.read(READ_BLOCK).lstrip()
    if not buffer.startswith("["):
        raise InputError("item 0: a JSON list must start with [")
    buffer, position, eof = buffer[1:], 0, False
    expect_comma = False
    while True:
        buffer = buffer.lstrip()
        if not buffer and not eof:
            more = text.read(READ_BLOCK)
            eof = not more
            buffer += more
            continue
        if buffer.startswith("]"):
            if buffer[1:].strip() or text.read(1).strip():
                raise InputError(f"item {position}: unexpected text after the end of the list")
            return
        if not buffer:
            raise InputError(f"item {position}: the list is not closed with ]")
        if expect_comma:
            if not buffer.startswith(","):
                raise InputError(f"item {position}: expected , between items")
            buffer, expect_comma = buffer[1:], False
            continue
        try:
            obj, end = decoder.raw_decode(buffer)
        except json.JSONDecodeError as error:
            if eof:
                raise InputError(f"item {position}: not valid JSON ({error})") from None
            more = text.read(READ_BLOCK)
            eof = not more
            buffer += more
            continue
        if end == len(buffer) and not eof:
            # A number at the end of the buffer may continue in the next block.
            more = text.read(READ_BLOCK)
            if more:
                buffer += more
                continue
            eof = True
        buffer = buffer[end:]
        yield _item(f"item {position}", obj, position)
        position += 1
        expect_comma = True


def _decode_args(text: str, line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise InputError(f"line {line}: args is neither JSON nor base64 of JSON: {text[:80]!r}") from None


def _csv_items(stream: IO[bytes], quotechar: str) -> Iterator[dict]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, quotechar=quotechar)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"line 1: not a CSV header ({error})") from None
    if header is None:
        raise InputError("the input file is empty")
    columns = [name.strip().lower() for name in header]
    if "id" not in columns or ("url" in columns) == ("args" in columns):
        raise InputError(
            f"line 1: the CSV header must be id,url or id,args (got {','.join(header)[:80]!r}); "
            "JSON lines files start with {"
        )
    id_column = columns.index("id")
    value_column = columns.index("url" if "url" in columns else "args")
    is_url = "url" in columns
    width = max(id_column, value_column) + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"line {reader.line_num + 1}: not valid CSV ({error})") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        line = reader.line_num
        if len(row) < width:
            raise InputError(f"line {line}: expected {len(columns)} columns, got {len(row)}")
        if is_url:
            yield {"id": row[id_column], "url": row[value_column]}
        else:
            yield {"id": row[id_column], "args": _decode_args(row[value_column], line)}


class _Prepend(io.RawIOBase):
    """A stream that first gives back bytes already read (the head used for detection)."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
