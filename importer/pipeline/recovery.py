"""Lost answers: a batch sent whose answer never came (a crash, a dropped connection) is looked
for at the instance before anything is sent again, so no row is imported twice."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from importer.batching import Batch, encode_body
from importer.errors import TransientError
from importer.ledger import BatchState
from importer.ledger.states import UNSETTLED_BATCH_STATES
from importer.mapping import TranslatedRow
from importer.pipeline.job import Context, Job
from importer.pipeline.reading import translated_rows

log = logging.getLogger("importer.pipeline")

# Record that a batch's import set is known: (job, batch id, import set, multi import set).
Accept = Callable[[Job, int, str, str], None]
# Send a batch again; True when the instance took it.
Resend = Callable[[Job, Batch], bool]


class Recovery:
    def __init__(self, ctx: Context, *, accept: Accept, resend: Resend) -> None:
        self.ctx = ctx
        self.accept = accept
        self.resend = resend

    def resolve_unfinished_batches(self, job: Job, retry_parked_now: bool) -> bool:
        """Before sending more: settle batches a crash or a refusal left behind.

        ``posting`` batches may or may not have reached the instance; ``parked`` ones did not.
        Returns False when the instance cannot be asked right now (try again later).
        """
        now = datetime.now(UTC)
        ledger = self.ctx.ledger
        for batch in ledger.batches(job.file_id, UNSETTLED_BATCH_STATES):
            if batch.state == BatchState.PARKED:
                if batch.next_attempt_at and batch.next_attempt_at > now and not retry_parked_now:
                    return False
                ledger.abandon_batch(batch.id, f"parked ({batch.last_error}); rows sent again")
                continue
            try:
                if not self.resolve_lost_answer(job, batch.id, rows=None):
                    return False
            except TransientError:
                return False
        return True

    def resolve_lost_answer(
        self,
        job: Job,
        batch_id: int,
        *,
        rows: Iterable[TranslatedRow] | None,
    ) -> bool:
        """A batch whose answer was lost: find its import set at the instance, or send it again
        (``rows``; without them, on resume, they are read again from the file and re-batched)."""
        ledger = self.ctx.ledger
        batch = next(b for b in ledger.batches(job.file_id) if b.id == batch_id)
        rows = list(rows) if rows is not None else None
        first = rows[0] if rows else self._source_row(job, batch.first_source_row)
        # Created on the staging table since the batch was sent, not claimed by another batch.
        started = (batch.posting_started_at or datetime.now(UTC)) - timedelta(seconds=2)
        found = self.ctx.client.import_sets.find_import_set_holding(
            job.mapping.staging_table,
            since=started,
            row_count=batch.row_count,
            first_record=first.record if first else None,
            claimed=ledger.claimed_import_sets(job.mapping.staging_table),
        )
        if found is not None:
            import_set_id, multi_id = found
            self.accept(job, batch_id, import_set_id, multi_id)
            log.info(
                "file=%s batch=%s found at the instance as import set %s",
                job.file_id,
                batch_id,
                import_set_id,
            )
            return True
        ledger.abandon_batch(batch_id, "not found at the instance after a lost answer; sent again")
        if rows is None:
            return True
        again = Batch(rows=tuple(rows), body=encode_body([row.record or {} for row in rows]))
        return self.resend(job, again)

    def _source_row(self, job: Job, number: int) -> TranslatedRow | None:
        rows = translated_rows(
            Path(job.record.path),
            job.mapping,
            limits=self.ctx.config.limits.read_limits(),
            stop_event=self.ctx.stop_event,
        )
        return next((r for r in rows if r.number == number), None)
