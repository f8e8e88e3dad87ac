"""The end of a file's journey: the per-row report, the archive, the read-back check a mapping
asks for (``verify: true``), and the answer to whoever dropped the file."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from importer import inbox
from importer.errors import ImporterError
from importer.ledger import REPORT_COLUMNS, FileRecord
from importer.ledger.states import DONE_FILE_STATES
from importer.pipeline.job import Context

log = logging.getLogger("importer.pipeline")


class Completion:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def complete_file(self, file_id: int) -> None:
        """Write the per-row report and archive the file (a re-run's file stays with its original)."""
        ledger, paths = self.ctx.ledger, self.ctx.config.paths
        record = ledger.get_file(file_id)
        assert record is not None
        report = paths.reports / f"{file_id}-{inbox.safe_name(record.name)}.csv"
        inbox.write_report(report, REPORT_COLUMNS, ledger.report(file_id))
        ledger.set_report_path(file_id, str(report))
        path = Path(record.path)
        if record.rerun_of is None and path.is_file() and path.resolve().parent == paths.processing.resolve():
            archived = inbox.archive_file(path, paths.archive, datetime.now(UTC), name=record.name)
            ledger.set_file_path(file_id, str(archived))
        self._verify_if_asked(record)  # before the answer: the outbox page shows its differences
        self.ctx.answers.file_finished(file_id, self.ctx.mappings)
        log.info("file=%s name=%s finished rows=%s", file_id, record.name, ledger.row_counts(file_id))

    def rewrite_report(self, file_id: int) -> None:
        """Real results replaced a timeout's: the report, and the answer the dropper already
        has in the outbox (and by notification), say what really happened."""
        record = self.ctx.ledger.get_file(file_id)
        if record is None or record.report_path is None:
            return
        inbox.write_report(Path(record.report_path), REPORT_COLUMNS, self.ctx.ledger.report(file_id))
        self.ctx.answers.file_finished(file_id, self.ctx.mappings)

    def _verify_if_asked(self, record: FileRecord) -> list[dict[str, Any]] | None:
        """``verify: true``: read the file's records back; the differences go beside the report
        (``<file_id>-<name>.verify.csv``) and into the outbox's report page, the summary to the
        log. A failure to verify never holds up the file: it is logged (None: not verified), and
        ``importer verify`` can be run by hand."""
        mapping = self.ctx.mappings.get(record.mapping or "")
        if mapping is None or not mapping.verify or record.state not in DONE_FILE_STATES:
            return None
        from importer.verify import Verifier, verify_path, write_verify_csv

        file_id = record.id
        try:
            result = Verifier(self.ctx.ledger, self.ctx.client, self.ctx.mappings).verify_file(file_id)
        except ImporterError as exc:
            log.warning("file=%s verify failed: %s; run `importer verify %s` later", file_id, exc, file_id)
            return None
        path = write_verify_csv(verify_path(self.ctx.config.paths.reports, file_id, record.name), result)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "file=%s %s (%s)", file_id, result.summary(), path)
        return [d.as_json() for d in result.differences]
