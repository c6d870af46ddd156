"""Batch input files as the clients write them, and the results file as users read it."""

from __future__ import annotations

import base64
import csv
import io
import json
import pickle

import cloudpickle
import pytest

from batchjobs.inputs import InputError, count_items, iter_items
from batchjobs.results import ResultsFile


def legacy_csv(rows: list[dict], *, b64: bool = False) -> bytes:
    """What scale-launch writes: csv.DictWriter with quotechar="'"."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "args"], quotechar="'")
    writer.writeheader()
    for index, args in enumerate(rows):
        text = json.dumps(args)
        writer.writerow({"id": index, "args": base64.b64encode(text.encode()).decode() if b64 else text})
    return out.getvalue().encode()


def items(data: bytes) -> list[dict]:
    return list(iter_items(io.BytesIO(data)))


def test_legacy_csv_args_with_quotes_and_commas_are_read_back_exactly():
    rows = [{"x": 1, "text": 'it\'s, quoted "twice"'}, {"x": 2, "nested": [1, {"a": None}]}]
    assert items(legacy_csv(rows)) == [{"id": "0", "args": rows[0]}, {"id": "1", "args": rows[1]}]


def test_newer_client_base64_args_are_detected():
    rows = [{"x": 1}, {"y": "two"}]
    assert items(legacy_csv(rows, b64=True)) == [{"id": "0", "args": rows[0]}, {"id": "1", "args": rows[1]}]


def test_csv_quoted_the_usual_way_is_read_too():
    rows = [{"x": 1, "text": 'it\'s, "quoted"'}, {"y": [1, 2]}]
    out = io.StringIO()
    writer = csv.writer(out)  # quotechar '"', as pandas and spreadsheets write it
    writer.writerow(["id", "args"])
    for index, args in enumerate(rows):
        writer.writerow([f"row-{index}", json.dumps(args, separators=(",", ":"))])
    assert items(out.getvalue().encode()) == [{"id": "row-0", "args": rows[0]}, {"id": "row-1", "args": rows[1]}]


def test_csv_of_urls():
    assert items(b"id,url\na,http://x/1\nb,http://x/2\n") == [
        {"id": "a", "url": "http://x/1"},
        {"id": "b", "url": "http://x/2"},
    ]


def test_json_lines_ids_default_to_the_line_number():
    data = b'{"args": {"x": 1}}\n{"id": "mine", "url": "http://x"}\n\n{"args": 3}\n'
    assert items(data) == [{"id": 1, "args": {"x": 1}}, {"id": "mine", "url": "http://x"}, {"id": 4, "args": 3}]


def test_json_list_is_streamed_across_read_blocks():
    data = json.dumps([{"args": {"blob": "x" * 5000, "i": i}} for i in range(400)]).encode()
    assert len(data) > 2 * 1024 * 1024 * 0.9
    got = items(data)
    assert [item["args"]["i"] for item in got] == list(range(400))
    assert count_items(io.BytesIO(data)) == 400


@pytest.mark.parametrize(
    "data, message",
    [
        (b'{"args": 1}\n{"x": 2}\n', "line 2: needs exactly one of"),
        (b'{"args": 1}\n{"args": \n', "line 2: not valid JSON"),
        (b'id,args\n0,{"x": 1}\n1,not json at all\n', "line 3: args is neither JSON nor base64"),
        (b"name,value\n1,2\n", "line 1: the CSV header must be id,url or id,args"),
        (b"", "empty"),
    ],
)
def test_a_bad_input_names_its_line(data, message):
    with pytest.raises(InputError, match=message):
        items(data)


def test_line_count_of_csv_and_json_lines():
    assert count_items(io.BytesIO(legacy_csv([{"x": i} for i in range(7)]))) == 7
    assert count_items(io.BytesIO(b'{"args": 1}\n{"args": 2}')) == 2


def write(results: ResultsFile, chunks: list[list[dict]]) -> bytes:
    length = results.start()
    written = 0
    for chunk in chunks:
        length = results.append(results.encode(chunk, first=written == 0), expected_length=length)
        written += len(chunk)
    results.append(results.footer(), expected_length=length)
    return results.path.read_bytes()


def test_json_results_file_is_a_json_list_in_order(tmp_path):
    chunks = [
        [{"id": "0", "result": {"y": 1}}],
        [],
        [{"id": "1", "error": "Traceback: boom"}, {"id": "2", "result": None}],
    ]
    data = write(ResultsFile(tmp_path / "r", "JSON"), chunks)
    assert json.loads(data) == [*chunks[0], *chunks[2]]


def test_pickle_results_file_gives_back_the_returned_objects(tmp_path):
    def make(value):
        def get():
            return value

        return get

    pickled = base64.b64encode(cloudpickle.dumps(make(41))).decode()
    chunks = [[{"id": "a", "result_pickled": pickled}, {"id": "b", "error": "boom"}], [{"id": 3, "result": [1]}]]
    loaded = pickle.loads(write(ResultsFile(tmp_path / "r", "PICKLE"), chunks))
    assert [entry["id"] for entry in loaded] == ["a", "b", 3]
    assert loaded[0]["result"]() == 41
    assert loaded[1] == {"id": "b", "error": "boom"}
    assert loaded[2] == {"id": 3, "result": [1]}


def test_append_after_a_crash_truncates_what_was_not_recorded(tmp_path):
    results = ResultsFile(tmp_path / "r", "JSON")
    recorded = results.append(results.encode([{"id": "0", "result": 0}], first=True), expected_length=results.start())
    # The controller wrote the next chunk, then died before recording the new length.
    results.append(results.encode([{"id": "1", "result": 1}], first=False), expected_length=recorded)
    # The resumed run writes the same chunk again from the recorded length.
    length = results.append(results.encode([{"id": "1", "result": 1}], first=False), expected_length=recorded)
    results.append(results.footer(), expected_length=length)
    assert json.loads(results.path.read_bytes()) == [{"id": "0", "result": 0}, {"id": "1", "result": 1}]
