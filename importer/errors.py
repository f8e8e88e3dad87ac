"""One exception root; the class says how to recover.

- ``ConfigError``   — the config or a mapping file is wrong: fix it and start again (exit 2).
- ``InputFileError`` — one dropped file is refused as a whole: it goes to ``failed/`` with the
  reason, the daemon carries on (exit 2 for a one-shot import).
- ``TransientError`` — the instance or the network hiccupped: retry later, nothing is lost.
- ``InstanceError`` — the instance refused us in a way retrying will not fix (credentials,
  roles, unknown staging table): stop and tell the operator (exit 1).

Context (file, row, batch, import set, HTTP status) lives on attributes; ``str(exc)`` is the
message for the person who must act.
"""

from __future__ import annotations


class ImporterError(Exception):
    """Root of every error importer raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ConfigError(ImporterError):
    """The configuration or a mapping file is invalid. ``problems`` lists every error found."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None, **context: object) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "\n".join(problems), **context)


class UsageError(ImporterError):
    """The command line was wrong (unknown file id, missing path, ...)."""

    exit_code = 2


class InputFileError(ImporterError):
    """A dropped file is refused as a whole (unreadable, no mapping, required column missing)."""

    exit_code = 2


class InstanceError(ImporterError):
    """The instance refused a request in a way that retrying will not fix."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None, **context: object) -> None:
        super().__init__(message, status=status, **context)
        self.status = status


class AuthError(InstanceError):
    """Credentials refused (401) or a role/ACL missing (403)."""


class RequestTooLarge(InstanceError):
    """The instance refused the body as too large: the caller should split the batch."""


class TransientError(InstanceError):
    """The instance is busy, rate-limited, down, or the network failed: retry later."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None, **context: object
    ) -> None:
        super().__init__(message, status=status, **context)
        self.retry_after = retry_after


class AmbiguousResponse(TransientError):
    """The request was sent but the answer was lost: the instance may or may not have committed it."""


class LedgerError(ImporterError):
    """The ledger database failed, or is in a state this version cannot use: the message says
    what to do; nothing recorded is lost, and the same command resumes once it is fixed (exit 1).

    Database errors become one of the subclasses in one place (importer/ledger/engine.py), so
    SQLAlchemy's own never reach the person reading the message."""


class LedgerLocked(LedgerError):
    """Another process held the ledger's write lock for longer than the ledger waits."""


class LedgerFull(LedgerError):
    """The disk (or the database's quota) holding the ledger is full."""


class LedgerCorrupt(LedgerError):
    """The ledger file is not a database this version can read: restore it, never recreate it."""


class LedgerUnreachable(LedgerError):
    """The ledger's database server cannot be reached (refused, unknown host, authentication)."""


class LedgerReadOnly(LedgerError):
    """The ledger may be read but not written (file permissions, a read-only mount or server)."""
