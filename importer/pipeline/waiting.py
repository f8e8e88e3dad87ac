"""Waiting for results: the one "post, then wait" ending shared by ``importer import``,
``importer rerun`` and ``importer run --once``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from importer.ledger import BatchState, FileSummary
from importer.ledger.states import UNSENT_FILE_STATES
from importer.pipeline.job import Context, Progress
from importer.pipeline.results import Results

# A poll round in which a set changed state is followed by another this soon after it began (a
# round that read many results took longer: the next one starts at once, while the last sets of
# the chain, posted during it, are most likely processed).
PROMPT_POLL_S = 0.2
# A command waiting for its files polls at least this often, whatever daemon.poll_s says.
COMMAND_POLL_MAX_S = 2.0


class Waiting:
    def __init__(self, ctx: Context, results: Results) -> None:
        self.ctx = ctx
        self.results = results

    def results_complete(self, file_id: int) -> bool:
        return self.ctx.ledger.is_final(file_id) and not self.ctx.ledger.batches(file_id, [BatchState.POSTED])

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
            round_started = time.monotonic()
            self.results.poll_results(file_ids, progress)
            if all(self.results_complete(file_id) for file_id in file_ids):
                return True
            if deadline is not None and datetime.now(UTC) >= deadline:
                return False
            # Quick answers while sets move (a set about to finish is looked at again soon, not
            # one full interval later), the configured pace, slower while nothing changes.
            moving = self.results.idle_poll_rounds == 0
            if moving:
                delay = PROMPT_POLL_S
                pause = max(0.0, delay - (time.monotonic() - round_started))
            else:
                delay = pause = min(delay * 2, self.results.next_poll_delay(poll_s))
            if self.ctx.stop_event.wait(pause):
                return False

    def finish(
        self, file_ids: list[int], progress: Progress | None = None, *, wait: bool = True
    ) -> list[FileSummary]:
        """After posting: wait (``wait``) for the results of the files whose every batch the
        instance took, then their summaries, for ``exit_code_for``. A file left unsent (the
        instance kept refusing, or a stop came first) is not waited for: the same command later
        resumes it."""
        ledger = self.ctx.ledger
        transforming = [
            file_id
            for file_id in file_ids
            if (record := ledger.get_file(file_id)) is not None
            and record.state not in UNSENT_FILE_STATES
            and not self.results_complete(file_id)
        ]
        if wait and transforming and not self.ctx.stop_event.is_set():
            poll_s = min(self.ctx.config.daemon.poll_s, COMMAND_POLL_MAX_S)
            self.wait_for_results(transforming, poll_s=poll_s, progress=progress)
        return ledger.summaries(file_ids)
