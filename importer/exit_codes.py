"""The one rule for exit codes, shared by ``import``, ``rerun`` and ``run --once``.

0: every row inserted, updated, ignored or skipped; 3: done, but rows in error or invalid, or a
file rejected; 1: a file could not be finished (the instance kept refusing, or a stop came
first): the same command again resumes it; 2: a usage or configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable

from importer.ledger import FileState, FileSummary
from importer.ledger.states import FAILED_ROW_STATES, FINAL_FILE_STATES, UNSENT_FILE_STATES

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ROWS_FAILED = 3


def exit_code_for(summaries: Iterable[FileSummary], *, waited: bool = True) -> int:
    """The exit code for these files. ``waited``: results were waited for, so a file still
    transforming was not finished either (without waiting, one whose every batch was taken is)."""
    code = EXIT_OK
    for summary in summaries:
        state = summary.file.state
        if state in UNSENT_FILE_STATES or (waited and state not in FINAL_FILE_STATES):
            return EXIT_FAILURE
        if state in (FileState.REJECTED, FileState.DONE_WITH_ERRORS) or any(
            summary.rows.get(s, 0) for s in FAILED_ROW_STATES
        ):
            code = EXIT_ROWS_FAILED
    return code
