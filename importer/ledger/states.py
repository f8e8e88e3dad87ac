"""The states a file, a batch and a row go through. Stored as their string values."""

from __future__ import annotations

from enum import StrEnum


class FileState(StrEnum):
    QUEUED = "queued"  # taken into processing/, recorded; rows not all sent yet
    POSTING = "posting"  # batches being sent
    TRANSFORMING = "transforming"  # every batch accepted; waiting for transform results
    DONE = "done"
    DONE_WITH_ERRORS = "done_with_errors"  # some rows in error or invalid
    REJECTED = "rejected"  # refused as a whole; see files.error
    DUPLICATE = "duplicate"  # same content imported before; not posted


FINAL_FILE_STATES = frozenset(
    {FileState.DONE, FileState.DONE_WITH_ERRORS, FileState.REJECTED, FileState.DUPLICATE}
)
# Finished with every row's result recorded (some may be in error): what verify reads back.
DONE_FILE_STATES = frozenset({FileState.DONE, FileState.DONE_WITH_ERRORS})
# Not every row is sent yet: posting these again resumes them (nothing is sent twice).
UNSENT_FILE_STATES = frozenset({FileState.QUEUED, FileState.POSTING})


class BatchState(StrEnum):
    POSTING = "posting"  # request about to be / being sent: after a crash this batch is ambiguous
    POSTED = "posted"  # the instance answered with an import set
    PARKED = "parked"  # sending failed in a retryable way; retried after next_attempt_at
    COMPLETE = "complete"  # every row's result is recorded
    # Not transformed within [instance] transform_timeout_s: its rows are recorded as error, and a
    # later poll that finds the import set processed replaces them with the real results.
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"  # never reached the instance (proved after a crash); its rows went to a new batch


class RowState(StrEnum):
    PENDING = "pending"  # read, not sent
    POSTED = "posted"  # in an import set, result not known yet
    INSERTED = "inserted"
    UPDATED = "updated"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    ERROR = "error"
    INVALID = "invalid"  # failed the mapping's own checks, never sent


FAILED_ROW_STATES = frozenset({RowState.ERROR, RowState.INVALID})

# When a staging table has several transform maps a row gets one result per map; its own
# state is the most telling of them: any error wins, then a change, then no change.
_ROW_STATE_PRIORITY = [
    RowState.ERROR,
    RowState.INSERTED,
    RowState.UPDATED,
    RowState.SKIPPED,
    RowState.IGNORED,
]


def combined_row_state(map_states: list[RowState]) -> RowState:
    for state in _ROW_STATE_PRIORITY:
        if state in map_states:
            return state
    return RowState.ERROR  # an unknown state from the instance is not a success


# Batches the instance took (an import set holds their rows).
SENT_BATCH_STATES = frozenset({BatchState.POSTED, BatchState.COMPLETE})
# Batches a crash or a refusal left unsettled: settled before more is sent.
UNSETTLED_BATCH_STATES = frozenset({BatchState.POSTING, BatchState.PARKED})
# Batches whose rows have no result yet: a file with any of them cannot finish.
UNFINISHED_BATCH_STATES = frozenset({BatchState.POSTING, BatchState.POSTED, BatchState.PARKED})
# Batches whose import set is still to be looked at: posted ones, and timed-out ones (a later
# poll may find their set processed and record its real results).
AWAITING_RESULTS_BATCH_STATES = frozenset({BatchState.POSTED, BatchState.TIMED_OUT})
