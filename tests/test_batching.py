"""Batches are bounded by rows and by the exact body size, keep order, and split in halves."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from importer.batching import Batch, OversizeRow, build_batches, encode_body, split_batch
from importer.mapping import TranslatedRow

EMPTY_BODY = len(b'{"records":[]}')


def rows_of(records: list[dict[str, str]]) -> list[TranslatedRow]:
    return [TranslatedRow(number=i + 2, record=r, problem=None) for i, r in enumerate(records)]


def test_encode_body_is_the_compact_utf8_insert_multiple_body() -> None:
    body = encode_body([{"Name": "Zoë", "Quote": 'say "hi"'}, {"Name": ""}])
    assert body == '{"records":[{"Name":"Zoë","Quote":"say \\"hi\\""},{"Name":""}]}'.encode()
    assert encode_body([]) == b'{"records":[]}'


def test_batches_are_bounded_by_rows() -> None:
    rows = rows_of([{"n": str(i)} for i in range(7)])
    batches = list(build_batches(rows, max_rows=3, max_bytes=10_000))
    assert [len(b.rows) for b in batches if isinstance(b, Batch)] == [3, 3, 1]
    assert [r for b in batches if isinstance(b, Batch) for r in b.rows] == rows


def test_a_body_that_fits_exactly_is_kept_whole() -> None:
    rows = rows_of([{"k": "v" * 10}, {"k": "w" * 10}])
    exact = len(encode_body([r.record for r in rows if r.record]))
    [whole] = build_batches(rows, max_rows=10, max_bytes=exact)
    assert isinstance(whole, Batch) and len(whole.rows) == 2 and len(whole.body) == exact
    first, second = build_batches(rows, max_rows=10, max_bytes=exact - 1)
    assert isinstance(first, Batch) and isinstance(second, Batch)
    assert (len(first.rows), len(second.rows)) == (1, 1)


def test_random_sizes_never_exceed_the_limits_and_keep_order() -> None:
    rng = random.Random(20240501)
    alphabet = 'abcXYZ 0123é€😀"\\\n'
    for _ in range(300):
        max_rows = rng.randint(1, 12)
        max_bytes = rng.randint(40, 600)
        records = [
            {
                f"f{j}": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
                for j in range(rng.randint(1, 4))
            }
            for _ in range(rng.randint(0, 40))
        ]
        rows = rows_of(records)
        seen: list[TranslatedRow] = []
        for item in build_batches(iter(rows), max_rows, max_bytes):
            if isinstance(item, OversizeRow):
                assert item.size > max_bytes == item.limit
                assert item.size == len(encode_body([item.row.record or {}]))
                seen.append(item.row)
                continue
            assert 1 <= len(item.rows) <= max_rows
            assert len(item.body) <= max_bytes
            assert item.body == encode_body([r.record or {} for r in item.rows])
            assert json.loads(item.body)["records"] == [r.record for r in item.rows]
            seen.extend(item.rows)
        assert seen == rows


def test_batches_are_as_full_as_the_limits_allow() -> None:
    rng = random.Random(7)
    for _ in range(100):
        max_rows, max_bytes = rng.randint(1, 8), rng.randint(60, 400)
        rows = rows_of([{"v": "x" * rng.randint(0, 30)} for _ in range(30)])
        batches = [b for b in build_batches(rows, max_rows, max_bytes) if isinstance(b, Batch)]
        for batch, following in itertools.pairwise(batches):
            # The first row of the next batch would not have fitted into this one.
            with_next = [r.record or {} for r in (*batch.rows, following.rows[0])]
            assert len(batch.rows) == max_rows or len(encode_body(with_next)) > max_bytes


def test_a_row_too_large_for_any_batch_is_reported_in_place() -> None:
    rows = rows_of([{"a": "1"}, {"a": "x" * 500}, {"a": "2"}])
    items = list(build_batches(rows, max_rows=10, max_bytes=100))
    assert [type(i) for i in items] == [Batch, OversizeRow, Batch]
    oversize = items[1]
    assert isinstance(oversize, OversizeRow)
    assert oversize.row is rows[1]
    assert (oversize.size, oversize.limit) == (EMPTY_BODY + len('{"a":""}') + 500, 100)


def test_invalid_rows_and_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="row 5 is invalid"):
        list(build_batches([TranslatedRow(5, None, "bad")], max_rows=10, max_bytes=1000))
    with pytest.raises(ValueError):
        list(build_batches([], max_rows=0, max_bytes=1000))
    with pytest.raises(ValueError):
        list(build_batches([], max_rows=1, max_bytes=EMPTY_BODY))
    assert list(build_batches([], max_rows=1, max_bytes=1000)) == []


def test_build_batches_streams() -> None:
    produced = 0

    def rows():
        nonlocal produced
        for i in range(1_000_000):
            produced += 1
            yield TranslatedRow(i, {"n": str(i)}, None)

    first = next(build_batches(rows(), max_rows=5, max_bytes=10_000))
    assert isinstance(first, Batch) and len(first.rows) == 5
    assert produced == 6  # the sixth row is what closed the first batch


def test_split_batch_in_halves() -> None:
    rows = rows_of([{"n": str(i)} for i in range(5)])
    [batch] = build_batches(rows, max_rows=10, max_bytes=10_000)
    assert isinstance(batch, Batch)
    first, second = split_batch(batch)
    assert first.rows + second.rows == batch.rows
    assert (len(first.rows), len(second.rows)) == (2, 3)
    assert json.loads(first.body)["records"] == [{"n": "0"}, {"n": "1"}]
    assert len(first.body) < len(batch.body) and len(second.body) < len(batch.body)
    single, _ = split_batch(first)
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch(single)
