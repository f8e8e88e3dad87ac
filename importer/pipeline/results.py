"""Results: which posted import sets the instance has processed, every row's outcome recorded
(read for many sets per query), sets that will never be processed or take too long ended, and
files whose every row has a result finished."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from importer.errors import AuthError, TransientError
from importer.ledger import BatchRecord, BatchState, FileState, IllegalTransition, RowResult, RowState
from importer.ledger.states import UNFINISHED_BATCH_STATES
from importer.pipeline.completion import Completion
from importer.pipeline.job import Context, Progress
from importer.servicenow.importsets import (
    RESULT_PAGE_ROWS,
    ROW_STATUSES,
    SET_CHUNK,
    ImportSetState,
    RowOutcome,
)

log = logging.getLogger("importer.pipeline")

# Timed-out batches are looked at again for as long as the instance keeps import sets (the
# Import Set Deleter removes them after 7 days by default).
IMPORT_SET_LIFETIME = timedelta(days=7)
POLL_BACKOFF_MAX_S = 300.0
_ROW_STATES = {status: RowState(status) for status in ROW_STATUSES}


def _chunks_by_rows(
    items: list[tuple[BatchRecord, ImportSetState]], max_rows: int
) -> Iterator[list[tuple[BatchRecord, ImportSetState]]]:
    """Consecutive groups of batches holding at most ``max_rows`` rows (and SET_CHUNK sets)
    together; a batch larger than that is a group of its own."""
    chunk: list[tuple[BatchRecord, ImportSetState]] = []
    rows = 0
    for item in items:
        if chunk and (rows + item[0].row_count > max_rows or len(chunk) >= SET_CHUNK):
            yield chunk
            chunk, rows = [], 0
        chunk.append(item)
        rows += item[0].row_count
    if chunk:
        yield chunk


def _every_row(batch: BatchRecord, message: str) -> list[RowResult]:
    return [RowResult(batch_index=i, state=RowState.ERROR, message=message) for i in range(batch.row_count)]


def _row_result(outcome: RowOutcome) -> RowResult:
    # Positional, in RowResult's field order: one per row and transform map, 100,000s per file.
    return RowResult(
        outcome.row,
        _ROW_STATES.get(outcome.status, RowState.ERROR),
        outcome.transform_map,
        outcome.target_table,
        outcome.target_sys_id,
        outcome.display_value,
        outcome.message,
        outcome.staging_sys_id,
    )


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
        import_sets = self.ctx.client.import_sets
        sets = import_sets.import_set_states(sorted({b.import_set_id for b in waiting if b.import_set_id}))
        signature = tuple(sorted((i, s.state) for i, s in sets.items()))
        changed = signature != self._last_poll_signature or not waiting
        self._last_poll_signature = signature
        self.idle_poll_rounds = 0 if changed else self.idle_poll_rounds + 1
        # Transform history is asked only while nothing moves, every 4th quiet round: a stuck set
        # costs a query now and then, never one per set.
        quiet = [i for i, s in sets.items() if s.may_still_process] if self.idle_poll_rounds % 4 == 1 else []
        stopped_runs = import_sets.stopped_runs(quiet)
        touched: set[int] = set()
        processed: list[tuple[BatchRecord, ImportSetState]] = []
        for batch in waiting:
            found = sets.get(batch.import_set_id or "")
            if found is not None and found.processed:
                processed.append((batch, found))
                continue
            try:
                if batch.state == BatchState.TIMED_OUT:
                    continue
                elif found is None and batch.import_set_id:
                    # Gone from the instance (cleaned up) or never visible: say so rather than wait forever.
                    self._record_missing_import_set(batch)
                    touched.add(batch.file_id)
                elif found is None:
                    continue  # not sent yet
                elif not found.may_still_process or batch.import_set_id in stopped_runs:
                    self._record_stopped_import_set(batch, found, stopped_runs.get(batch.import_set_id or ""))
                    progress.rows_finished(batch.row_count)
                    touched.add(batch.file_id)
                elif self._transform_overdue(batch, now):
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

    def _transform_overdue(self, batch: BatchRecord, now: datetime) -> bool:
        timeout = timedelta(seconds=self.ctx.config.instance.transform_timeout_s)
        return batch.posted_at is not None and now - batch.posted_at > timeout

    def _record_stopped_import_set(
        self, batch: BatchRecord, found: ImportSetState, run_state: str | None
    ) -> None:
        number, state = found.number or batch.import_set_id, found.state
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

    def _record_transform_timeout(self, batch: BatchRecord, found: ImportSetState) -> None:
        timeout = self.ctx.config.instance.transform_timeout_s
        number = found.number or batch.import_set_id
        message = (
            f"not transformed within {timeout:g} s; import set {number} state {found.state!r}. "
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
        self, processed: list[tuple[BatchRecord, ImportSetState]], progress: Progress
    ) -> set[int]:
        """Record the results of processed import sets, read for many sets per query; returns
        the files touched."""
        ledger = self.ctx.ledger
        touched: set[int] = set()
        tables: dict[int, str] = {}  # each file's staging table, read once per round
        by_table: dict[str, list[tuple[BatchRecord, ImportSetState]]] = {}
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
                    staged = self.ctx.client.import_sets.staging_results(
                        staging_table,
                        [batch.import_set_id or "" for batch in batches],
                        expected_rows=sum(batch.row_count for batch in batches),
                    )
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
                            found.number,
                        )
                        self.completion.rewrite_report(batch.file_id)
                    else:
                        progress.rows_finished(batch.row_count)
                    touched.add(batch.file_id)
        return touched

    def transform_map_count(self, staging_table: str) -> int:
        if staging_table not in self._transform_maps:
            self._transform_maps[staging_table] = self.ctx.client.import_sets.active_transform_maps(
                staging_table
            )
        return self._transform_maps[staging_table]

    def batch_outcomes(self, staging_table: str, staged: list[RowOutcome]) -> list[RowResult]:
        """Every row's result per transform map, from what an import set's staging rows hold."""
        if self.transform_map_count(staging_table) <= 1:
            return [_row_result(outcome) for outcome in staged]
        outcomes: list[RowResult] = []
        for row in staged:
            outcomes.extend(self._results_per_map(staging_table, row))
        return outcomes

    def _results_per_map(self, staging_table: str, row: RowOutcome) -> list[RowResult]:
        """Only the import GET gives one result per transform map."""
        try:
            per_map = self.ctx.client.import_sets.results_per_map(staging_table, row)
        except AuthError as exc:
            # 403: an ACL on the staging table hides the row's result from this user.
            message = f"the result of staging row {row.staging_sys_id} cannot be read: {exc}"
        else:
            if per_map is not None:
                return [_row_result(outcome) for outcome in per_map]
            message = (
                f"staging row {row.staging_sys_id} of {staging_table} is gone from the instance (404: the "
                "Import Set Deleter removes import sets after 7 days by default), so its result is "
                "unknown; check the target table"
            )
        return [
            RowResult(
                batch_index=row.row, state=RowState.ERROR, message=message, staging_sys_id=row.staging_sys_id
            )
        ]
