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


def build_batches(
    rows: Iterable[TranslatedRow], max_rows: int, max_bytes: int
) -> Iterator[Batch | OversizeRow]:
    """Group rows, in order, into batches of 1..max_rows rows whose body is at most max_bytes."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if max_bytes <= ENVELOPE_BYTES + 2:
        raise ValueError(f"max_bytes must leave room for a record, got {max_bytes}")
    pending_rows: list[TranslatedRow] = []
    pending_parts: list[bytes] = []
    size = ENVELOPE_BYTES  # the body size of the pending batch
    for row in rows:
        part = _encode_record(_record_of(row))
        alone = ENVELOPE_BYTES + len(part)
        if alone > max_bytes:
            if pending_rows:
                yield _assemble(pending_rows, pending_parts)
                pending_rows, pending_parts, size = [], [], ENVELOPE_BYTES
            yield OversizeRow(row=row, size=alone, limit=max_bytes)
            continue
        added = len(part) + (1 if pending_parts else 0)  # a comma before every record but the first
        if pending_rows and (len(pending_rows) >= max_rows or size + added > max_bytes):
            yield _assemble(pending_rows, pending_parts)
            pending_rows, pending_parts, size = [], [], ENVELOPE_BYTES
            added = len(part)
        pending_rows.append(row)
        pending_parts.append(part)
        size += added
    if pending_rows:
        yield _assemble(pending_rows, pending_parts)


def split_batch(batch: Batch) -> tuple[Batch, Batch]:
    """Two halves of a batch the instance refused as too large (order kept)."""
    if len(batch.rows) < 2:
        raise ValueError("a batch of one row cannot be split")
    middle = len(batch.rows) // 2
    halves = batch.rows[:middle], batch.rows[middle:]
    first, second = (Batch(rows=half, body=encode_body([_record_of(r) for r in half])) for half in halves)
    return first, second
