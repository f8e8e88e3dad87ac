"""Taking a file in: recording it as queued, copying a user's file into processing/, and the
one place a file is refused as a whole (rejected, moved to failed/ with the reason)."""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from importer import inbox
from importer.errors import InputFileError
from importer.ledger import FileRecord
from importer.ledger.states import SENT_BATCH_STATES, UNSENT_FILE_STATES
from importer.pipeline.job import Context

log = logging.getLogger("importer.pipeline")

# Recorded for a file that could not be read to hash it: no other file has it, so it is never
# taken for a duplicate, and reading the file then refuses it with the reason.
UNREADABLE_SHA256 = "unreadable"


class Taking:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

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
        return self.ctx.ledger.record_taken_file(
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
        unfinished = self.ctx.ledger.unfinished_import(inbox.file_sha256(source), source.name)
        if unfinished is not None:
            # The same command again after an interruption: carry on with that file.
            log.info("file=%s name=%s was not finished; resuming it", unfinished, source.name)
            return unfinished
        processing = self.ctx.config.paths.processing
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        target = processing / f"{stamp}-{inbox.safe_name(source.name)}"
        shutil.copyfile(source, target)
        target.chmod(0o600)
        relative = PurePosixPath(mapping, source.name) if mapping else PurePosixPath(source.name)
        return self.record_file(target, relative)

    def quarantine_crashed_files(self, max_attempts: int) -> list[int]:
        """At a start: files whose processing was begun ``max_attempts`` times in a row by a
        process that then died (crashed, ran out of memory, hung until the watchdog killed it) are
        refused with that reason rather than resumed into the same end."""
        ledger = self.ctx.ledger
        quarantined = []
        for record in ledger.files_in_states(UNSENT_FILE_STATES, mine=True):
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
                record,
                f"{record.name}: the importer stopped unexpectedly (crashed, ran out of memory, or hung "
                f"and was killed) {record.attempts} times in a row while working on this file, so it "
                "was set aside (daemon.max_file_attempts). Check the file (its size, its content), "
                "drop it again, and report it if it happens again.",
            )
            ledger.end_attempt(record.id)
            quarantined.append(record.id)
        return quarantined

    def reject(self, record: FileRecord, reason: str) -> None:
        """The one place a file is refused as a whole: recorded ``rejected`` with the reason, moved
        to failed/ with a ``<name>.error.txt``. A file that cannot even be moved stays where it is
        (the ledger says why; it is not tried again)."""
        ledger, file_id = self.ctx.ledger, record.id
        sent = sum(b.row_count for b in ledger.batches(file_id, SENT_BATCH_STATES))
        if sent:
            # Found part-way (say, undecodable bytes far down a CSV): what was sent stays sent, and
            # its results are still recorded; the person must know both.
            reason += (
                f"\n{sent} rows before the problem had already been sent; their results are recorded "
                f"(`importer report {file_id}`). Fix the file, then drop only the rows after them."
            )
        log.warning("file=%s name=%s rejected: %s", file_id, record.name, reason)
        ledger.mark_rejected(file_id, reason)
        failed = self.ctx.config.paths.failed
        if record.rerun_of is None and os.path.lexists(record.path):
            try:
                moved = inbox.fail_file(Path(record.path), failed, reason, name=record.name)
            except OSError as exc:
                log.error(
                    "file=%s cannot be moved to %s (%s); it stays at %s", file_id, failed, exc, record.path
                )
            else:
                ledger.set_file_path(file_id, str(moved))
        self.ctx.answers.file_refused(file_id)
