"""The results file, written by appending chunk after chunk in input order.

JSON: one JSON list, one entry per line:
    [
    {"id": "0", "result": 42},
    {"id": "1", "error": "Traceback ..."}
    ]
PICKLE: one pickle of the list of the same dicts, whose `result` values are the objects the
predict function returned. The pickle is written in pieces (a list opened once, one APPENDS
per chunk, STOP at the end); each result goes in as `pickle.loads(<bytes the replica
pickled>)`, so this process never unpickles user objects and the user's one `pickle.load`
gives them back.

Both formats are append-only up to the footer, which is what makes resuming simple: the
job row records the length of the file after the last chunk it counted, and a resumed run
truncates to it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import struct
from pathlib import Path

_PICKLE_HEADER = b"\x80\x04]"  # PROTO 4, EMPTY_LIST
_MARK, _APPENDS, _STOP = b"(", b"e", b"."
_EMPTY_DICT, _SETITEMS = b"}", b"u"
_LOADS = b"cpickle\nloads\n"  # GLOBAL pickle.loads
_TUPLE1, _REDUCE = b"\x85", b"R"


def _plain(value: object) -> bytes:
    """Opcodes that push `value` (JSON-like data), with no memo and no PROTO/STOP, so they
    can be spliced into a longer pickle."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=1)
    pickler.fast = True  # no memo: indexes would clash between spliced pieces
    pickler.dump(value)
    return buffer.getvalue()[:-1]  # drop STOP


def _pickled(data: bytes) -> bytes:
    size = len(data)
    push = (b"B" + struct.pack("<I", size) if size < 2**32 else b"\x8e" + struct.pack("<Q", size)) + data
    return _LOADS + push + _TUPLE1 + _REDUCE


class ResultsFile:
    """Append-only results file on the controller's disk (moved to the store when done)."""

    def __init__(self, path: Path, serialization_format: str):
        self.path = path
        self.pickle = serialization_format == "PICKLE"

    def header(self) -> bytes:
        return _PICKLE_HEADER if self.pickle else b"["

    def footer(self) -> bytes:
        return _STOP if self.pickle else b"\n]\n"

    def encode(self, entries: list[dict], *, first: bool) -> bytes:
        """One chunk's entries: {"id", "result"} / {"id", "result_pickled": base64} / {"id", "error"}."""
        if self.pickle:
            parts = [_MARK]
            for entry in entries:
                parts.append(_EMPTY_DICT + _MARK + _plain("id") + _plain(entry["id"]))
                if "error" in entry:
                    parts.append(_plain("error") + _plain(entry["error"]))
                elif "result_pickled" in entry:
                    parts.append(_plain("result") + _pickled(base64.b64decode(entry["result_pickled"])))
                else:
                    parts.append(_plain("result") + _plain(entry.get("result")))
                parts.append(_SETITEMS)
            parts.append(_APPENDS)
            return b"".join(parts)
        lines = []
        for entry in entries:
            if "result_pickled" in entry:  # a replica that pickled anyway: keep it readable
                entry = {"id": entry["id"], "result_pickled": entry["result_pickled"]}
            lines.append(json.dumps(entry, separators=(", ", ": ")))
        if not lines:
            return b""
        text = ",\n".join(lines)
        return (("\n" if first else ",\n") + text).encode()

    def start(self) -> int:
        """Create (or reset) the file with its header; returns its length."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.header()
        with open(self.path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return len(data)

    def append(self, data: bytes, *, expected_length: int) -> int:
        """Truncate to the length the database recorded, append, sync; returns the new length.

        Truncating first is what keeps a chunk that was written but not yet counted (the
        controller died in between) from appearing twice."""
        with open(self.path, "r+b") as file:
            if file.seek(0, os.SEEK_END) < expected_length:
                # Shorter than what was counted: truncate() would pad it with zeros.
                raise OSError(f"{self.path} is shorter than the {expected_length} bytes already counted")
            file.truncate(expected_length)
            file.seek(expected_length)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return expected_length + len(data)

    def exists_with(self, length: int) -> bool:
        try:
            return self.path.stat().st_size >= length
        except FileNotFoundError:
            return False
