"""The daemon: watch the inbox, take settled files, post them, poll results, file them away.

Threads: the main thread scans the inbox (woken by watchdog events, or by its own timer for
shares where events never arrive) and takes settled files; a pool posts files, one worker per
chain group so that files which must transform in order are posted in arrival order; an
APScheduler runs the periodic jobs (poll results, retry parked batches, prune, watchdog ping).

Stopping (rq-style two stages): the first SIGTERM/SIGINT sets ``stop_event`` — no new file is
taken, a file being posted stops after the request in flight is recorded — and the process
exits once the workers return; a second signal exits at once. Either way the ledger is
consistent: every batch is recorded as ``posting`` before its request, so a restart resumes.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from importer import inbox
from importer.app import Runtime, runtime
from importer.config import Config
from importer.errors import ConfigError, ImporterError, InputFileError, LedgerError, TransientError
from importer.exit_codes import EXIT_FAILURE, EXIT_OK, exit_code_for
from importer.ledger import BatchState, FileState
from importer.ledger.states import FINAL_FILE_STATES, UNSENT_FILE_STATES
from importer.mapping import chain_groups
from importer.mapping_files import load_mappings
from importer.notify import SystemdNotifier

log = logging.getLogger("importer.daemon")

_TAKEN_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12})(?:@(?P<folder>[^-/]+))?-(?P<name>.+)$")
TAKE_RETRY_S = 600  # a file that could not be taken is tried again this often (or when it changes)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.notifier = SystemdNotifier()
        self._signals = 0
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._futures: list[Future[Any]] = []
        self._slots = threading.BoundedSemaphore(config.daemon.max_concurrent_files)
        self._handled: set[int] = set()  # files this run took or resumed (what --once reports on)
        self._in_flight: set[int] = set()  # file ids submitted and not yet returned
        # Inbox files that could not be taken: (size, mtime) then, and when (see _take).
        self._untakeable: dict[Path, tuple[tuple[int, int], float]] = {}
        self._fatal: ImporterError | None = None  # the instance refused us (auth, unknown table...)
        self.last_successful_poll: datetime | None = None
        self._count_scan: Callable[[], None] = lambda: None  # metrics' inbox scan counter

    # -- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_FAILURE)
        log.info(
            "%s: finishing the request in flight, then exiting (again to exit now)",
            signal.Signals(signum).name,
        )
        self.notifier.stopping()
        self.stop_event.set()
        self.wake.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    # -- the run -----------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        self._install_signal_handlers()
        paths = self.config.paths
        if not paths.inbox.is_dir():
            raise InputFileError(f"the inbox {paths.inbox} does not exist; create it or set [paths] inbox")
        from importer.metrics import Metrics

        metrics = Metrics()
        self._count_scan = metrics.inbox_scans.inc
        with runtime(self.config, self.stop_event, metrics.count_retry, metrics.count_notification) as rt:
            self.rt = rt
            if self.config.daemon.metrics_port is not None:
                port = metrics.serve(
                    self.config.daemon.metrics_port, rt.ledger, lambda: self.last_successful_poll
                )
                log.info("metrics on http://127.0.0.1:%s/metrics", port)
            self._mappings_seen = self._mappings_stamp()
            self._adopt_unrecorded_files()
            self._file_away_finished()
            for file_id in rt.importer.quarantine_crashed_files(self.config.daemon.max_file_attempts):
                log.error("file=%s set aside in failed/: the process died working on it", file_id)
            resumed = [
                f.id for f in rt.ledger.files_in_states(UNSENT_FILE_STATES, mine=True)
            ]
            for file_id in resumed:
                log.info("file=%s resuming after a restart", file_id)
                self._submit(file_id)
            scheduler = self._start_scheduler(once)
            self.notifier.ready(status="watching " + str(paths.inbox))
            log.info("started: inbox=%s instance=%s once=%s", paths.inbox, self.config.instance.url, once)
            observer = None if once or not self.config.daemon.watch else self._start_observer()
            try:
                if once:
                    code = self._run_once(resumed)
                else:
                    self._watch_loop()
                    code = EXIT_OK
            finally:
                if observer is not None:
                    observer.stop()
                    observer.join(timeout=5)
                self.stop_event.set()
                self._shutdown_workers()
                if scheduler is not None:
                    scheduler.shutdown(wait=True)
                metrics.stop()
            log.info("stopped")
            return code

    def _run_once(self, resumed: list[int]) -> int:
        """Take what is in the inbox now (once it has settled), wait for every result, exit."""
        tracker = inbox.SettleTracker(self.config.daemon.settle_s)
        pending = {c.path for c in inbox.scan_inbox(self.config.paths.inbox)}
        while pending and not self.stop_event.is_set():
            present = [c for c in inbox.scan_inbox(self.config.paths.inbox) if c.path in pending]
            pending = {c.path for c in present}
            for candidate in tracker.observe(present):
                self._take(candidate)
                pending.discard(candidate.path)
            if pending:
                self.stop_event.wait(min(0.2, max(self.config.daemon.settle_s / 4, 0.05)))
        for future in list(self._futures):
            future.result()
        file_ids = sorted(
            self._handled
            | set(resumed)
            | {f.id for f in self.rt.ledger.files_in_states([FileState.TRANSFORMING], mine=True)}
        )
        if not self.stop_event.is_set() and self._fatal is None:
            self._retry_parked(force=True)  # one more try for what the instance refused for a while
            # One round for every set still looked at, timed-out ones too: a set processed after
            # its timeout gets its real results.
            self.rt.importer.poll_results()
        # Only files whose every batch was accepted can still finish; the others wait for a next run.
        return exit_code_for(self.rt.importer.finish(file_ids, wait=True), waited=True)

    def _watch_loop(self) -> None:
        tracker = inbox.SettleTracker(self.config.daemon.settle_s)
        daemon = self.config.daemon
        while not self.stop_event.is_set():
            try:
                candidates = inbox.scan_inbox(self.config.paths.inbox)
            except OSError as exc:
                log.error("cannot read the inbox %s: %s; trying again", self.config.paths.inbox, exc)
                candidates = []
            for candidate in tracker.observe(candidates):
                if self.stop_event.is_set():
                    break
                self._take(candidate)
            self._count_scan()  # after the takes: a counted scan has recorded what it took
            # Files still settling need another look soon; otherwise sleep until a file event, the
            # scheduler's rescan, or a stop wakes us.
            unsettled = len(candidates) > 0
            self.wake.wait(max(min(daemon.settle_s / 2, 1.0), 0.05) if unsettled else None)
            self.wake.clear()

    # -- taking and posting ------------------------------------------------------------------

    def _take(self, candidate: inbox.Candidate) -> None:
        """Take one settled file. Nothing about one file may stop the loop that takes the others.

        A file that cannot be taken stays in the inbox; it is tried again only when it changes or
        ``TAKE_RETRY_S`` later, so its reason is logged once, not at every scan."""
        seen = (candidate.size, candidate.mtime_ns)
        failed = self._untakeable.get(candidate.path)
        if failed is not None and failed[0] == seen and time.monotonic() - failed[1] < TAKE_RETRY_S:
            return
        try:
            if self._take_file(candidate):
                self._untakeable.pop(candidate.path, None)
                return
        except Exception:
            log.exception("cannot take %s; it stays where it is", candidate.path)
        self._untakeable[candidate.path] = (seen, time.monotonic())

    def _take_file(self, candidate: inbox.Candidate) -> bool:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:21]
        folder = candidate.relative.parent.name if len(candidate.relative.parts) > 1 else ""
        hint = f"{stamp}@{inbox.safe_name(folder)}" if folder else stamp
        try:
            taken = inbox.take_file(candidate, self.config.paths.processing, hint)
        except inbox.FileChangedError as exc:
            log.info("%s changed while being taken; it will be looked at again: %s", candidate.path, exc)
            return True  # not a failure: it is looked at again once it settles
        except OSError as exc:
            log.error(
                "cannot take %s: %s; it stays in the inbox (tried again when it changes, or in %s s): "
                "check the permissions of the file and its folder",
                candidate.path,
                exc,
                TAKE_RETRY_S,
            )
            return False
        file_id = self.rt.importer.record_file(taken, candidate.relative)
        log.info("file=%s name=%s taken into %s", file_id, candidate.relative, taken.name)
        self._submit(file_id)
        return True

    def _adopt_unrecorded_files(self) -> None:
        """A file moved into processing/ by a process that died before recording it."""
        processing = self.config.paths.processing
        known = {Path(f.path).name for f in self.rt.ledger.files_in_states(list(FileState))}
        for path in sorted(processing.iterdir()) if processing.is_dir() else []:
            if path.name in known or not path.is_file() or inbox.is_ignored(path.name):
                continue
            match = _TAKEN_NAME.match(path.name)
            relative = (
                PurePosixPath(*(p for p in (match.group("folder"), match.group("name")) if p))
                if match
                else PurePosixPath(path.name)
            )
            try:
                file_id = self.rt.importer.record_file(path, relative)
            except Exception:
                log.exception("cannot record %s found in processing/; it stays there", path.name)
                continue
            log.warning(
                "file=%s %s was in processing/ but not in the ledger; recorded it", file_id, path.name
            )

    def _file_away_finished(self) -> None:
        """A file whose last state was recorded just before a crash, but not yet moved on."""
        processing = self.config.paths.processing.resolve()
        for record in self.rt.ledger.files_in_states(FINAL_FILE_STATES, mine=True):
            path = Path(record.path)
            if record.rerun_of is not None or not path.is_file() or path.resolve().parent != processing:
                continue
            try:
                if record.state == FileState.REJECTED:
                    moved = inbox.fail_file(
                        path, self.config.paths.failed, record.error or "rejected", name=record.name
                    )
                    self.rt.ledger.set_file_path(record.id, str(moved))
                    self.rt.importer.answers.file_refused(record.id)
                else:
                    self.rt.importer.complete_file(record.id)
            except OSError as exc:
                log.error("file=%s cannot be filed away (%s); it stays in processing/", record.id, exc)

    def _group_of(self, file_id: int) -> str:
        try:
            mapping = self.rt.importer.mapping_for(file_id)
        except ImporterError:
            return "-"  # rejected anyway: any worker will do
        return chain_groups(self.rt.importer.mappings).get(mapping.name, mapping.name)

    def _submit(self, file_id: int, *, retry_parked_now: bool = False) -> None:
        self._handled.add(file_id)
        self._in_flight.add(file_id)
        group = self._group_of(file_id)
        worker = self._workers.get(group)
        if worker is None:
            worker = self._workers[group] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"post-{group}"
            )
        # Keep only what is still running: a daemon runs for months.
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(worker.submit(self._post_file, file_id, retry_parked_now))

    def _post_file(self, file_id: int, retry_parked_now: bool) -> None:
        try:
            self._post_file_now(file_id, retry_parked_now)
        finally:
            self._in_flight.discard(file_id)

    def _post_file_now(self, file_id: int, retry_parked_now: bool) -> None:
        with self._slots:
            if self.stop_event.is_set():
                return
            try:
                outcome = self.rt.importer.process_file(file_id, retry_parked_now=retry_parked_now)
                if outcome.state == FileState.DUPLICATE:
                    self.rt.importer.complete_file(file_id)
                self.notifier.status(f"file {file_id}: {outcome.state}")
            except TransientError as exc:
                log.warning("file=%s instance unavailable (%s); will retry", file_id, exc)
            except ImporterError as exc:
                self._fatal = exc
                log.error("file=%s stopped: %s", file_id, exc)
            except Exception:
                # The file's own faults are refused inside process_file; this is the ledger or a bug.
                log.exception(
                    "file=%s unexpected failure; the file stays in processing/ and is retried", file_id
                )

    def _shutdown_workers(self) -> None:
        for worker in self._workers.values():
            worker.shutdown(wait=True, cancel_futures=True)

    # -- periodic jobs -----------------------------------------------------------------------

    def _start_scheduler(self, once: bool) -> Any:
        if once:
            return None
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        daemon = self.config.daemon
        scheduler.add_job(
            self._poll_job, "interval", seconds=daemon.poll_s, id="poll", next_run_time=datetime.now(UTC)
        )
        scheduler.add_job(self._rescan_job, "interval", seconds=daemon.rescan_s, id="rescan")
        scheduler.add_job(self._retry_parked, "interval", seconds=max(daemon.poll_s, 5), id="retry")
        scheduler.add_job(self._prune_job, "interval", hours=6, id="prune", next_run_time=datetime.now(UTC))
        interval = self.notifier.watchdog_interval()
        if interval:
            scheduler.add_job(
                self.notifier.watchdog,
                "interval",
                seconds=interval,
                id="watchdog",
                next_run_time=datetime.now(UTC),
            )
        scheduler.start()
        return scheduler

    def _poll_job(self) -> None:
        # Polite polling: while no import set changes state, rounds are spaced further apart
        # (a newly posted batch brings the pace back at once).
        now = time.monotonic()
        last: float | None = getattr(self, "_last_poll_at", None)
        delay = self.rt.importer.next_poll_delay(self.config.daemon.poll_s)
        if last is not None and now - last < delay - 0.05:
            return
        self._last_poll_at = now
        try:
            finished = self.rt.importer.poll_results()
            self.last_successful_poll = datetime.now(UTC)
            for file_id in finished:
                self.notifier.status(f"file {file_id} finished")
        except (TransientError, LedgerError) as exc:  # a busy instance, a locked or full ledger
            log.warning("polling results failed (%s); next poll in %ss", exc, self.config.daemon.poll_s)
        except Exception:
            log.exception("polling results failed")

    def _rescan_job(self) -> None:
        self._reload_mappings_if_changed()
        self.wake.set()

    def _mappings_stamp(self) -> tuple[tuple[str, int], ...]:
        folder = self.config.paths.mappings
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.y*ml") if p.is_file()))

    def _reload_mappings_if_changed(self) -> None:
        """Edited mapping files take effect at the next rescan; a broken edit is logged and the
        mappings in use are kept (the daemon keeps going)."""
        try:
            stamp = self._mappings_stamp()
        except OSError as exc:
            log.error("cannot read the mappings folder: %s", exc)
            return
        if stamp == self._mappings_seen:
            return
        self._mappings_seen = stamp
        try:
            self.rt.importer.mappings = load_mappings(self.config.paths.mappings)
        except ConfigError as exc:
            log.error("mappings changed but are not valid; still using the previous ones:\n%s", exc)
            return
        log.info("mappings reloaded: %s", ", ".join(sorted(self.rt.importer.mappings)))

    def _retry_parked(self, force: bool = False) -> None:
        """Files left posting (a parked batch, or the instance down) are posted again when due;
        ``force``: now (run --once gives the instance one more chance before it exits)."""
        now = datetime.now(UTC)
        for record in self.rt.ledger.files_in_states(UNSENT_FILE_STATES, mine=True):
            if record.id in self._in_flight:
                continue  # being posted right now
            parked = self.rt.ledger.batches(record.id, [BatchState.PARKED])
            if not parked and record.id not in self._handled:
                continue  # another process is posting it (`importer import` or `rerun` beside us)
            if parked and not force and any(b.next_attempt_at and b.next_attempt_at > now for b in parked):
                continue
            self._submit(record.id, retry_parked_now=force)
        if force:
            for future in list(self._futures):
                future.result()

    def _prune_job(self) -> None:
        try:
            removed = prune(self.rt, timedelta(days=self.config.daemon.retention_days))
            if removed:
                log.info("pruned %s files older than %s days", removed, self.config.daemon.retention_days)
        except Exception:
            log.exception("pruning failed")

    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                wake.set()

        observer = Observer()
        observer.schedule(Wake(), str(self.config.paths.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        return observer


def prune(rt: Runtime, retention: timedelta) -> int:
    """Forget files finished longer ago than ``retention``: their ledger rows, reports and
    archived copies (they hold personal data)."""
    cutoff = datetime.now(UTC) - retention
    removed = 0
    for record in rt.ledger.finished_before(cutoff):
        for path in (record.report_path, record.path):
            if path and Path(path).is_file() and rt.config.paths.state in Path(path).parents:
                Path(path).unlink()
        rt.ledger.forget_file(record.id)
        removed += 1
    outbox = rt.config.paths.outbox_dir
    if outbox is not None:
        from importer.outbox import Outbox

        Outbox(outbox).prune(cutoff)  # the answers people read go with the reports
    return removed
