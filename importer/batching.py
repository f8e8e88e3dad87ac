"""Translated rows -> insertMultiple batches bounded by rows and bytes: pure, like a Singer sink.

Rows are added one by one; a batch is drained when the next row would exceed ``max_rows`` or
``max_bytes`` (the exact size of the request body), and at the end. Only one batch is held at a
time. A row too large for any batch on its own is yielded as an ``OversizeRow`` in its place, so
the caller can record it as invalid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from importer.mapping import TranslatedRow

_OPEN = b'{"records":['
_CLOSE = b"]}"
ENVELOPE_BYTES = len(_OPEN) + len(_CLOSE)  # the body of an empty batch: {"records":[]}


@dataclass(frozen=True, slots=True)
class Batch:
    rows: tuple[TranslatedRow, ...]
    body: bytes  # the exact insertMultiple body: {"records":[...]}, UTF-8, compact


@dataclass(frozen=True, slots=True)
class OversizeRow:
    """A single row whose record alone makes a body larger than ``limit``."""

    row: TranslatedRow
    size: int  # the body size that row alone would need
    limit: int


def _encode_record(record: dict[str, str]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_body(records: Sequence[dict[str, str]]) -> bytes:
    """The insertMultiple request body for these records."""
    return json.dumps({"records": list(records)}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _record_of(row: TranslatedRow) -> dict[str, str]:
    if row.problem is not None or row.record is None:
        raise ValueError(f"row {row.number} is invalid ({row.problem}); invalid rows are never batched")
    return row.record


def _assemble(rows: list[TranslatedRow], parts: list[bytes]) -> Batch:
    return Batch(rows=tuple(rows), body=_OPEN + b",".join(parts) + _CLOSE)


def _size_bound(record: dict[str, str]) -> int:
    """An upper bound of the record's encoded size, without encoding it: JSON spends at most six
    bytes on a character (a control character becomes \\u001f; UTF-8 needs at most four), plus
    two quotes per string, a colon and a comma per field, and the braces."""
    return 2 + sum(6 * (len(key) + len(value)) + 6 for key, value in record.items())


def build_batches(
    rows: Iterable[TranslatedRow], max_rows: int, max_bytes: int
) -> Iterator[Batch | OversizeRow]:
    """Group rows, in order, into batches of 1..max_rows rows whose body is at most max_bytes.

    While the pending batch's size bound is well under ``max_bytes`` (the usual case: 500 rows
    are a few hundred KB against a limit of MB) no record is encoded on its own and the body is
    encoded in one call when the batch drains; near the limit, records are encoded one by one
    and sizes are exact.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if max_bytes <= ENVELOPE_BYTES + 2:
        raise ValueError(f"max_bytes must leave room for a record, got {max_bytes}")
    pending_rows: list[TranslatedRow] = []
    pending_parts: list[bytes] | None = None  # encoded records, once sizes must be exact
    bound = ENVELOPE_BYTES  # an upper bound of the pending body's size (exact once parts are kept)

    def drain() -> Batch:
        nonlocal pending_rows, pending_parts, bound
        if pending_parts is not None:
            batch = _assemble(pending_rows, pending_parts)
        else:
            batch = Batch(rows=tuple(pending_rows), body=encode_body([_record_of(r) for r in pending_rows]))
        pending_rows, pending_parts, bound = [], None, ENVELOPE_BYTES
        return batch

    for row in rows:
        record = _record_of(row)
        if pending_rows and len(pending_rows) >= max_rows:
            yield drain()
        row_bound = _size_bound(record)
        if pending_parts is None and bound + row_bound + 1 <= max_bytes:
            pending_rows.append(row)
            bound += row_bound + (1 if len(pending_rows) > 1 else 0)
            continue
        # Near the limit: exact sizes from here to the end of this batch.
        part = _encode_record(record)
        alone = ENVELOPE_BYTES + len(part)
        if alone > max_bytes:
            if pending_rows:
                yield drain()
            yield OversizeRow(row=row, size=alone, limit=max_bytes)
            continue
        if pending_parts is None:
            pending_parts = [_encode_record(_record_of(r)) for r in pending_rows]
            bound = ENVELOPE_BYTES + sum(len(p) for p in pending_parts) + max(len(pending_parts) - 1, 0)
        added = len(part) + (1 if pending_parts else 0)  # a comma before every record but the first
        if pending_rows and bound + added > max_bytes:
            yield drain()
            pending_parts = []
            added = len(part)
        pending_rows.append(row)
        pending_parts.append(part)
        bound += added
    if pending_rows:
        yield drain()


def split_batch(batch: Batch) -> tuple[Batch, Batch]:
    """Two halves of a batch the instance refused as too large (order kept)."""
    if len(batch.rows) < 2:
        raise ValueError("a batch of one row cannot be split")
    middle = len(batch.rows) // 2
    halves = batch.rows[:middle], batch.rows[middle:]
    first, second = (Batch(rows=half, body=encode_body([_record_of(r) for r in half])) for half in halves)
    return first, second
