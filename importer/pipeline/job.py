"""What travels between the stages of a file's journey, and what every stage works with.

A ``Job`` is one file being posted: its ledger record (read once), its mapping, and where its
next batch goes in the run_after chain. The stages pass it along instead of a bare file id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from importer.config import Config
from importer.ledger import FileRecord, FileState, Ledger
from importer.mapping import Mapping
from importer.outbox import Answers
from importer.servicenow import InstanceClient


@dataclass
class Progress:
    """Callbacks for a progress display; the daemon leaves them as no-ops."""

    rows_sent: Callable[[int], None] = lambda n: None
    rows_finished: Callable[[int], None] = lambda n: None


@dataclass
class PostOutcome:
    file_id: int
    state: FileState
    sent: int = 0


@dataclass
class Chain:
    """The run_after chain of a file being posted: the import set its next batch must follow."""

    run_after: str | None
    multi_import_set_id: str | None


@dataclass
class Job:
    """One file on its way: its record as read when posting began, its mapping, its chain."""

    record: FileRecord
    mapping: Mapping
    # Where its next batch goes; the run_after is set when posting begins (see Posting).
    chain: Chain = field(init=False)

    def __post_init__(self) -> None:
        self.chain = Chain(run_after=None, multi_import_set_id=self.record.multi_import_set_id)

    @property
    def file_id(self) -> int:
        return self.record.id


@dataclass
class Context:
    """What every stage works with. ``mappings`` is replaced when the daemon reloads them."""

    config: Config
    ledger: Ledger
    client: InstanceClient
    mappings: dict[str, Mapping]
    stop_event: threading.Event
    answers: Answers
