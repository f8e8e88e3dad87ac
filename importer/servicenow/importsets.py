"""Import sets by name: their states, their transform history, the results their staging rows
hold, a staging table's columns and active transform maps, and the import set that holds a batch
whose answer was lost.

Every encoded query the pipeline needs on ``sys_import_set``, ``sys_import_set_run``, staging
tables, ``sys_dictionary`` and ``sys_transform_map``, and every staging-row field name, is here:
the pipeline speaks in import set ids and results, never in ``sysparm_`` or ``sys_import_state``.
Built on ``InstanceClient.query/count/import_row_result``; each method makes the same requests,
with the same fields and page sizes, as the pipeline made itself before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from importer.servicenow.client import InstanceClient

# Import sets are looked up in chunks of this many sys_ids per Table API query.
SET_CHUNK = 100
# Staging rows of many import sets are read in one query of at most this many rows: few
# requests (2 sets of 500 rows per query), while a page's decoded JSON stays a few MB.
RESULT_PAGE_ROWS = 1_000
# Only the fields that carry a staging row's result.
STAGING_RESULT_FIELDS = (
    "sys_id",
    "sys_import_row",
    "sys_import_state",
    "sys_import_state_comment",
    "sys_target_sys_id",
    "sys_target_table",
    "sys_transform_map",
    "sys_import_set",
)
# Import set states that may still become "processed"; any other (cancelled, error, ...) will not.
WAITING_SET_STATES = frozenset({"loading", "loaded", "processing"})
STOPPED_RUN_STATES = ("Cancelled", "Did not complete")
# A row's result as the instance names it; only the first two name a target record.
ROW_STATUSES = frozenset({"inserted", "updated", "ignored", "skipped", "error"})
_TARGET_STATUSES = frozenset({"inserted", "updated"})


def field(record: dict[str, Any], name: str) -> str:
    """A Table API field as its value, whether or not display values were asked for."""
    value = record.get(name, "")
    if isinstance(value, dict):
        value = value.get("value", "")
    return "" if value is None else str(value)


def _display(record: dict[str, Any], name: str) -> str:
    value = record.get(name, "")
    if isinstance(value, dict):
        return str(value.get("display_value") or "")
    return ""


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), SET_CHUNK):
        yield ids[start : start + SET_CHUNK]


def holds_values(staged: dict[str, Any], record: dict[str, str]) -> bool:
    """Whether a staging row holds the values of the record we sent. Staging columns are named,
    not labelled, may truncate a value to their length, and drop a key they do not know: so
    compare values, and ask for most of them, not all."""
    got = [v for v in staged.values() if isinstance(v, str) and v]
    wanted = [v for v in record.values() if v]
    found = sum(1 for v in wanted if any(v == g or (len(g) >= 10 and v.startswith(g)) for g in got))
    return not wanted or found * 2 >= len(wanted)


@dataclass(frozen=True, slots=True)
class ImportSetState:
    sys_id: str
    state: str
    number: str

    @property
    def processed(self) -> bool:
        return self.state == "processed"

    @property
    def may_still_process(self) -> bool:
        return self.state in WAITING_SET_STATES


class RowOutcome(NamedTuple):
    """One transform map's outcome for one staging row, as the instance reports it. ``status``
    is one of ROW_STATUSES, or whatever else the instance said (then ``message`` says so). A
    named tuple (one per staging row: a frozen dataclass's ``__init__`` costs several times more)."""

    row: int  # sys_import_row: the row's place in its batch
    staging_sys_id: str
    status: str
    transform_map: str | None = None
    target_table: str | None = None
    target_sys_id: str | None = None  # only for inserted/updated rows
    display_value: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class StagingRow:
    """A staging row's result as its own fields hold it (one transform map's)."""

    import_set_id: str
    outcome: RowOutcome


@dataclass(frozen=True, slots=True)
class StagingColumn:
    element: str
    label: str


def _staging_outcome(staging_row: dict[str, Any]) -> RowOutcome:
    status = field(staging_row, "sys_import_state")
    target = status in _TARGET_STATUSES
    return RowOutcome(
        row=int(field(staging_row, "sys_import_row") or -1),
        staging_sys_id=field(staging_row, "sys_id"),
        status=status,
        transform_map=_display(staging_row, "sys_transform_map") or None,
        target_table=field(staging_row, "sys_target_table") or None,
        target_sys_id=(field(staging_row, "sys_target_sys_id") or None) if target else None,
        display_value=(_display(staging_row, "sys_target_sys_id") or None) if target else None,
        message=field(staging_row, "sys_import_state_comment")
        or (None if status in ROW_STATUSES else f"not transformed (state {status!r})"),
    )


class ImportSets:
    """The import set tables of one instance, through its ``InstanceClient``."""

    def __init__(self, client: InstanceClient) -> None:
        self.client = client

    def import_set_states(self, import_set_ids: Sequence[str]) -> dict[str, ImportSetState]:
        """The state and number of each of these import sets still on the instance (one query
        per 100 sets)."""
        found: dict[str, ImportSetState] = {}
        for chunk in _chunks(import_set_ids):
            for record in self.client.query(
                "sys_import_set", "sys_idIN" + ",".join(chunk), fields=["sys_id", "state", "number"]
            ):
                sys_id = field(record, "sys_id")
                found[sys_id] = ImportSetState(sys_id, field(record, "state"), field(record, "number"))
        return found

    def stopped_runs(self, import_set_ids: Sequence[str]) -> dict[str, str]:
        """Import sets whose transform history (sys_import_set_run) ended Cancelled or Did not
        complete, with that state."""
        stopped: dict[str, str] = {}
        for chunk in _chunks(import_set_ids):
            for run in self.client.query(
                "sys_import_set_run",
                "setIN" + ",".join(chunk) + "^stateIN" + ",".join(STOPPED_RUN_STATES),
                fields=["set", "state"],
            ):
                stopped[field(run, "set")] = field(run, "state")
        return stopped

    def staging_results(
        self, staging_table: str, import_set_ids: Sequence[str], expected_rows: int
    ) -> dict[str, list[RowOutcome]]:
        """The result each staging row of these import sets holds, by import set: one query (pages
        as large as the ``expected_rows``, at most RESULT_PAGE_ROWS, so no empty page follows),
        only the fields that carry a row's result."""
        by_set: dict[str, list[RowOutcome]] = {}
        for staging_row in self.client.query(
            staging_table,
            "sys_import_setIN" + ",".join(import_set_ids),
            fields=STAGING_RESULT_FIELDS,
            display_value="all",
            page_size=max(1, min(expected_rows, RESULT_PAGE_ROWS)),
        ):
            by_set.setdefault(field(staging_row, "sys_import_set"), []).append(_staging_outcome(staging_row))
        return by_set

    def results_per_map(self, staging_table: str, row: RowOutcome) -> list[RowOutcome] | None:
        """One result per transform map for a staging row (only the import GET gives them);
        None once the row is gone (404). An ACL hiding the row raises AuthError."""
        answer = self.client.import_row_result(staging_table, row.staging_sys_id)
        if answer is None:
            return None
        outcomes = []
        for result in answer.get("result", []):
            status = str(result.get("status", ""))
            outcomes.append(
                RowOutcome(
                    row=row.row,
                    staging_sys_id=row.staging_sys_id,
                    status=status,
                    transform_map=result.get("transform_map"),
                    target_table=result.get("table"),
                    # Only inserted/updated rows name a target record; the others may carry the
                    # staging row's own sys_id (notes §11).
                    target_sys_id=result.get("sys_id") if status in _TARGET_STATUSES else None,
                    display_value=result.get("display_value"),
                    message=result.get("error_message")
                    or result.get("status_message")
                    or (None if status in ROW_STATUSES else f"unexpected status {status!r}"),
                )
            )
        return outcomes

    def staging_columns(self, staging_table: str) -> list[StagingColumn]:
        """The staging table's columns (sys_dictionary); none when the table does not exist or
        sys_dictionary is not readable."""
        return [
            StagingColumn(str(c.get("element", "")), str(c.get("column_label", "")))
            for c in self.client.query(
                "sys_dictionary",
                f"name={staging_table}^elementISNOTEMPTY",
                fields=["element", "column_label"],
            )
        ]

    def active_transform_maps(self, staging_table: str) -> int:
        """How many active transform maps read this staging table."""
        count = self.client.count("sys_transform_map", f"source_table={staging_table}^active=true")
        return int(count) if isinstance(count, int) else 1

    def find_import_set_holding(
        self,
        staging_table: str,
        *,
        since: datetime,
        row_count: int,
        first_record: dict[str, str] | None,
        claimed: Collection[str],
    ) -> tuple[str, str] | None:
        """An import set (sys_id, multi import set sys_id) created on this staging table since
        ``since``, not in ``claimed``, with ``row_count`` rows, and whose first row holds
        ``first_record``'s values (another host's set of the same size does not)."""
        created = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        candidates = [
            record
            for record in self.client.query(
                "sys_import_set",
                f"table_name={staging_table}^sys_created_on>={created}^ORDERBYsys_created_on",
                fields=["sys_id", "sys_created_on", "multi_import_set"],
            )
            if field(record, "sys_id") not in claimed
        ]
        for candidate in candidates:
            sys_id = field(candidate, "sys_id")
            if self.client.count(staging_table, f"sys_import_set={sys_id}") != row_count:
                continue
            if first_record is not None:
                rows = self.client.query(staging_table, f"sys_import_set={sys_id}^sys_import_row=0")
                if not holds_values(next(iter(rows), {}), first_record):
                    continue
            return sys_id, field(candidate, "multi_import_set")
        return None
