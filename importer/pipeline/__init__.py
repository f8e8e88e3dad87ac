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

from importer import inbox
from importer.config import Config
from importer.ledger import Ledger
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
        self.config, self.ledger, self.client = config, ledger, client
        self.stop_event = stop_event or threading.Event()
        self.answers = Answers(config, ledger, notifier)  # the outbox and notifications
        self.ctx = Context(config, ledger, client, mappings, self.stop_event, self.answers)
        self.taking = Taking(self.ctx)
        self.completion = Completion(self.ctx)
        self.results = Results(self.ctx, self.completion)
        self.waiting = Waiting(self.ctx, self.results)
        self.posting = Posting(self.ctx, self.taking, self.results, self.completion)
        # The entry points the cli and the daemon call: each is its stage's own method.
        self.record_file = self.taking.record_file
        self.copy_in = self.taking.copy_in
        self.quarantine_crashed_files = self.taking.quarantine_crashed_files
        self.process_file = self.posting.process_file
        self.post_files = self.posting.post_files
        self.poll_results = self.results.poll_results
        self.next_poll_delay = self.results.next_poll_delay
        self.finish = self.waiting.finish
        self.complete_file = self.completion.complete_file
        paths = config.paths
        inbox.ensure_private_dirs(paths.processing, paths.archive, paths.failed, paths.reports)

    @property
    def mappings(self) -> dict[str, Mapping]:
        return self.ctx.mappings

    @mappings.setter
    def mappings(self, mappings: dict[str, Mapping]) -> None:
        self.ctx.mappings = mappings  # the daemon reloads them: every stage sees the new ones

    # -- posting -----------------------------------------------------------------------------

    def mapping_for(self, file_id: int) -> Mapping:
        record = self.ledger.get_file(file_id)
        assert record is not None
        return self.posting.mapping_for(record)
