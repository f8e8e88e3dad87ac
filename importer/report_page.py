"""The HTML report for the people who drop files: one self-contained page per finished file.

What happened at a glance (a bar of row states), then the rows that need a person (error and
invalid) with the instance's message and the row's key values, then the rest in file order. The
page is rendered by Jinja2 with autoescaping on, so a cell holding ``<script>`` is shown as text;
it has inline CSS only, no script, font or image, so it works offline and in a mail preview. At
100,000 rows it stays small: beyond ``ROW_CAP`` rows per table it says how many more there are and
points to the CSV report, which has every row.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from importer.errors import ImporterError
from importer.ledger import FileRecord, RowState
from importer.mapping import Mapping as ImportMapping

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("importer.report")

ROW_CAP = 1000  # rows shown per table; the CSV has every row
TOP_MESSAGES = 10
KEY_COLUMNS = 3
NEEDS_A_PERSON = (RowState.ERROR, RowState.INVALID)
DONE_STATES = (RowState.INSERTED, RowState.UPDATED, RowState.IGNORED, RowState.SKIPPED)
STATE_ORDER = (*NEEDS_A_PERSON, *DONE_STATES, RowState.POSTED, RowState.PENDING)
STATE_COLOURS = {
    RowState.ERROR: "#c62828",
    RowState.INVALID: "#ef6c00",
    RowState.INSERTED: "#2e7d32",
    RowState.UPDATED: "#1565c0",
    RowState.IGNORED: "#78909c",
    RowState.SKIPPED: "#b0bec5",
    RowState.POSTED: "#fdd835",
    RowState.PENDING: "#e0e0e0",
}



@functools.cache
def _environment() -> jinja2.Environment:
    """Built on the first page: a command that renders none does not import Jinja2."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("importer", "templates"),
        autoescape=True,  # every value from a file or the instance is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass
class StateCount:
    state: str
    count: int
    percent: float
    colour: str


@dataclass
class ReportSummary:
    """What a file's answer says, for the page, the e-mail and the webhook alike."""

    file_id: int
    name: str
    mapping: str | None
    state: str
    rows: dict[str, int]
    rerun_of: int | None = None
    rerun_of_name: str | None = None
    error: str | None = None
    taken_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    @property
    def done(self) -> int:
        return sum(self.rows.get(state, 0) for state in DONE_STATES)

    @property
    def needs_a_person(self) -> int:
        return sum(self.rows.get(state, 0) for state in NEEDS_A_PERSON)

    def one_line(self) -> str:
        """The answer in one line: what is done, what needs a person."""
        if self.state == "rejected":
            reason = (self.error or "refused").strip().splitlines()[0]
            return f"{self.name}: refused as a whole, nothing imported: {reason}"
        if self.state == "duplicate":
            return f"{self.name}: not imported again: {self.error or 'the same content was imported before'}"
        if self.state not in ("done", "done_with_errors"):
            return f"{self.name}: {self.state}, {self.total} rows so far"
        details = ", ".join(f"{n} {s}" for s, n in _ordered(self.rows) if s in NEEDS_A_PERSON)
        need = (
            f"{self.needs_a_person} need a person ({details})"
            if self.needs_a_person
            else "none needs a person"
        )
        return f"{self.name}: {self.done} of {self.total} rows done, {need}"

    def as_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "name": self.name,
            "mapping": self.mapping,
            "state": self.state,
            "rows": dict(self.rows),
            "total": self.total,
            "done": self.done,
            "needs_a_person": self.needs_a_person,
            "rerun_of": self.rerun_of,
            "error": self.error,
        }


@dataclass
class ShownRow:
    source_row: int
    state: str
    message: str
    transform_map: str
    target: str
    keys: list[str] = field(default_factory=list)


def summary_of(
    record: FileRecord, rows: Mapping[str, int], original: FileRecord | None = None
) -> ReportSummary:
    return ReportSummary(
        file_id=record.id,
        name=record.name,
        mapping=record.mapping,
        state=str(record.state),
        rows=dict(rows),
        rerun_of=record.rerun_of,
        rerun_of_name=original.name if original is not None else None,
        error=record.error,
        taken_at=record.created_at,
        finished_at=record.finished_at,
    )


