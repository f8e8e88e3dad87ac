"""Posting: a file's rows not yet sent, in batches, each to the instance's insertMultiple in
its run_after chain; several files side by side (one worker per chain group)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from importer.batching import Batch, OversizeRow, build_batches, split_batch
from importer.errors import (
    AmbiguousResponse,
    AuthError,
    ImporterError,
    InputFileError,
    RequestTooLarge,
    TransientError,
)
from importer.ledger import FileRecord, FileState
from importer.ledger.states import SENT_BATCH_STATES
from importer.mapping import Mapping, TranslatedRow, chain_groups
from importer.mapping_files import find_mapping
from importer.pipeline.completion import Completion
from importer.pipeline.job import Context, Job, PostOutcome, Progress
from importer.pipeline.reading import prefetched, too_large_for_a_row, translated_rows
from importer.pipeline.recovery import Recovery
from importer.pipeline.results import Results
from importer.pipeline.taking import Taking
from importer.servicenow import InstanceClient

log = logging.getLogger("importer.pipeline")

# How long a parked batch (the instance kept refusing it) waits before the next attempt.
PARK_DELAY = timedelta(seconds=60)
# While files are being posted, results of processed sets are read this often (more often costs
# more CPU than it saves on a busy host: measured with tests/bench, target 1).
RESULTS_WHILE_POSTING_S = 2.0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def unknown_staging_keys(client: InstanceClient, mapping: Mapping) -> list[str] | None:
    """Every key the mapping sends that its staging table lacks (ServiceNow drops such keys
    silently: the rows would land with those fields empty), one message each; None when the
    instance lists no columns for the table (it does not exist, or sys_dictionary is not readable)."""
    columns = client.import_sets.staging_columns(mapping.staging_table)
    if not columns:
        return None
    by_label = mapping.key_by == "label"
    kind = "label" if by_label else "column name"
    known = {c.label if by_label else c.element for c in columns}
    lowered = {k.lower(): k for k in known}
    messages = []
    for target in mapping.targets:
        if target in known:
            continue
        hint = ""
        if target.lower() in lowered:
            hint = f" (the table has {lowered[target.lower()]!r}: {kind}s are case-sensitive)"
        messages.append(
            f"{target!r} is not a {kind} of {mapping.staging_table}{hint}; ServiceNow would drop it silently"
        )
    return messages


class Posting:
    def __init__(self, ctx: Context, taking: Taking, results: Results, completion: Completion) -> None:
        self.ctx = ctx
        self.taking = taking
        self.results = results
        self.completion = completion
        self.recovery = Recovery(ctx, accept=self._accepted, resend=self._post_batch)
        self._unknown_keys: dict[str, list[str] | None] = {}

    # -- which mapping, which chain group ----------------------------------------------------

    def mapping_for(self, record: FileRecord) -> Mapping:
        mappings = self.ctx.mappings
        if record.mapping and record.mapping in mappings:
            return mappings[record.mapping]
        return find_mapping(mappings, PurePosixPath(record.relative_path))

    def chain_group_of(self, file_id: int) -> str:
        """The chain group a file is posted in (files of one group go one after another)."""
        record = self.ctx.ledger.get_file(file_id)
        assert record is not None
        try:
            mapping = self.mapping_for(record)
        except ImporterError:
            return f"-{file_id}"  # no mapping: refused when processed, on its own
        return chain_groups(self.ctx.mappings).get(mapping.name, mapping.name)

    # -- files -------------------------------------------------------------------------------

    def process_file(
        self, file_id: int, progress: Progress | None = None, *, retry_parked_now: bool = False
    ) -> PostOutcome:
        """Post every row of a queued (or interrupted) file; it ends ``transforming``, or
        ``rejected``/``duplicate``, or stays ``posting`` with a parked batch to retry later."""
        ledger = self.ctx.ledger
        record = ledger.get_file(file_id)
        if record is None:
            raise ImporterError(f"file {file_id} is not in the ledger")
        # Counted until it ends: if the process dies meanwhile, the next start knows (see
        # quarantine_crashed_files) and does not resume a file that keeps taking it down.
        ledger.begin_attempt(file_id)
        try:
            return self._process_file(record, progress or Progress(), retry_parked_now)
        except ImporterError:  # LedgerError and IllegalTransition among them
            raise  # refusals are handled inside; the instance's or the ledger's trouble is not the file's
        except Exception as exc:
            # A reader or a step crashed on this file's content: refuse the file, never loop on it.
            log.exception("file=%s unexpected failure while processing it", file_id)
            self.taking.reject(
                record,
                f"{record.name}: the importer failed unexpectedly on this file ({_describe(exc)}); it "
                "was set aside so the other files go on. Check the file (open it and save it again), "
                "drop it again, and report the failure if it happens again.",
            )
            return PostOutcome(file_id, FileState.REJECTED)
        finally:
            ledger.end_attempt(file_id)

    def _process_file(self, record: FileRecord, progress: Progress, retry_parked_now: bool) -> PostOutcome:
        ledger, file_id = self.ctx.ledger, record.id
        if record.state == FileState.QUEUED and record.rerun_of is None:
            original = ledger.find_earlier_import(record.sha256, file_id)
            if original is not None:
                ledger.mark_duplicate(file_id, original)
                log.info("file=%s name=%s duplicate_of=%s", file_id, record.name, original)
                return PostOutcome(file_id, FileState.DUPLICATE)
        try:
            mapping = self.mapping_for(record)
            ledger.assign_mapping(file_id, mapping.name, mapping.staging_table)
            job = Job(replace(record, mapping=mapping.name, staging_table=mapping.staging_table), mapping)
            group = chain_groups(self.ctx.mappings).get(mapping.name, mapping.name)
            with ledger.posting_lock(group):
                if mapping.kind == "app_service":
                    return self._send_services(job, progress)
                return self._post_rows(job, progress, retry_parked_now)
        except InputFileError as exc:
            self.taking.reject(record, str(exc))
            return PostOutcome(file_id, FileState.REJECTED)

    def post_files(
        self,
        file_ids: list[int],
        progress: Progress | None = None,
        *,
        workers: int,
        retry_parked_now: bool = False,
    ) -> None:
        """``process_file`` for several files side by side: one task per chain group (its files
        one after another, in order, so the run_after chains between files are kept), at most
        ``workers`` at once, each worker thread on its own session. Meanwhile this thread records
        the results of import sets already processed, so they are not all read at the end.
        The first error a worker meets stops the others (at their next batch) and is raised."""
        progress = progress or Progress()
        stop_event = self.ctx.stop_event
        groups: dict[str, list[int]] = {}
        for file_id in file_ids:
            groups.setdefault(self.chain_group_of(file_id), []).append(file_id)

        def post_group(ids: list[int]) -> None:
            for file_id in ids:
                if stop_event.is_set():
                    return
                self.process_file(file_id, progress, retry_parked_now=retry_parked_now)

        size = max(1, min(workers, len(groups)))
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="post") as pool:
            futures = [pool.submit(post_group, ids) for ids in groups.values()]
            try:
                while True:
                    done, pending = wait(
                        futures, timeout=RESULTS_WHILE_POSTING_S, return_when=FIRST_EXCEPTION
                    )
                    if not pending or any(f.exception() is not None for f in done):
                        break
                    try:
                        self.results.poll_results(file_ids, progress)
                    except TransientError as exc:
                        log.info("results not read while posting (%s); read once posted", exc)
            except BaseException:
                stop_event.set()
                raise
            if any(f.exception() is not None for f in futures if f.done()):
                stop_event.set()
        for future in futures:
            future.result()

    # -- rows --------------------------------------------------------------------------------

    def _translated_rows(self, job: Job, *, name: str | None = None) -> Iterator[TranslatedRow]:
        return translated_rows(
            Path(job.record.path),
            job.mapping,
            name,
            limits=self.ctx.config.limits.read_limits(),
            stop_event=self.ctx.stop_event,
        )

    def _rows_to_send(self, job: Job) -> Iterator[TranslatedRow]:
        """Translated rows of the file not yet in the ledger; invalid ones are recorded as met."""
        ledger, record = self.ctx.ledger, job.record
        known = ledger.known_source_rows(record.id)
        only: set[int] | None = None
        if record.rerun_of is not None and record.rerun_scope == "failed":
            only = ledger.failed_source_rows(record.rerun_of)
        invalid: list[tuple[int, str]] = []
        for translated in self._translated_rows(job, name=record.name):
            if translated.number in known or (only is not None and translated.number not in only):
                continue
            problem = translated.problem or too_large_for_a_row(translated.record)
            if problem is not None:
                invalid.append((translated.number, problem))
                if len(invalid) >= 500:
                    ledger.record_invalid_rows(record.id, invalid)
                    invalid = []
                continue
            yield translated
        ledger.record_invalid_rows(record.id, invalid)

    def _first_invalid_rows(self, job: Job, limit: int = 5) -> list[str]:
        found: list[str] = []
        for translated in self._translated_rows(job, name=job.record.name):
            if translated.problem is not None:
                found.append(f"row {translated.number}: {translated.problem}")
                if len(found) >= limit:
                    break
        return found

    def _refuse_keys_the_instance_would_drop(self, mapping: Mapping) -> None:
        """Checked once per mapping (and again after it is edited): a label the staging table does
        not have would lose that column of every row without a word from ServiceNow."""
        key = f"{mapping.name}:{mapping.staging_table}:{','.join(mapping.targets)}"
        if key not in self._unknown_keys:
            try:
                self._unknown_keys[key] = unknown_staging_keys(self.ctx.client, mapping)
            except AuthError as exc:
                log.warning(
                    "cannot read sys_dictionary to check mapping %s (%s); not checked", mapping.name, exc
                )
                self._unknown_keys[key] = None
        unknown = self._unknown_keys[key]
        if unknown:
            raise InputFileError(
                f"mapping {mapping.name} ({mapping.source}) sends keys the staging table lacks: "
                + "; ".join(unknown)
                + ". Fix the mapping (`importer check --remote` lists every such key) and drop the file"
                " again."
            )

    # -- batches -----------------------------------------------------------------------------

    def _post_rows(self, job: Job, progress: Progress, retry_parked_now: bool = False) -> PostOutcome:
        ledger, mapping, file_id = self.ctx.ledger, job.mapping, job.file_id
        outcome = PostOutcome(file_id, FileState.POSTING)
        if mapping.on_invalid_row == "reject_file" and not ledger.known_source_rows(file_id):
            invalid = self._first_invalid_rows(job)
            if invalid:
                raise InputFileError(
                    f"mapping {mapping.name} says on_invalid_row: reject_file, and the file has invalid "
                    f"rows: {'; '.join(invalid)}. Fix the file and drop it again."
                )
        self._refuse_keys_the_instance_would_drop(mapping)
        ledger.mark_posting(file_id)
        job.chain.run_after = self._run_after(job)
        if not self.recovery.resolve_unfinished_batches(job, retry_parked_now):
            return outcome  # parked: retried later
        max_bytes = self.ctx.config.instance.max_request_bytes
        batches = build_batches(self._rows_to_send(job), mapping.batch_rows, max_bytes)
        for item in prefetched(batches, depth=2):
            if isinstance(item, OversizeRow):
                ledger.record_invalid_rows(
                    file_id,
                    [
                        (
                            item.row.number,
                            f"row is {item.size} bytes as JSON; a request may not exceed "
                            f"{item.limit} bytes (instance.max_request_bytes)",
                        )
                    ],
                )
                continue
            if self.ctx.stop_event.is_set():
                # A stop was asked: what is recorded so far is consistent; the rest is sent on resume.
                log.info("file=%s stopped before every batch was sent; the rest is sent on resume", file_id)
                return outcome
            if not self._post_batch(job, item):
                return outcome  # parked: retried later
            outcome.sent += len(item.rows)
            progress.rows_sent(len(item.rows))
        ledger.mark_transforming(file_id)
        if not ledger.batches(file_id, SENT_BATCH_STATES):
            # Nothing reached the instance (every row invalid, or an empty file): done already.
            outcome.state = ledger.finish_file(file_id)
            self.completion.complete_file(file_id)
            return outcome
        log.info("file=%s staging=%s posted rows=%s", file_id, mapping.staging_table, outcome.sent)
        outcome.state = FileState.TRANSFORMING
        return outcome

    def _send_services(self, job: Job, progress: Progress) -> PostOutcome:
        """A ``kind: app_service`` file: every service through the Application Service API
        (importer/appservice.py). The API answers at once: the file ends done, or stays posting
        when stopped (resumed later, nothing registered twice)."""
        from importer.appservice import ServiceImporter

        ledger, file_id = self.ctx.ledger, job.file_id
        ledger.mark_posting(file_id)
        services = ServiceImporter(ledger, self.ctx.client, self.ctx.stop_event)
        if not services.import_rows(file_id, self._rows_to_send(job)):
            return PostOutcome(file_id, FileState.POSTING)
        ledger.mark_transforming(file_id)
        state = ledger.finish_file(file_id)
        self.completion.complete_file(file_id)
        counts = ledger.row_counts(file_id)
        progress.rows_sent(sum(counts.values()))
        progress.rows_finished(sum(counts.values()))
        return PostOutcome(file_id, state)

    def _run_after(self, job: Job) -> str | None:
        """The import set the file's next batch must follow (read once per posting run)."""
        ledger = self.ctx.ledger
        previous = ledger.last_import_set(job.file_id)
        if previous is None:
            # The file's first batch: behind the latest earlier file of the same staging table,
            # and behind the files of the mappings named in `after:`. Files of one chain group are
            # posted one at a time (the daemon gives each group one worker), so that file's last
            # batch is already recorded.
            previous = ledger.chain_tail(
                job.file_id, staging_table=job.mapping.staging_table, mappings=job.mapping.after
            )
        return previous

    def _accepted(self, job: Job, batch_id: int, import_set_id: str, multi_id: str) -> None:
        """The batch is in this import set: the file's next batch follows it."""
        chain = job.chain
        self.ctx.ledger.mark_batch_posted(batch_id, import_set_id, multi_id)
        self.results.set_posted()
        if chain.multi_import_set_id is None and multi_id:
            self.ctx.ledger.set_multi_import_set(job.file_id, multi_id)
            chain.multi_import_set_id = multi_id
        chain.run_after = import_set_id

    def _post_batch(self, job: Job, batch: Batch) -> bool:
        """Send one batch; True when the instance took it (possibly split in parts)."""
        ledger, file_id, chain = self.ctx.ledger, job.file_id, job.chain
        run_after = chain.run_after
        batch_id = ledger.open_batch(
            file_id,
            [row.number for row in batch.rows],
            body_bytes=len(batch.body),
            run_after=run_after,
            multi_import_set_id=chain.multi_import_set_id,
        )
        try:
            ref = self.ctx.client.insert_multiple(
                job.mapping.staging_table,
                batch.body,
                run_after=run_after,
                multi_import_set_id=chain.multi_import_set_id,
            )
        except RequestTooLarge:
            ledger.abandon_batch(batch_id, "the instance refused the body as too large; split")
            if len(batch.rows) == 1:
                row = batch.rows[0]
                ledger.record_invalid_rows(
                    file_id, [(row.number, "the instance refused this row as too large for one request")]
                )
                return True
            first, second = split_batch(batch)
            log.info("file=%s batch split in two (%s rows): body too large", file_id, len(batch.rows))
            return self._post_batch(job, first) and self._post_batch(job, second)
        except AmbiguousResponse as exc:
            log.warning(
                "file=%s batch=%s answer lost (%s); looking for it at the instance", file_id, batch_id, exc
            )
            return self.recovery.resolve_lost_answer(job, batch_id, rows=batch.rows)
        except TransientError as exc:
            ledger.park_batch(batch_id, str(exc), datetime.now(UTC) + PARK_DELAY)
            log.warning("file=%s batch=%s parked: %s", file_id, batch_id, exc)
            return False
        except ImporterError as exc:
            ledger.park_batch(batch_id, str(exc), datetime.now(UTC) + PARK_DELAY)
            raise
        self._accepted(job, batch_id, ref.import_set_id, ref.multi_import_set_id)
        log.info(
            "file=%s batch=%s rows=%s import_set=%s run_after=%s",
            file_id,
            batch_id,
            len(batch.rows),
            ref.import_set_id,
            run_after,
        )
        return True
