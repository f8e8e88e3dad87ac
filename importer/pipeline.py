"""One file end to end: read -> map + validate -> batch -> post -> ledger -> poll results -> report, archive.

``Importer`` is shared by the one-shot ``importer import`` and the daemon. Every step is
recorded in the ledger before and after it happens, so ``process_file`` can pick a file up
wherever a crash or a stop left it: rows already in the ledger are not sent again, a batch
whose answer was lost is looked for at the instance before anything is re-sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from queue import Empty, Full, Queue
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from importer import inbox
from importer.batching import Batch, OversizeRow, build_batches, encode_body, split_batch
from importer.config import Config
from importer.errors import (
    AmbiguousResponse,
    AuthError,
    ImporterError,
    InputFileError,
    RequestTooLarge,
    TransientError,
)
from importer.isolated import isolated_rows
from importer.ledger import (
    REPORT_COLUMNS,
    BatchRecord,
    BatchState,
    FileRecord,
    FileState,
    IllegalTransition,
    Ledger,
    RowResult,
    RowState,
)
from importer.mapping import (
    Mapping,
    TranslatedRow,
    chain_groups,
    find_mapping,
)
from importer.notifications import Notifier
from importer.outbox import Answers
from importer.readers.options import ReadLimits
from importer.servicenow import InstanceClient
from importer.servicenow.settings import MAX_ROW_BYTES

log = logging.getLogger("importer.pipeline")

# How long a parked batch (the instance kept refusing it) waits before the next attempt.
PARK_DELAY = timedelta(seconds=60)
# Import sets are looked up in chunks of this many sys_ids per Table API query.
POLL_CHUNK = 100
# While files are being posted, results of processed sets are read this often (more often costs
# more CPU than it saves on a busy host: measured with tests/bench, target 1).
RESULTS_WHILE_POSTING_S = 2.0
# A poll round in which a set changed state is followed by another this soon.
PROMPT_POLL_S = 0.2
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


@dataclass
class Progress:
    """Callbacks for a progress display; the daemon leaves them as no-ops."""

    rows_sent: Callable[[int], None] = lambda n: None
    rows_finished: Callable[[int], None] = lambda n: None


@dataclass
class _Chain:
    """The run_after chain of a file being posted: the import set its next batch must follow."""

    run_after: str | None
    multi_import_set_id: str | None


@dataclass
class PostOutcome:
    file_id: int
    state: FileState
    sent: int = 0


T = TypeVar("T")

# Recorded for a file that could not be read to hash it: no other file has it, so it is never
# taken for a duplicate, and reading the file then refuses it with the reason.
UNREADABLE_SHA256 = "unreadable"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def translated_rows(
    path: Path,
    mapping: Mapping,
    name: str | None = None,
    *,
    limits: ReadLimits | None = None,
    stop_event: threading.Event | None = None,
) -> Iterator[TranslatedRow]:
    """Every row of a file through its mapping, headers checked first (InputFileError if wrong),
    read in a child process that can be abandoned (importer.isolated).

    ``name``: the name the file was dropped with, for messages (``path`` may be the copy in
    processing/, whose name carries a time stamp the person never saw).
    """
    try:
        yield from isolated_rows(path, mapping, limits or ReadLimits(), stop_event)
    except InputFileError as exc:
        if name is None or name == path.name:
            raise
        raise InputFileError(str(exc).replace(path.name, name), **exc.context) from exc


def unknown_staging_keys(client: InstanceClient, mapping: Mapping) -> list[str] | None:
    """Every key the mapping sends that its staging table lacks (ServiceNow drops such keys
    silently: the rows would land with those fields empty), one message each; None when the
    instance lists no columns for the table (it does not exist, or sys_dictionary is not readable)."""
    columns = list(
        client.query(
            "sys_dictionary",
            f"name={mapping.staging_table}^elementISNOTEMPTY",
            fields=["element", "column_label"],
        )
    )
    if not columns:
        return None
    field = "column_label" if mapping.key_by == "label" else "element"
    kind = "label" if field == "column_label" else "column name"
    known = {str(c.get(field, "")) for c in columns}
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


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Produce ``items`` in a helper thread, at most ``depth`` ahead of the consumer.

    Reading, translating and encoding the next batch then overlaps with waiting for the
    instance's answer to the current one. Memory stays bounded by ``depth`` batches. An error in
    the producer is raised in the consumer; a consumer that stops early stops the producer.
    """
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not cancelled.is_set():
                    try:
                        queue.put(("item", item), timeout=0.1)
                        break
                    except Full:
                        continue
                if cancelled.is_set():
                    return
            queue.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(("error", exc))

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancelled.set()
        while producer.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)
        producer.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the reader's file is closed in this thread, not left to the collector


def _field(record: dict[str, Any], name: str) -> str:
    """A Table API field as its value, whether or not display values were asked for."""
    value = record.get(name, "")
    if isinstance(value, dict):
        value = value.get("value", "")
    return "" if value is None else str(value)