def render_report(
    summary: ReportSummary,
    entries: Iterable[Mapping[str, Any]],
    *,
    mapping: ImportMapping | None,
    source: Path | None,
    csv_name: str,
    row_cap: int = ROW_CAP,
    read_back: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """The page for one finished file. ``entries``: the ledger's report lines, in file order
    (streamed: only what is shown is kept); ``source``: the file as dropped, read again for the
    key values of the rows that need a person. ``read_back``: the differences ``importer verify``
    found (its ``--json`` entries: source_row, target_table, target_sys_id, field, sent, found),
    shown in their own section; None when the file was not verified."""
    attention: list[ShownRow] = []
    rest: list[ShownRow] = []
    attention_total = rest_total = 0
    messages: Counter[str] = Counter()
    needs_a_person = {str(state) for state in NEEDS_A_PERSON}
    for entry in entries:
        # 100,000 entries pass here: a row is built only for what the page shows.
        state = str(entry["state"])
        if state in needs_a_person:
            attention_total += 1
            message = str(entry.get("message") or "")
            messages[message or "(no message)"] += 1
            if len(attention) < row_cap:
                attention.append(_shown(entry, state))
        else:
            rest_total += 1
            if len(rest) < row_cap:
                rest.append(_shown(entry, state))
    key_names = key_columns(mapping)
    if attention and key_names and source is not None and mapping is not None:
        _fill_keys(attention, mapping, key_names, source)
    total = summary.total or 1
    bar = [
        StateCount(state, count, round(100 * count / total, 2), STATE_COLOURS.get(RowState(state), "#9e9e9e"))
        for state, count in _ordered(summary.rows)
        if count
    ]
    return _environment().get_template("report.html.j2").render(
        summary=summary,
        bar=bar,
        attention=attention,
        attention_total=attention_total,
        rest=rest,
        rest_total=rest_total,
        messages=messages.most_common(TOP_MESSAGES),
        distinct_messages=len(messages),
        key_names=key_names,
        csv_name=csv_name,
        row_cap=row_cap,
        read_back=list(itertools.islice(read_back, row_cap)) if read_back is not None else None,
        when=_when,
    )


def _shown(entry: Mapping[str, Any], state: str) -> ShownRow:
    return ShownRow(
        source_row=int(entry["source_row"]),
        state=state,
        message=str(entry.get("message") or ""),
        transform_map=str(entry.get("transform_map") or ""),
        target=str(entry.get("display_value") or entry.get("target_sys_id") or ""),
    )


def key_columns(mapping: ImportMapping | None) -> list[str]:
    """The source columns that tell a person which row it is: the mapping's required columns,
    filled up with its first columns, at most three, in the mapping's order."""
    if mapping is None:
        return []
    columns = list(mapping.columns)
    chosen = [c for c in columns if c.required][:KEY_COLUMNS]
    for column in columns:
        if len(chosen) >= KEY_COLUMNS:
            break
        if column not in chosen:
            chosen.append(column)
    return [c.source for c in columns if c in chosen]


def _fill_keys(rows: list[ShownRow], mapping: ImportMapping, key_names: list[str], source: Path) -> None:
    from importer.readers import open_source

    wanted: dict[int, list[ShownRow]] = {}
    for row in rows:
        wanted.setdefault(row.source_row, []).append(row)
    try:
        with open_source(source, csv=mapping.csv, excel=mapping.excel, json=mapping.json) as reader:
            for source_row in reader:
                shown = wanted.pop(source_row.number, None)
                if shown is not None:
                    keys = [source_row.values.get(name, "") or "" for name in key_names]
                    for row in shown:
                        row.keys = keys
                if not wanted:
                    break
    except (ImporterError, OSError) as exc:
        # The page is still worth having without them; the row numbers say which rows they are.
        log.warning("report for %s: key values left out, the file could not be read again: %s", source, exc)


def _ordered(rows: Mapping[str, int]) -> list[tuple[str, int]]:
    order = {str(s): i for i, s in enumerate(STATE_ORDER)}
    return sorted(rows.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "-"
