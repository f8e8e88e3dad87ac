"""One file end to end, a room per stage (README "How a file travels"):

- ``taking``: a file recorded as queued, copied in, or refused as a whole;
- ``reading``: its rows through the mapping, in a child process, read ahead of posting;
- ``posting``: rows not yet sent, in batches, to insertMultiple in their run_after chain;
  several files side by side;
- ``recovery``: a batch whose answer was lost is looked for at the instance before a resend;
- ``results``: processed import sets' row results recorded; stopped or overdue sets ended;
- ``waiting``: the one "post, then wait for results" ending of import, rerun and run --once;
- ``completion``: report, archive, verify if asked, the answer to the dropper.

``Importer`` wires them; it is shared by the one-shot ``importer import`` and the daemon. Every
step is recorded in the ledger before and after it happens, so ``process_file`` can pick a file
up wherever a crash or a stop left it: rows already in the ledger are not sent again, a batch
whose answer was lost is looked for at the instance before anything is re-sent.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

from importer import inbox
from importer.config import Config
from importer.ledger import FileSummary, Ledger
from importer.mapping import Mapping
from importer.notifications import Notifier
from importer.outbox import Answers
from importer.pipeline.completion import Completion
from importer.pipeline.job import Chain, Context, Job, PostOutcome, Progress
from importer.pipeline.posting import Posting, unknown_staging_keys
from importer.pipeline.reading import prefetched, translated_rows
from importer.pipeline.results import Results
from importer.pipeline.taking import UNREADABLE_SHA256, Taking
from importer.pipeline.waiting import Waiting
from importer.servicenow import InstanceClient

__all__ = [
    "UNREADABLE_SHA256",
    "Chain",
    "Importer",
    "Job",
    "PostOutcome",
    "Progress",
    "prefetched",
    "translated_rows",
    "unknown_staging_keys",
]


class Importer:
    """The stages of a file's journey, wired together; the entry points the cli and the daemon call."""

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
        stop_event = stop_event or threading.Event()
        answers = Answers(config, ledger, notifier)  # the outbox and notifications
        self.ctx = Context(config, ledger, client, mappings, stop_event, answers)
        self.taking = Taking(self.ctx)
        self.completion = Completion(self.ctx)
        self.results = Results(self.ctx, self.completion)
        self.waiting = Waiting(self.ctx, self.results)
        self.posting = Posting(self.ctx, self.taking, self.results, self.completion)
        paths = config.paths
        inbox.ensure_private_dirs(paths.processing, paths.archive, paths.failed, paths.reports)

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    @property
    def client(self) -> InstanceClient:
        return self.ctx.client

    @property
    def stop_event(self) -> threading.Event:
        return self.ctx.stop_event

    @property
    def answers(self) -> Answers:
        return self.ctx.answers

    @property
    def mappings(self) -> dict[str, Mapping]:
        return self.ctx.mappings

    @mappings.setter
    def mappings(self, mappings: dict[str, Mapping]) -> None:
        self.ctx.mappings = mappings  # the daemon reloads them: every stage sees the new ones

    # -- taking ------------------------------------------------------------------------------

    def record_file(
        self,
        path: Path,
        relative: PurePosixPath,
        *,
        rerun_of: int | None = None,
        rerun_scope: str | None = None,
    ) -> int:
        return self.taking.record_file(path, relative, rerun_of=rerun_of, rerun_scope=rerun_scope)

    def copy_in(self, source: Path, *, mapping: str | None = None) -> int:
        return self.taking.copy_in(source, mapping=mapping)

    def quarantine_crashed_files(self, max_attempts: int) -> list[int]:
        return self.taking.quarantine_crashed_files(max_attempts)

    # -- posting -----------------------------------------------------------------------------

    def mapping_for(self, file_id: int) -> Mapping:
        record = self.ledger.get_file(file_id)
        assert record is not None
        return self.posting.mapping_for(record)

    def process_file(
        self, file_id: int, progress: Progress | None = None, *, retry_parked_now: bool = False
    ) -> PostOutcome:
        return self.posting.process_file(file_id, progress, retry_parked_now=retry_parked_now)

    def post_files(
        self,
        file_ids: list[int],
        progress: Progress | None = None,
        *,
        workers: int,
        retry_parked_now: bool = False,
    ) -> None:
        self.posting.post_files(file_ids, progress, workers=workers, retry_parked_now=retry_parked_now)

    # -- results and the end -----------------------------------------------------------------

    def poll_results(self, file_ids: list[int] | None = None, progress: Progress | None = None) -> list[int]:
        return self.results.poll_results(file_ids, progress)

    def next_poll_delay(self, poll_s: float) -> float:
        return self.results.next_poll_delay(poll_s)

    def finish(
        self, file_ids: list[int], progress: Progress | None = None, *, wait: bool = True
    ) -> list[FileSummary]:
        return self.waiting.finish(file_ids, progress, wait=wait)

    def complete_file(self, file_id: int) -> None:
        self.completion.complete_file(file_id)
