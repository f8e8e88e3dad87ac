"""Results: which posted import sets the instance has processed, every row's outcome recorded
(read for many sets per query), sets that will never be processed or take too long ended, and
files whose every row has a result finished."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from importer.errors import AuthError, TransientError
from importer.ledger import BatchRecord, BatchState, FileState, IllegalTransition, RowResult, RowState
from importer.ledger.states import UNFINISHED_BATCH_STATES
from importer.pipeline.completion import Completion
from importer.pipeline.job import Context, Progress

log = logging.getLogger("importer.pipeline")

# Import sets are looked up in chunks of this many sys_ids per Table API query.
POLL_CHUNK = 100
# Staging rows of many import sets are read in one query of at most this many rows: few
# requests (2 sets of 500 rows per query), while a page's decoded JSON stays a few MB.
RESULT_PAGE_ROWS = 1_000
STAGING_RESULT_FIELDS = (
    "sys_id",
    "sys_import_row",
    "sys_import_state",
    "sys_import_state_comment",
    "sys_target_sys_id",
    "sys_target_table",
    "sys_transform_map",
)
# Import set states that may still become "processed"; any other (cancelled, error, ...) will not.
_WAITING_SET_STATES = frozenset({"loading", "loaded", "processing"})
STOPPED_RUN_STATES = ("Cancelled", "Did not complete")
# Timed-out batches are looked at again for as long as the instance keeps import sets (the
# Import Set Deleter removes them after 7 days by default).
IMPORT_SET_LIFETIME = timedelta(days=7)
POLL_BACKOFF_MAX_S = 300.0
_TARGET_STATES = frozenset({"inserted", "updated"})
_KNOWN_RESULT_STATES = {
    s.value: s
    for s in (RowState.INSERTED, RowState.UPDATED, RowState.IGNORED, RowState.SKIPPED, RowState.ERROR)
}


def _field(record: dict[str, Any], name: str) -> str:
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


def _chunks_by_rows(
    items: list[tuple[BatchRecord, dict[str, Any]]], max_rows: int
) -> Iterator[list[tuple[BatchRecord, dict[str, Any]]]]:
    """Consecutive groups of batches holding at most ``max_rows`` rows (and POLL_CHUNK sets)
    together; a batch larger than that is a group of its own."""
    chunk: list[tuple[BatchRecord, dict[str, Any]]] = []
    rows = 0
    for item in items:
        if chunk and (rows + item[0].row_count > max_rows or len(chunk) >= POLL_CHUNK):
            yield chunk
            chunk, rows = [], 0
        chunk.append(item)
        rows += item[0].row_count
    if chunk:
        yield chunk


def _every_row(batch: BatchRecord, message: str) -> list[RowResult]:
    return [RowResult(batch_index=i, state=RowState.ERROR, message=message) for i in range(batch.row_count)]


class Results:
    def __init__(self, ctx: Context, completion: Completion) -> None:
        self.ctx = ctx
        self.completion = completion
        self._transform_maps: dict[str, int] = {}
        self._last_poll_signature: tuple[tuple[str, str], ...] = ()
        self.idle_poll_rounds = 0  # poll rounds in a row in which no import set changed state

    def set_posted(self) -> None:
        """A new set to watch: poll at the configured pace again."""
        self.idle_poll_rounds = 0

    def next_poll_delay(self, poll_s: float) -> float:
        """Polite polling: the configured pace while sets move, doubling while nothing changes
        (a set waiting for the instance's scheduler), up to 8 times it (at most 5 minutes)."""
        factor = 2 ** min(self.idle_poll_rounds, 3)
        return min(poll_s * factor, max(poll_s, POLL_BACKOFF_MAX_S))

    def poll_results(
        self, file_ids: Iterable[int] | None = None, progress: Progress | None = None
    ) -> list[int]:
        """One round: ask the instance which posted import sets are processed (one Table API query
        per 100 sets), record their rows' results, finish files whose every row has one.

        Transforms that never finish end too (product.md "Transforms that never finish"): a set
        in a state that will not become ``processed`` (``cancelled``, ``error``) or whose
        transform history ended ``Cancelled``/``Did not complete`` ends its rows as error at once;
        one not processed within ``[instance] transform_timeout_s`` ends them as error too, and a
        later round that finds it processed replaces those results with the real ones.
        """
        progress = progress or Progress()
        ledger = self.ctx.ledger
        wanted = set(file_ids) if file_ids is not None else None
        now = datetime.now(UTC)
        waiting = [
            b
            for b in ledger.waiting_batches(mine=True)
            if (wanted is None or b.file_id in wanted)
            and (b.state == BatchState.POSTED or (b.posted_at or now) > now - IMPORT_SET_LIFETIME)
        ]
        sets = self._import_sets(sorted({b.import_set_id for b in waiting if b.import_set_id}))
        signature = tuple(sorted((i, _field(r, "state")) for i, r in sets.items()))
        changed = signature != self._last_poll_signature or not waiting
        self._last_poll_signature = signature
        self.idle_poll_rounds = 0 if changed else self.idle_poll_rounds + 1
        # Transform history is asked only while nothing moves, every 4th quiet round: a stuck set
        # costs a query now and then, never one per set.
        quiet = (
            [i for i, r in sets.items() if _field(r, "state") in _WAITING_SET_STATES]
            if self.idle_poll_rounds % 4 == 1
            else []
        )
        stopped_runs = self._stopped_runs(quiet)
        touched: set[int] = set()
        processed: list[tuple[BatchRecord, dict[str, Any]]] = []
        for batch in waiting:
            found = sets.get(batch.import_set_id or "")
            state = _field(found, "state") if found is not None else None
            if state == "processed":
                processed.append((batch, found or {}))
                continue
            try:
                if batch.state == BatchState.TIMED_OUT:
                    continue
                elif found is None and batch.import_set_id:
                    # Gone from the instance (cleaned up) or never visible: say so rather than wait forever.
                    self._record_missing_import_set(batch)
                    touched.add(batch.file_id)
                elif state not in _WAITING_SET_STATES or batch.import_set_id in stopped_runs:
                    assert found is not None
                    self._record_stopped_import_set(batch, found, stopped_runs.get(batch.import_set_id or ""))
                    progress.rows_finished(batch.row_count)
                    touched.add(batch.file_id)
                elif self._transform_overdue(batch, now):
                    assert found is not None
                    self._record_transform_timeout(batch, found)
                    progress.rows_finished(batch.row_count)
                    touched.add(batch.file_id)
            except IllegalTransition:
                continue  # another process (the daemon, or a command beside it) recorded them first
        touched |= self._record_processed(processed, progress)
        return self._finish_files(
            touched
            | {
                f.id
                for f in ledger.files_in_states([FileState.TRANSFORMING], mine=True)
                if wanted is None or f.id in wanted
            }
        )

    def _finish_files(self, candidates: set[int]) -> list[int]:
        """Finish the transforming files among these whose every batch has its results."""
        ledger = self.ctx.ledger
        finished = []
        for file_id in sorted(candidates):
            file = ledger.get_file(file_id)
            if file is None or file.state != FileState.TRANSFORMING:
                continue
            if ledger.batches(file_id, UNFINISHED_BATCH_STATES):
                continue
            try:
                ledger.finish_file(file_id)
            except IllegalTransition:
                continue  # finished by another process meanwhile
            self.completion.complete_file(file_id)
            finished.append(file_id)
        return finished

    def _import_sets(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        sets: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), POLL_CHUNK):
            chunk = ids[start : start + POLL_CHUNK]
            for record in self.ctx.client.query(
                "sys_import_set", "sys_idIN" + ",".join(chunk), fields=["sys_id", "state", "number"]
            ):
                sets[_field(record, "sys_id")] = record
        return sets

    def _stopped_runs(self, import_set_ids: list[str]) -> dict[str, str]:
        """Import sets whose transform history (sys_import_set_run) ended Cancelled or Did not complete."""
        stopped: dict[str, str] = {}
        for start in range(0, len(import_set_ids), POLL_CHUNK):
            chunk = import_set_ids[start : start + POLL_CHUNK]
            for run in self.ctx.client.query(
                "sys_import_set_run",
                "setIN" + ",".join(chunk) + "^stateIN" + ",".join(STOPPED_RUN_STATES),
                fields=["set", "state"],
            ):
                stopped[_field(run, "set")] = _field(run, "state")
        return stopped

    def _transform_overdue(self, batch: BatchRecord, now: datetime) -> bool:
        timeout = timedelta(seconds=self.ctx.config.instance.transform_timeout_s)
        return batch.posted_at is not None and now - batch.posted_at > timeout

    def _record_stopped_import_set(
        self, batch: BatchRecord, record: dict[str, Any], run_state: str | None
    ) -> None:
        number = _field(record, "number") or batch.import_set_id
        state = _field(record, "state")
        if run_state:
            what = f"its transform history says {run_state!r} (import set state {state!r})"
        else:
            what = f"it is in state {state!r}, which never becomes 'processed'"
        message = (
            f"import set {number} was not transformed: {what}. A transform script (onStart, onBefore "
            "or onComplete) or a person stopped it; check its Transform History on the instance, "
            f"then re-run the failed rows (`importer rerun {batch.file_id} --failed-only`)"
        )
        log.warning("file=%s batch=%s import set %s %s", batch.file_id, batch.id, number, what)
        self.ctx.ledger.record_row_results(batch.id, _every_row(batch, message))

    def _record_transform_timeout(self, batch: BatchRecord, record: dict[str, Any]) -> None:
        timeout = self.ctx.config.instance.transform_timeout_s
        number = _field(record, "number") or batch.import_set_id
        message = (
            f"not transformed within {timeout:g} s; import set {number} state {_field(record, 'state')!r}. "
            "The instance's transform scheduler may be stuck; a later poll records the real result "
            "if the set is processed"
        )
        log.warning("file=%s batch=%s %s", batch.file_id, batch.id, message)
        self.ctx.ledger.record_row_results(batch.id, _every_row(batch, message), timed_out=True)

    def _record_missing_import_set(self, batch: BatchRecord) -> None:
        message = (
            f"import set {batch.import_set_id} is not on the instance any more (cleaned up?): "
            "the result of this row is unknown; check the target table and re-run the file if needed"
        )
        self.ctx.ledger.record_row_results(batch.id, _every_row(batch, message))

    def _record_processed(
        self, processed: list[tuple[BatchRecord, dict[str, Any]]], progress: Progress
    ) -> set[int]:
        """Record the results of processed import sets, read for many sets per query; returns
        the files touched."""
        ledger = self.ctx.ledger
        touched: set[int] = set()
        tables: dict[int, str] = {}  # each file's staging table, read once per round
        by_table: dict[str, list[tuple[BatchRecord, dict[str, Any]]]] = {}
        for batch, found in processed:
            if batch.file_id not in tables:
                file = ledger.get_file(batch.file_id)
                assert file is not None and file.staging_table is not None
                tables[batch.file_id] = file.staging_table
            by_table.setdefault(tables[batch.file_id], []).append((batch, found))
        for staging_table, items in by_table.items():
            for chunk in _chunks_by_rows(items, RESULT_PAGE_ROWS):
                batches = [batch for batch, _ in chunk]
                try:
                    staged = self._staging_rows(staging_table, batches)
                except TransientError as exc:
                    if exc.context.get("reason") != "acl":
                        raise
                    # Retried already: the user may not read the staging rows. Say so on every row.
                    for batch in batches:
                        with contextlib.suppress(IllegalTransition):
                            ledger.record_row_results(batch.id, _every_row(batch, str(exc)))
                            touched.add(batch.file_id)
                    continue
                outcomes = [
                    (batch.id, self.batch_outcomes(staging_table, staged.get(batch.import_set_id or "", [])))
                    for batch in batches
                ]
                # One transaction for the chunk's batches: few commits while results stream in.
                recorded = set(ledger.record_results_of_batches(outcomes))
                for batch, found in chunk:
                    if batch.id not in recorded:
                        continue  # another process (the daemon, or a command beside it) was first
                    if batch.state == BatchState.TIMED_OUT:
                        log.info(
                            "file=%s batch=%s import set %s processed after its timeout; real results "
                            "recorded",
                            batch.file_id,
                            batch.id,
                            _field(found, "number"),
                        )
                        self.completion.rewrite_report(batch.file_id)
                    else:
                        progress.rows_finished(batch.row_count)
                    touched.add(batch.file_id)
        return touched

    def _staging_rows(
        self, staging_table: str, batches: list[BatchRecord]
    ) -> dict[str, list[dict[str, Any]]]:
        """The staging rows of these import sets, by import set: one query (pages as large as the
        rows expected, so no empty page follows), only the fields that carry a row's result."""
        expected = sum(batch.row_count for batch in batches)
        by_set: dict[str, list[dict[str, Any]]] = {}
        for staging_row in self.ctx.client.query(
            staging_table,
            "sys_import_setIN" + ",".join(batch.import_set_id or "" for batch in batches),
            fields=(*STAGING_RESULT_FIELDS, "sys_import_set"),
            display_value="all",
            page_size=max(1, min(expected, RESULT_PAGE_ROWS)),
        ):
            by_set.setdefault(_field(staging_row, "sys_import_set"), []).append(staging_row)
        return by_set

    def transform_map_count(self, staging_table: str) -> int:
        if staging_table not in self._transform_maps:
            count = self.ctx.client.count("sys_transform_map", f"source_table={staging_table}^active=true")
            self._transform_maps[staging_table] = int(count) if isinstance(count, int) else 1
        return self._transform_maps[staging_table]

    def batch_outcomes(self, staging_table: str, staging_rows: list[dict[str, Any]]) -> list[RowResult]:
        """Every row's result per transform map, from an import set's staging rows."""
        several_maps = self.transform_map_count(staging_table) > 1
        outcomes: list[RowResult] = []
        for staging_row in staging_rows:
            index = int(_field(staging_row, "sys_import_row") or -1)
            staging_sys_id = _field(staging_row, "sys_id")
            if several_maps:
                outcomes.extend(self._results_per_map(staging_table, index, staging_sys_id))
                continue
            status = _field(staging_row, "sys_import_state")
            outcomes.append(
                RowResult(
                    batch_index=index,
                    state=_KNOWN_RESULT_STATES.get(status, RowState.ERROR),
                    transform_map=_display(staging_row, "sys_transform_map") or None,
                    target_table=_field(staging_row, "sys_target_table") or None,
                    target_sys_id=(_field(staging_row, "sys_target_sys_id") or None)
                    if status in _TARGET_STATES
                    else None,
                    display_value=(_display(staging_row, "sys_target_sys_id") or None)
                    if status in _TARGET_STATES
                    else None,
                    message=_field(staging_row, "sys_import_state_comment")
                    or (None if status in _KNOWN_RESULT_STATES else f"not transformed (state {status!r})"),
                    staging_sys_id=staging_sys_id,
                )
            )
        return outcomes

    def _results_per_map(self, staging_table: str, index: int, staging_sys_id: str) -> list[RowResult]:
        """Only the import GET gives one result per transform map."""
        try:
            answer = self.ctx.client.import_row_result(staging_table, staging_sys_id)
        except AuthError as exc:
            # 403: an ACL on the staging table hides the row's result from this user.
            return [
                RowResult(
                    batch_index=index,
                    state=RowState.ERROR,
                    message=f"the result of staging row {staging_sys_id} cannot be read: {exc}",
                    staging_sys_id=staging_sys_id,
                )
            ]
        if answer is None:
            return [
                RowResult(
                    batch_index=index,
                    state=RowState.ERROR,
                    message=f"staging row {staging_sys_id} of {staging_table} is gone from the "
                    "instance (404: the Import Set Deleter removes import sets after 7 days by "
                    "default), so its result is unknown; check the target table",
                    staging_sys_id=staging_sys_id,
                )
            ]
        outcomes = []
        for result in answer.get("result", []):
            status = str(result.get("status", ""))
            outcomes.append(
                RowResult(
                    batch_index=index,
                    state=_KNOWN_RESULT_STATES.get(status, RowState.ERROR),
                    transform_map=result.get("transform_map"),
                    target_table=result.get("table"),
                    # Only inserted/updated rows name a target record; the others may
                    # carry the staging row's own sys_id (notes §11).
                    target_sys_id=result.get("sys_id") if status in _TARGET_STATES else None,
                    display_value=result.get("display_value"),
                    message=result.get("error_message")
                    or result.get("status_message")
                    or (None if status in _KNOWN_RESULT_STATES else f"unexpected status {status!r}"),
                    staging_sys_id=staging_sys_id,
                )
            )
        return outcomes
