"""JSON files: records streamed from an array, flattened, numbers exactly as written."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from importer.errors import InputFileError
from importer.readers import JsonOptions, SourceRow, open_source

EMPLOYEES = """{
  "meta": {"exported": "2024-01-31"},
  "data": {
    "employees": [
      {"id": "000123", "phone": "+44 20 7946 0000", "salary": 1.50, "grade": 42,
       "badge": 12345678901234567890, "tiny": 0.0000001, "rate": -0.0, "big": 1e3,
       "active": true, "left": false, "manager": null,
       "address": {"city": "Paris", "geo": {"lat": 48.8566}},
       "tags": ["a", "Zoë", 1.50, null, {"k": true}], "empty": {}},
      {"id": "000124", "name": "Zoë"}
    ]
  }
}
"""


def test_nested_records_are_flattened_and_numbers_kept_as_written(write_text, read_all):
    path = write_text("staff.json", EMPLOYEES)

    headers, rows = read_all(path, json=JsonOptions(records="data.employees"))

    assert headers is None
    assert rows[0] == SourceRow(
        1,
        {
            "id": "000123",
            "phone": "+44 20 7946 0000",
            "salary": "1.50",
            "grade": "42",
            "badge": "12345678901234567890",
            "tiny": "0.0000001",
            "rate": "-0.0",
            "big": "1000",  # an exponent is written out in plain digits
            "active": "true",
            "left": "false",
            "manager": "",
            "address.city": "Paris",
            "address.geo.lat": "48.8566",
            "tags": '["a","Zoë",1.50,null,{"k":true}]',
        },
    )
    assert rows[1] == SourceRow(2, {"id": "000124", "name": "Zoë"})


def test_a_top_level_array_is_the_default(write_text):
    path = write_text("list.json", '[{"a": 1}, {"a": "2"}]')

    with open_source(path) as source:
        assert source.kind == "json"
        assert source.headers is None
        assert list(source) == [SourceRow(1, {"a": "1"}), SourceRow(2, {"a": "2"})]


def test_a_bom_is_tolerated(tmp_path, read_all):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf[{"\xc3\xa9t\xc3\xa9": "oui"}]')
    assert read_all(path)[1] == [SourceRow(1, {"été": "oui"})]


def test_a_record_that_is_not_an_object_is_a_problem(write_text, read_all):
    path = write_text("mixed.json", '[{"a": 1}, "oops", 3, [1], null, {"a": 2}]')

    _, rows = read_all(path)

    assert [(r.number, r.problem) for r in rows] == [
        (1, None),
        (2, "record 2 is a string, not an object"),
        (3, "record 3 is a number, not an object"),
        (4, "record 4 is an array, not an object"),
        (5, "record 5 is null, not an object"),
        (6, None),
    ]
    assert rows[5].values == {"a": "2"}


def test_an_empty_array_yields_no_rows(write_text, read_all):
    assert read_all(
        write_text("none.json", '{"data": {"employees": []}}'), json=JsonOptions("data.employees")
    ) == (
        None,
        [],
    )


@pytest.mark.parametrize(
    ("text", "records", "expected"),
    [
        ("", None, "bad.json: the file is empty: expected a JSON array of records."),
        (
            '[{"a": 1},\n {"a": 2,, }]',
            None,
            "bad.json: is not valid JSON: line 2 column 10: Expecting property name",
        ),
        (
            '{"data": {"staff": []}, "meta": {}}',
            "data.employees",
            'has no records path "data.employees": the keys in "data" are staff',
        ),
        (
            '{"data": {"employees": {"a": 1}}}',
            "data.employees",
            'records path "data.employees" is an object, not an array',
        ),
        (
            '{"data": {"employees": "none"}}',
            "data.employees",
            'records path "data.employees" is a string, not an array',
        ),
        (
            '{"employees": []}',
            None,
            "the top level is an object, not an array of records: set json: {records:",
        ),
    ],
)
def test_refused_files(write_text, text, records, expected):
    path = write_text("bad.json", text)
    with (
        pytest.raises(InputFileError) as caught,
        open_source(path, json=JsonOptions(records=records)) as source,
    ):
        list(source)
    assert expected in str(caught.value)


def test_invalid_json_deep_in_the_file_is_raised_while_iterating(tmp_path):
    path = tmp_path / "cut.json"
    good = ",\n".join(json.dumps({"id": f"{i:06d}"}) for i in range(5_000))
    path.write_text(f'{{"data": {{"employees": [\n{good},\n{{"id": "x"}} oops]}}}}', encoding="utf-8")

    with open_source(path, json=JsonOptions(records="data.employees")) as source:
        rows = iter(source)
        assert next(rows) == SourceRow(1, {"id": "000000"})
        with pytest.raises(InputFileError) as caught:
            list(rows)

    assert "line 5002 column 13" in str(caught.value)


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'[\n{"name": "Zo\xeb"}]')
    with pytest.raises(InputFileError, match="byte 0xeb on line 2"), open_source(path) as source:
        list(source)


def test_memory_does_not_grow_with_the_file(tmp_path):
    peaks = {}
    for records in (2_500, 20_000):
        path = tmp_path / f"large{records}.json"
        with path.open("w", encoding="utf-8") as f:
            f.write('{"data": {"employees": [\n')
            f.write(
                ",\n".join(
                    json.dumps({"id": f"{i:06d}", "name": f"Name {i}", "n": i}) for i in range(records)
                )
            )
            f.write("]}}")
        tracemalloc.start()
        try:
            with open_source(path, json=JsonOptions(records="data.employees")) as source:
                assert sum(1 for _ in source) == records
            _, peaks[records] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    # ~1.4 MB whatever the size (the parser's buffers): 8x the records, no more memory.
    assert peaks[20_000] < peaks[2_500] * 1.2, peaks