def _holds_values(staged: dict[str, Any], record: dict[str, str]) -> bool:
    """Whether a staging row holds the values of the record we sent. Staging columns are named,
    not labelled, may truncate a value to their length, and drop a key they do not know: so
    compare values, and ask for most of them, not all."""
    got = [v for v in staged.values() if isinstance(v, str) and v]
    wanted = [v for v in record.values() if v]
    found = sum(1 for v in wanted if any(v == g or (len(g) >= 10 and v.startswith(g)) for g in got))
    return not wanted or found * 2 >= len(wanted)


def _display(record: dict[str, Any], name: str) -> str:
    value = record.get(name, "")
    if isinstance(value, dict):
        return str(value.get("display_value") or "")
    return ""


def _too_large_for_a_row(record: dict[str, str] | None) -> str | None:
    """ServiceNow skips (and only logs) a staging row over 8126 bytes: refuse it before it is sent."""
    if not record:
        return None
    values = record.values()
    if sum(map(len, values)) * 4 <= MAX_ROW_BYTES:  # no UTF-8 character is longer than 4 bytes
        return None
    size = sum(len(value.encode("utf-8")) for value in values)
    if size <= MAX_ROW_BYTES:
        return None
    return (
        f"row holds {size} bytes of values; ServiceNow stores at most {MAX_ROW_BYTES} bytes per "
        "import set row and would skip it: shorten its longest values"
    )


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


def _unreadable_result(index: int, staging_sys_id: str, table: str, exc: Exception) -> RowResult:
    return RowResult(
        batch_index=index,
        state=RowState.ERROR,
        message=f"the result of staging row {staging_sys_id} cannot be read: {exc}",
        staging_sys_id=staging_sys_id,
    )


class Importer:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        client: InstanceClient,
        mappings: dict[str, Mapping],
        *,
        stop_event: threading.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.client = client
        self.mappings = mappings
        self.stop_event = stop_event or threading.Event()
        self.answers = Answers(config, ledger, notifier)  # the outbox and notifications
        self._transform_maps: dict[str, int] = {}
        self._last_poll_signature: tuple[tuple[str, str], ...] = ()
        self.idle_poll_rounds = 0  # poll rounds in a row in which no import set changed state
        self._unknown_keys: dict[str, list[str] | None] = {}
        paths = config.paths
        inbox.ensure_private_dirs(paths.processing, paths.archive, paths.failed, paths.reports)

    # -- taking files ------------------------------------------------------------------------

    def record_file(
        self,
        path: Path,
        relative: PurePosixPath,
        *,
        rerun_of: int | None = None,
        rerun_scope: str | None = None,
    ) -> int:
        """Record a file already in processing/ as queued (the first step of its journey).

        A file that cannot be hashed (unreadable, or gone already) is still recorded, under a
        content hash no other file has, so that reading it refuses it with the reason.
        """
        try:
            sha256 = inbox.file_sha256(path)
            size = path.stat().st_size
        except OSError as exc:
            log.warning("cannot read %s to record it (%s); it will be refused", path, exc)
            sha256, size = UNREADABLE_SHA256, 0
        return self.ledger.record_taken_file(
            name=relative.name,
            relative_path=str(relative),
            path=str(path),
            sha256=sha256,
            size=size,
            rerun_of=rerun_of,
            rerun_scope=rerun_scope,
        )

    def copy_in(self, source: Path, *, mapping: str | None = None) -> int:
        """``importer import PATH``: copy a file from anywhere into processing/ and record it.

        The user's own file is left where it is; the copy is what gets archived (and re-run).
        """
        if not source.is_file():
            raise InputFileError(f"{source}: no such file")
        unfinished = self.ledger.unfinished_import(inbox.file_sha256(source), source.name)
        if unfinished is not None:
            # The same command again after an interruption: carry on with that file.
            log.info("file=%s name=%s was not finished; resuming it", unfinished, source.name)
            return unfinished
        processing = self.config.paths.processing
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        target = processing / f"{stamp}-{inbox.safe_name(source.name)}"
        shutil.copyfile(source, target)
        target.chmod(0o600)
        relative = PurePosixPath(mapping, source.name) if mapping else PurePosixPath(source.name)
        return self.record_file(target, relative)

    # -- posting -----------------------------------------------------------------------------

    def mapping_for(self, file_id: int) -> Mapping:
        record = self.ledger.get_file(file_id)
        assert record is not None
        if record.mapping and record.mapping in self.mappings:
            return self.mappings[record.mapping]
        return find_mapping(self.mappings, PurePosixPath(record.relative_path))

    def process_file(
        self, file_id: int, progress: Progress | None = None, *, retry_parked_now: bool = False
    ) -> PostOutcome:
        """Post every row of a queued (or interrupted) file; it ends ``transforming``, or
        ``rejected``/``duplicate``, or stays ``posting`` with a parked batch to retry later."""
        record = self.ledger.get_file(file_id)
        if record is None:
            raise ImporterError(f"file {file_id} is not in the ledger")
        # Counted until it ends: if the process dies meanwhile, the next start knows (see
        # quarantine_crashed_files) and does not resume a file that keeps taking it down.
        self.ledger.begin_attempt(file_id)
        try:
            return self._process_file(record, progress or Progress(), retry_parked_now)
        except (ImporterError, SQLAlchemyError, IllegalTransition):
            raise  # refusals are handled inside; the instance's or the ledger's trouble is not the file's
        except Exception as exc:
            # A reader or a step crashed on this file's content: refuse the file, never loop on it.
            log.exception("file=%s unexpected failure while processing it", file_id)
            self.reject(
                file_id,
                f"{record.name}: the importer failed unexpectedly on this file ({_describe(exc)}); it "
                "was set aside so the other files go on. Check the file (open it and save it again), "
                "drop it again, and report the failure if it happens again.",
            )
            return PostOutcome(file_id, FileState.REJECTED)
        finally:
            self.ledger.end_attempt(file_id)

    def _process_file(self, record: FileRecord, progress: Progress, retry_parked_now: bool) -> PostOutcome:
        file_id = record.id
        if record.state == FileState.QUEUED and record.rerun_of is None:
            original = self.ledger.find_earlier_import(record.sha256, file_id)
            if original is not None:
                self.ledger.mark_duplicate(file_id, original)
                log.info("file=%s name=%s duplicate_of=%s", file_id, record.name, original)
                return PostOutcome(file_id, FileState.DUPLICATE)
        try:
            mapping = self.mapping_for(file_id)
            self.ledger.assign_mapping(file_id, mapping.name, mapping.staging_table)
            group = chain_groups(self.mappings).get(mapping.name, mapping.name)
            with self.ledger.posting_lock(group):
                if mapping.kind == "app_service":
                    return self._send_services(file_id, mapping, progress)
                return self._post_rows(file_id, mapping, progress, retry_parked_now)
        except InputFileError as exc:
            self.reject(file_id, str(exc))
            return PostOutcome(file_id, FileState.REJECTED)

    def chain_group_of(self, file_id: int) -> str:
        """The chain group a file is posted in (files of one group go one after another)."""
        try:
            mapping = self.mapping_for(file_id)
        except ImporterError:
            return f"-{file_id}"  # no mapping: refused when processed, on its own
        return chain_groups(self.mappings).get(mapping.name, mapping.name)

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
        groups: dict[str, list[int]] = {}
        for file_id in file_ids:
            groups.setdefault(self.chain_group_of(file_id), []).append(file_id)

        def post_group(ids: list[int]) -> None:
            for file_id in ids:
                if self.stop_event.is_set():
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
                        self.poll_results(file_ids, progress)
                    except TransientError as exc:
                        log.info("results not read while posting (%s); read once posted", exc)
            except BaseException:
                self.stop_event.set()
                raise
            if any(f.exception() is not None for f in futures if f.done()):
                self.stop_event.set()
        for future in futures:
            future.result()

    def quarantine_crashed_files(self, max_attempts: int) -> list[int]:
        """At a start: files whose processing was begun ``max_attempts`` times in a row by a
        process that then died (crashed, ran out of memory, hung until the watchdog killed it) are
        refused with that reason rather than resumed into the same end."""
        quarantined = []
        for record in self.ledger.files_in_states([FileState.QUEUED, FileState.POSTING], mine=True):
            if record.attempts < max_attempts:
                if record.attempts:
                    log.warning(
                        "file=%s name=%s the process stopped while working on it (attempt %s of %s); "
                        "resuming it",
                        record.id,
                        record.name,
                        record.attempts,
                        max_attempts,
                    )
                continue
            self.reject(
                record.id,
                f"{record.name}: the importer stopped unexpectedly (crashed, ran out of memory, or hung "
                f"and was killed) {record.attempts} times in a row while working on this file, so it "
                "was set aside (daemon.max_file_attempts). Check the file (its size, its content), "
                "drop it again, and report it if it happens again.",
            )
            self.ledger.end_attempt(record.id)
            quarantined.append(record.id)
        return quarantined

    def reject(self, file_id: int, reason: str) -> None:
        """The one place a file is refused as a whole: recorded ``rejected`` with the reason, moved
        to failed/ with a ``<name>.error.txt``. A file that cannot even be moved stays where it is
        (the ledger says why; it is not tried again)."""
        record = self.ledger.get_file(file_id)
        assert record is not None
        sent = sum(
            b.row_count for b in self.ledger.batches(file_id, [BatchState.POSTED, BatchState.COMPLETE])
        )
        if sent:
            # Found part-way (say, undecodable bytes far down a CSV): what was sent stays sent, and
            # its results are still recorded; the person must know both.
            reason += (
                f"\n{sent} rows before the problem had already been sent; their results are recorded "
                f"(`importer report {file_id}`). Fix the file, then drop only the rows after them."
            )
        log.warning("file=%s name=%s rejected: %s", file_id, record.name, reason)
        self.ledger.mark_rejected(file_id, reason)
        if record.rerun_of is None and os.path.lexists(record.path):
            try:
                moved = inbox.fail_file(Path(record.path), self.config.paths.failed, reason, name=record.name)
            except OSError as exc:
                log.error(
                    "file=%s cannot be moved to %s (%s); it stays at %s",
                    file_id,
                    self.config.paths.failed,
                    exc,
                    record.path,
                )
            else:
                self.ledger.set_file_path(file_id, str(moved))
        self.answers.file_refused(file_id)

    def _translated_rows(
        self, path: Path, mapping: Mapping, name: str | None = None
    ) -> Iterator[TranslatedRow]:
        return translated_rows(
            path, mapping, name, limits=self.config.limits.read_limits(), stop_event=self.stop_event
        )

    def _rows_to_send(self, file_id: int, mapping: Mapping) -> Iterator[TranslatedRow]:
        """Translated rows of the file not yet in the ledger; invalid ones are recorded as met."""
        record = self.ledger.get_file(file_id)
        assert record is not None
        known = self.ledger.known_source_rows(file_id)
        only: set[int] | None = None
        if record.rerun_of is not None and record.rerun_scope == "failed":
            only = self.ledger.failed_source_rows(record.rerun_of)
        invalid: list[tuple[int, str]] = []
        for translated in self._translated_rows(Path(record.path), mapping, record.name):
            if translated.number in known or (only is not None and translated.number not in only):
                continue
            problem = translated.problem or _too_large_for_a_row(translated.record)
            if problem is not None:
                invalid.append((translated.number, problem))
                if len(invalid) >= 500:
                    self.ledger.record_invalid_rows(file_id, invalid)
                    invalid = []
                continue
            yield translated
        self.ledger.record_invalid_rows(file_id, invalid)

    def _first_invalid_rows(self, file_id: int, mapping: Mapping, limit: int = 5) -> list[str]:
        record = self.ledger.get_file(file_id)
        assert record is not None
        found: list[str] = []
        for translated in self._translated_rows(Path(record.path), mapping, record.name):
            if translated.problem is not None:
                found.append(f"row {translated.number}: {translated.problem}")
                if len(found) >= limit:
                    break
        return found

    def _post_rows(
        self, file_id: int, mapping: Mapping, progress: Progress, retry_parked_now: bool = False
    ) -> PostOutcome:
        outcome = PostOutcome(file_id, FileState.POSTING)
        if mapping.on_invalid_row == "reject_file" and not self.ledger.known_source_rows(file_id):
            invalid = self._first_invalid_rows(file_id, mapping)
            if invalid:
                raise InputFileError(
                    f"mapping {mapping.name} says on_invalid_row: reject_file, and the file has invalid "
                    f"rows: {'; '.join(invalid)}. Fix the file and drop it again."
                )
        self._refuse_keys_the_instance_would_drop(mapping)
        self.ledger.mark_posting(file_id)
        if not self._resolve_unfinished_batches(file_id, mapping, retry_parked_now):
            return outcome  # parked: retried later
        staging = mapping.staging_table
        max_bytes = self.config.instance.max_request_bytes
        chain = self._chain_for(file_id, mapping)
        batches = build_batches(self._rows_to_send(file_id, mapping), mapping.batch_rows, max_bytes)
        for item in prefetched(batches, depth=2):
            if isinstance(item, OversizeRow):
                self.ledger.record_invalid_rows(
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
            if self.stop_event.is_set():
                # A stop was asked: what is recorded so far is consistent; the rest is sent on resume.
                log.info("file=%s stopped before every batch was sent; the rest is sent on resume", file_id)
                return outcome
            if not self._post_batch(file_id, mapping, item, chain):
                return outcome  # parked: retried later
            outcome.sent += len(item.rows)
            progress.rows_sent(len(item.rows))
        if not self.ledger.batches(file_id, [BatchState.POSTED, BatchState.COMPLETE]):
            # Nothing reached the instance (every row invalid, or an empty file): done already.
            self.ledger.mark_transforming(file_id)
            outcome.state = self.ledger.finish_file(file_id)
            self.complete_file(file_id)
            return outcome
        self.ledger.mark_transforming(file_id)
        log.info("file=%s staging=%s posted rows=%s", file_id, staging, outcome.sent)
        outcome.state = FileState.TRANSFORMING
        return outcome

    def _send_services(self, file_id: int, mapping: Mapping, progress: Progress) -> PostOutcome:
        """A ``kind: app_service`` file: every service through the Application Service API
        (importer/appservice.py). The API answers at once: the file ends done, or stays posting
        when stopped (resumed later, nothing registered twice)."""
        from importer.appservice import ServiceImporter

        self.ledger.mark_posting(file_id)
        services = ServiceImporter(self.ledger, self.client, self.stop_event)
        if not services.import_rows(file_id, self._rows_to_send(file_id, mapping)):
            return PostOutcome(file_id, FileState.POSTING)
        self.ledger.mark_transforming(file_id)
        state = self.ledger.finish_file(file_id)
        self.complete_file(file_id)
        counts = self.ledger.row_counts(file_id)
        progress.rows_sent(sum(counts.values()))
        progress.rows_finished(sum(counts.values()))
        return PostOutcome(file_id, state)

    def _refuse_keys_the_instance_would_drop(self, mapping: Mapping) -> None:
        """Checked once per mapping (and again after it is edited): a label the staging table does
        not have would lose that column of every row without a word from ServiceNow."""
        key = f"{mapping.name}:{mapping.staging_table}:{','.join(mapping.targets)}"
        if key not in self._unknown_keys:
            try:
                self._unknown_keys[key] = unknown_staging_keys(self.client, mapping)
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

    def _chain_for(self, file_id: int, mapping: Mapping) -> _Chain:
        """Where the file's next batch goes in the run_after chain (read once per posting run)."""
        record = self.ledger.get_file(file_id)
        assert record is not None
        previous = self.ledger.last_import_set(file_id)
        if previous is None:
            # The file's first batch: behind the latest earlier file of the same staging table,
            # and behind the files of the mappings named in `after:`. Files of one chain group are
            # posted one at a time (the daemon gives each group one worker), so that file's last
            # batch is already recorded.
            previous = self.ledger.chain_tail(
                file_id, staging_table=mapping.staging_table, mappings=mapping.after
            )
        return _Chain(run_after=previous, multi_import_set_id=record.multi_import_set_id)

    def _accepted(
        self, file_id: int, chain: _Chain, batch_id: int, import_set_id: str, multi_id: str
    ) -> None:
        self.ledger.mark_batch_posted(batch_id, import_set_id, multi_id)
        self.idle_poll_rounds = 0  # a new set to watch: poll at the configured pace again
        if chain.multi_import_set_id is None and multi_id:
            self.ledger.set_multi_import_set(file_id, multi_id)
            chain.multi_import_set_id = multi_id
        chain.run_after = import_set_id

    def _post_batch(self, file_id: int, mapping: Mapping, batch: Batch, chain: _Chain) -> bool:
        """Send one batch; True when the instance took it (possibly split in parts)."""
        run_after = chain.run_after
        batch_id = self.ledger.open_batch(
            file_id,
            [row.number for row in batch.rows],
            body_bytes=len(batch.body),
            run_after=run_after,
            multi_import_set_id=chain.multi_import_set_id,
        )
        try:
            ref = self.client.insert_multiple(
                mapping.staging_table,
                batch.body,
                run_after=run_after,
                multi_import_set_id=chain.multi_import_set_id,
            )
        except RequestTooLarge:
            self.ledger.abandon_batch(batch_id, "the instance refused the body as too large; split")
            if len(batch.rows) == 1:
                row = batch.rows[0]
                self.ledger.record_invalid_rows(
                    file_id, [(row.number, "the instance refused this row as too large for one request")]
                )
                return True
            first, second = split_batch(batch)
            log.info("file=%s batch split in two (%s rows): body too large", file_id, len(batch.rows))
            return self._post_batch(file_id, mapping, first, chain) and self._post_batch(
                file_id, mapping, second, chain
            )
        except AmbiguousResponse as exc:
            log.warning(
                "file=%s batch=%s answer lost (%s); looking for it at the instance", file_id, batch_id, exc
            )
            return self._resolve_ambiguous(file_id, mapping, batch_id, chain, rows=batch.rows)
        except TransientError as exc:
            self.ledger.park_batch(batch_id, str(exc), datetime.now(UTC) + PARK_DELAY)
            log.warning("file=%s batch=%s parked: %s", file_id, batch_id, exc)
            return False
        except ImporterError as exc:
            self.ledger.park_batch(batch_id, str(exc), datetime.now(UTC) + PARK_DELAY)
            raise
        self._accepted(file_id, chain, batch_id, ref.import_set_id, ref.multi_import_set_id)
        log.info(
            "file=%s batch=%s rows=%s import_set=%s run_after=%s",
            file_id,
            batch_id,
            len(batch.rows),
            ref.import_set_id,
            run_after,
        )
        return True

    # -- crash recovery ----------------------------------------------------------------------

    def _resolve_unfinished_batches(self, file_id: int, mapping: Mapping, retry_parked_now: bool) -> bool:
        """Before sending more: settle batches a crash or a refusal left behind.

        ``posting`` batches may or may not have reached the instance; ``parked`` ones did not.
        Returns False when the instance cannot be asked right now (try again later).
        """
        now = datetime.now(UTC)
        chain = self._chain_for(file_id, mapping)
        for batch in self.ledger.batches(file_id, [BatchState.POSTING, BatchState.PARKED]):
            if batch.state == BatchState.PARKED:
                if batch.next_attempt_at and batch.next_attempt_at > now and not retry_parked_now:
                    return False
                self.ledger.abandon_batch(batch.id, f"parked ({batch.last_error}); rows sent again")
                continue
            try:
                if not self._resolve_ambiguous(file_id, mapping, batch.id, chain, rows=None):
                    return False
            except TransientError:
                return False
        return True

    def _resolve_ambiguous(
        self,
        file_id: int,
        mapping: Mapping,
        batch_id: int,
        chain: _Chain,
        *,
        rows: Iterable[TranslatedRow] | None,
    ) -> bool:
        """A batch whose answer was lost: find its import set at the instance, or send it again."""
        batch = next(b for b in self.ledger.batches(file_id) if b.id == batch_id)
        rows = list(rows) if rows is not None else None
        first = rows[0] if rows else self._source_row(file_id, mapping, batch.first_source_row)
        found = self.find_posted_import_set(mapping.staging_table, batch, first.record if first else None)
        if found is not None:
            import_set_id, multi_id = found
            self._accepted(file_id, chain, batch_id, import_set_id, multi_id)
            log.info(
                "file=%s batch=%s found at the instance as import set %s", file_id, batch_id, import_set_id
            )
            return True
        self.ledger.abandon_batch(batch_id, "not found at the instance after a lost answer; sent again")
        if rows is None:
            return True  # resume: the rows are read again from the file and re-batched
        again = Batch(rows=tuple(rows), body=encode_body([row.record or {} for row in rows]))
        return self._post_batch(file_id, mapping, again, chain)

    def _source_row(self, file_id: int, mapping: Mapping, number: int) -> TranslatedRow | None:
        record = self.ledger.get_file(file_id)
        assert record is not None
        return next(
            (r for r in self._translated_rows(Path(record.path), mapping) if r.number == number), None
        )

    def find_posted_import_set(
        self, staging_table: str, batch: BatchRecord, first_record: dict[str, str] | None
    ) -> tuple[str, str] | None:
        """Look for an import set holding this batch: created on this staging table since the
        batch was sent, not claimed by another batch, with as many rows, and whose first row
        holds the batch's first record's values (another host's set of the same size does not)."""
        started = (batch.posting_started_at or datetime.now(UTC)) - timedelta(seconds=2)
        since = started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        claimed = self.ledger.claimed_import_sets(staging_table)
        candidates = [
            record
            for record in self.client.query(
                "sys_import_set",
                f"table_name={staging_table}^sys_created_on>={since}^ORDERBYsys_created_on",
                fields=["sys_id", "sys_created_on", "multi_import_set"],
            )
            if _field(record, "sys_id") not in claimed
        ]
        for candidate in candidates:
            sys_id = _field(candidate, "sys_id")
            count = self.client.count(staging_table, f"sys_import_set={sys_id}")
            if count != batch.row_count:
                continue
            if first_record is not None:
                staged = next(
                    iter(self.client.query(staging_table, f"sys_import_set={sys_id}^sys_import_row=0")), {}
                )
                if not _holds_values(staged, first_record):
                    continue
            return sys_id, _field(candidate, "multi_import_set")
        return None

    # -- results -----------------------------------------------------------------------------

    def transform_map_count(self, staging_table: str) -> int:
        if staging_table not in self._transform_maps:
            count = self.client.count("sys_transform_map", f"source_table={staging_table}^active=true")
            self._transform_maps[staging_table] = int(count) if isinstance(count, int) else 1
        return self._transform_maps[staging_table]

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
        wanted = set(file_ids) if file_ids is not None else None
        now = datetime.now(UTC)
        waiting = [
            b
            for b in self.ledger.waiting_batches(mine=True)
            if (wanted is None or b.file_id in wanted)
            and (b.state == BatchState.POSTED or (b.posted_at or now) > now - IMPORT_SET_LIFETIME)
        ]
        sets: dict[str, dict[str, Any]] = {}
        ids = sorted({b.import_set_id for b in waiting if b.import_set_id})
        for start in range(0, len(ids), POLL_CHUNK):
            chunk = ids[start : start + POLL_CHUNK]
            for record in self.client.query(
                "sys_import_set", "sys_idIN" + ",".join(chunk), fields=["sys_id", "state", "number"]
            ):
                sets[_field(record, "sys_id")] = record
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
            timed_out = batch.state == BatchState.TIMED_OUT
            if state == "processed":
                processed.append((batch, found or {}))
                continue
            try:
                if timed_out:
                    continue
                elif found is None and batch.import_set_id:
                    # Gone from the instance (cleaned up) or never visible: say so rather than wait forever.
                    self._record_missing_import_set(batch)
                    touched.add(batch.file_id)
                elif state not in _WAITING_SET_STATES or batch.import_set_id in stopped_runs:
                    assert found is not None
                    run_state = stopped_runs.get(batch.import_set_id or "")
                    self._record_stopped_import_set(batch, found, run_state)
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
        finished = []
        candidates = touched | {
            f.id
            for f in self.ledger.files_in_states([FileState.TRANSFORMING], mine=True)
            if wanted is None or f.id in wanted
        }
        for file_id in sorted(candidates):
            file = self.ledger.get_file(file_id)
            if file is None or file.state != FileState.TRANSFORMING:
                continue
            if self.ledger.batches(file_id, [BatchState.POSTED, BatchState.POSTING, BatchState.PARKED]):
                continue
            try:
                self.ledger.finish_file(file_id)
            except IllegalTransition:
                continue  # finished by another process meanwhile
            self.complete_file(file_id)
            finished.append(file_id)
        return finished

    def next_poll_delay(self, poll_s: float) -> float:
        """Polite polling: the configured pace while sets move, doubling while nothing changes
        (a set waiting for the instance's scheduler), up to 8 times it (at most 5 minutes)."""
        factor = 2 ** min(self.idle_poll_rounds, 3)
        return min(poll_s * factor, max(poll_s, POLL_BACKOFF_MAX_S))

    def _stopped_runs(self, import_set_ids: list[str]) -> dict[str, str]:
        """Import sets whose transform history (sys_import_set_run) ended Cancelled or Did not complete."""
        stopped: dict[str, str] = {}
        for start in range(0, len(import_set_ids), POLL_CHUNK):
            chunk = import_set_ids[start : start + POLL_CHUNK]
            for run in self.client.query(
                "sys_import_set_run",
                "setIN" + ",".join(chunk) + "^stateIN" + ",".join(STOPPED_RUN_STATES),
                fields=["set", "state"],
            ):
                stopped[_field(run, "set")] = _field(run, "state")
        return stopped

    def _transform_overdue(self, batch: BatchRecord, now: datetime) -> bool:
        timeout = timedelta(seconds=self.config.instance.transform_timeout_s)
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
        self.ledger.record_row_results(
            batch.id,
            [RowResult(batch_index=i, state=RowState.ERROR, message=message) for i in range(batch.row_count)],
        )

    def _record_transform_timeout(self, batch: BatchRecord, record: dict[str, Any]) -> None:
        timeout = self.config.instance.transform_timeout_s
        number = _field(record, "number") or batch.import_set_id
        message = (
            f"not transformed within {timeout:g} s; import set {number} state {_field(record, 'state')!r}. "
            "The instance's transform scheduler may be stuck; a later poll records the real result "
            "if the set is processed"
        )
        log.warning("file=%s batch=%s %s", batch.file_id, batch.id, message)
        self.ledger.record_row_results(
            batch.id,
            [RowResult(batch_index=i, state=RowState.ERROR, message=message) for i in range(batch.row_count)],
            timed_out=True,
        )

    def _rewrite_report(self, file_id: int) -> None:
        """Real results replaced a timeout's: the report, and the answer the dropper already
        has in the outbox (and by notification), say what really happened."""
        record = self.ledger.get_file(file_id)
        if record is None or record.report_path is None:
            return
        inbox.write_report(Path(record.report_path), REPORT_COLUMNS, self.ledger.report(file_id))
        self.answers.file_finished(file_id, self.mappings)

    def _record_missing_import_set(self, batch: BatchRecord) -> None:
        message = (
            f"import set {batch.import_set_id} is not on the instance any more (cleaned up?): "
            "the result of this row is unknown; check the target table and re-run the file if needed"
        )
        self.ledger.record_row_results(
            batch.id,
            [RowResult(batch_index=i, state=RowState.ERROR, message=message) for i in range(batch.row_count)],
        )

    def _record_processed(
        self, processed: list[tuple[BatchRecord, dict[str, Any]]], progress: Progress
    ) -> set[int]:
        """Record the results of processed import sets, read for many sets per query; returns
        the files touched."""
        touched: set[int] = set()
        by_table: dict[str, list[tuple[BatchRecord, dict[str, Any]]]] = {}
        for batch, found in processed:
            file = self.ledger.get_file(batch.file_id)
            assert file is not None and file.staging_table is not None
            by_table.setdefault(file.staging_table, []).append((batch, found))
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
                            self.ledger.record_row_results(
                                batch.id,
                                [
                                    RowResult(batch_index=i, state=RowState.ERROR, message=str(exc))
                                    for i in range(batch.row_count)
                                ],
                            )
                            touched.add(batch.file_id)
                    continue
                outcomes = [
                    (batch.id, self.batch_outcomes(staging_table, staged.get(batch.import_set_id or "", [])))
                    for batch in batches
                ]
                # One transaction for the chunk's batches: few commits while results stream in.
                recorded = set(self.ledger.record_results_of_batches(outcomes))
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
                        self._rewrite_report(batch.file_id)
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
        for staging_row in self.client.query(
            staging_table,
            "sys_import_setIN" + ",".join(batch.import_set_id or "" for batch in batches),
            fields=(*STAGING_RESULT_FIELDS, "sys_import_set"),
            display_value="all",
            page_size=max(1, min(expected, RESULT_PAGE_ROWS)),
        ):
            by_set.setdefault(_field(staging_row, "sys_import_set"), []).append(staging_row)
        return by_set

    def batch_outcomes(self, staging_table: str, staging_rows: list[dict[str, Any]]) -> list[RowResult]:
        """Every row's result per transform map, from an import set's staging rows."""
        several_maps = self.transform_map_count(staging_table) > 1
        outcomes: list[RowResult] = []
        for staging_row in staging_rows:
            index = int(_field(staging_row, "sys_import_row") or -1)
            staging_sys_id = _field(staging_row, "sys_id")
            if several_maps:
                # Only the import GET gives one result per transform map.
                try:
                    answer = self.client.import_row_result(staging_table, staging_sys_id)
                except AuthError as exc:
                    # 403: an ACL on the staging table hides the row's result from this user.
                    outcomes.append(_unreadable_result(index, staging_sys_id, staging_table, exc))
                    continue
                if answer is None:
                    outcomes.append(
                        RowResult(
                            batch_index=index,
                            state=RowState.ERROR,
                            message=f"staging row {staging_sys_id} of {staging_table} is gone from the "
                            "instance (404: the Import Set Deleter removes import sets after 7 days by "
                            "default), so its result is unknown; check the target table",
                            staging_sys_id=staging_sys_id,
                        )
                    )
                    continue
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

    # -- the end of a file's journey ---------------------------------------------------------

    def complete_file(self, file_id: int) -> None:
        """Write the per-row report and archive the file (a re-run's file stays with its original)."""
        record = self.ledger.get_file(file_id)
        assert record is not None
        report = self.config.paths.reports / f"{file_id}-{inbox.safe_name(record.name)}.csv"
        inbox.write_report(report, REPORT_COLUMNS, self.ledger.report(file_id))
        self.ledger.set_report_path(file_id, str(report))
        path = Path(record.path)
        if (
            record.rerun_of is None
            and path.is_file()
            and path.resolve().parent == self.config.paths.processing.resolve()
        ):
            archived = inbox.archive_file(
                path, self.config.paths.archive, datetime.now(UTC), name=record.name
            )
            self.ledger.set_file_path(file_id, str(archived))
        self._verify_if_asked(file_id)  # before the answer: the outbox page shows its differences
        self.answers.file_finished(file_id, self.mappings)
        log.info("file=%s name=%s finished rows=%s", file_id, record.name, self.ledger.row_counts(file_id))

    def _verify_if_asked(self, file_id: int) -> list[dict[str, Any]] | None:
        """``verify: true``: read the file's records back; the differences go beside the report
        (``<file_id>-<name>.verify.csv``) and into the outbox's report page, the summary to the
        log. A failure to verify never holds up the file: it is logged (None: not verified), and
        ``importer verify`` can be run by hand."""
        record = self.ledger.get_file(file_id)
        mapping = self.mappings.get(record.mapping or "") if record is not None else None
        if record is None or mapping is None or not mapping.verify:
            return None
        if record.state not in (FileState.DONE, FileState.DONE_WITH_ERRORS):
            return None
        from importer.verify import Verifier, verify_path, write_verify_csv

        try:
            result = Verifier(self.ledger, self.client, self.mappings).verify_file(file_id)
        except ImporterError as exc:
            log.warning("file=%s verify failed: %s; run `importer verify %s` later", file_id, exc, file_id)
            return None
        path = write_verify_csv(verify_path(self.config.paths.reports, file_id, record.name), result)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "file=%s %s (%s)", file_id, result.summary(), path)
        return [d.as_json() for d in result.differences]

    def results_complete(self, file_id: int) -> bool:
        return self.ledger.is_final(file_id) and not self.ledger.batches(file_id, [BatchState.POSTED])

    def wait_for_results(
        self,
        file_ids: list[int],
        *,
        poll_s: float,
        timeout_s: float | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Poll until every file is final and every batch it sent has its results (a file rejected
        part-way has some); False if stopped or timed out first."""
        deadline = None if timeout_s is None else datetime.now(UTC) + timedelta(seconds=timeout_s)
        delay = min(PROMPT_POLL_S, poll_s)
        while True:
            self.poll_results(file_ids, progress)
            if all(self.results_complete(file_id) for file_id in file_ids):
                return True
            if deadline is not None and datetime.now(UTC) >= deadline:
                return False
            if self.stop_event.wait(delay):
                return False
            # Quick answers while sets move (a set about to finish is looked at again soon, not
            # one full interval later), the configured pace, slower while nothing changes.
            moving = self.idle_poll_rounds == 0
            delay = PROMPT_POLL_S if moving else min(delay * 2, self.next_poll_delay(poll_s))
