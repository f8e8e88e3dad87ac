"""The dropper's side: answers written beside the inbox, for the people who drop files.

For a finished file ``<file_id>-<name>.report.csv`` (the per-row report, as in ``var/reports/``) and
``<file_id>-<name>.report.html`` (the page people read, see ``report_page``); for a refused file
``<name>.error.txt`` saying why. A file dropped in ``inbox/<mapping>/`` is answered in
``outbox/<mapping>/``; a re-run is answered under its own id, naming the original.

Every answer is written to a hidden temporary name in its folder and renamed into place, so a
person (or a sync client on a share) never opens half a file. Files are 0640 and folders 0750,
whatever the service's umask: the outbox's group (the drop group, inherited through the setgid
bit ``deploy/install.sh`` sets) may read them, nobody else. The outbox is pruned with the same
retention as the reports.

Nothing here may fail an import: ``Answers`` logs what went wrong and the file carries on.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import operator
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from importer.inbox import ensure_dirs, excel_safe, safe_name, write_atomically
from importer.ledger import FileRecord, FileState, Ledger
from importer.report_page import ReportSummary, render_report, summary_of

if TYPE_CHECKING:
    from importer.config import Config
    from importer.mapping import Mapping as ImportMapping
    from importer.notifications import Notifier

log = logging.getLogger("importer.outbox")

FILE_MODE = 0o640
DIR_MODE = 0o750
ANSWER_SUFFIXES = (".report.csv", ".report.html", ".error.txt")


@dataclass(frozen=True)
class Answer:
    """Where a file's answer is: the page and CSV of a finished file, or the note of a refused one."""

    html: Path | None = None
    csv: Path | None = None
    error: Path | None = None


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder_for(self, record: FileRecord) -> Path:
        """``outbox/`` for a file dropped in the inbox itself, ``outbox/<mapping>/`` for one dropped
        in ``inbox/<mapping>/``."""
        parent = PurePosixPath(record.relative_path).parent
        return self.root / safe_name(parent.name) if parent.name else self.root

    def report_paths(self, record: FileRecord) -> tuple[Path, Path]:
        stem = f"{record.id}-{safe_name(record.name)}"
        folder = self.folder_for(record)
        return folder / f"{stem}.report.html", folder / f"{stem}.report.csv"

    def error_path(self, record: FileRecord) -> Path:
        return self.folder_for(record) / f"{safe_name(record.name)}.error.txt"

    def write_finished(self, record: FileRecord, csv_report: Path | None, html: str) -> Answer:
        html_path, csv_path = self.report_paths(record)
        ensure_dirs(html_path.parent, DIR_MODE, keep_setgid=True)
        if csv_report is not None and csv_report.is_file():
            with csv_report.open("rb") as source:
                write_answer(csv_path, lambda out: shutil.copyfileobj(source, out))
        write_answer(html_path, lambda out: out.write(html.encode("utf-8")))
        # A refusal of an earlier drop of this name is answered now: leaving it would mislead.
        stale = self.error_path(record)
        with contextlib.suppress(FileNotFoundError):
            if stale.stat().st_mtime < html_path.stat().st_mtime:
                stale.unlink()
        return Answer(html=html_path, csv=csv_path if csv_path.exists() else None)

    def write_refused(self, record: FileRecord, note: str) -> Answer:
        path = self.error_path(record)
        ensure_dirs(path.parent, DIR_MODE, keep_setgid=True)
        write_answer(path, lambda out: out.write(note.encode("utf-8")))
        return Answer(error=path)

    def prune(self, cutoff: datetime) -> int:
        """Remove answers (and left-over temporary files) older than ``cutoff``; anything else a
        person put in the outbox is left alone."""
        removed = 0
        limit = cutoff.timestamp()
        folders = [self.root, *(p for p in _listing(self.root) if p.is_dir() and not p.is_symlink())]
        for folder in folders:
            for path in _listing(folder):
                ours = path.name.endswith(ANSWER_SUFFIXES) or (
                    path.name.startswith(".") and path.name.endswith(".tmp")
                )
                if not ours or not path.is_file() or path.is_symlink():
                    continue
                try:
                    if path.stat().st_mtime < limit:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_answer(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write an answer atomically (``inbox.write_atomically``), readable by the drop group (0640)."""
    write_atomically(path, write, mode=FILE_MODE)


def refusal_note(record: FileRecord, original: FileRecord | None = None) -> str:
    when = (record.finished_at or datetime.now().astimezone()).astimezone()
    rerun = (
        f"This was a re-run of file #{record.rerun_of}"
        + (f" ({original.name!r})" if original is not None else "")
        + ".\n"
        if record.rerun_of
        else ""
    )
    return (
        f"The importer refused the file {record.name!r} (file #{record.id}) as a whole on "
        f"{when:%Y-%m-%d %H:%M:%S %Z}.\n"
        f"{rerun}"
        f"\n"
        f"What was wrong:\n"
        f"{(record.error or 'no reason was recorded').strip()}\n"
        f"\n"
        f"What to do: correct the file (or ask for the mapping to be corrected) and drop it into the\n"
        f"inbox again. The importer keeps the file as it was dropped; ask an operator if you need it.\n"
    )


class Answers:
    """What the people who dropped a file hear back: the outbox files and the notifications.

    Called where a file finishes (its report is written) and where it is refused; never raises."""

    def __init__(self, config: Config, ledger: Ledger, notifier: Notifier | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.notifier = notifier
        root = config.paths.outbox_dir
        self.outbox = Outbox(root) if root is not None else None

    def file_finished(self, file_id: int, mappings: Mapping[str, ImportMapping]) -> Answer | None:
        try:
            return self._file_finished(file_id, mappings)
        except Exception:
            log.exception(
                "file=%s the answer for the outbox could not be written; the import is recorded", file_id
            )
            return None

    def file_refused(self, file_id: int) -> Answer | None:
        try:
            return self._file_refused(file_id)
        except Exception:
            log.exception("file=%s the refusal could not be answered in the outbox; it is recorded", file_id)
            return None

    def _original(self, record: FileRecord) -> FileRecord | None:
        return self.ledger.get_file(record.rerun_of) if record.rerun_of else None

    def _file_finished(self, file_id: int, mappings: Mapping[str, ImportMapping]) -> Answer | None:
        record = self.ledger.get_file(file_id)
        if record is None:
            return None
        summary = summary_of(record, self.ledger.row_counts(file_id), self._original(record))
        wants_html = self.outbox is not None or (self.notifier is not None and self.notifier.wants_html)
        html = None
        if wants_html:
            source = Path(record.path)
            html = render_report(
                summary,
                _report_entries(self.ledger, record),
                mapping=mappings.get(record.mapping or ""),
                source=source if source.is_file() else None,
                csv_name=f"{record.id}-{safe_name(record.name)}.report.csv",
                read_back=_read_back(self.config, record),
            )
        answer = None
        if self.outbox is not None and html is not None:
            report = Path(record.report_path) if record.report_path else None
            answer = self.outbox.write_finished(record, report, html)
            log.info("file=%s answered in %s", file_id, answer.html)
        self._notify(summary, html, answer)
        return answer

    def _file_refused(self, file_id: int) -> Answer | None:
        record = self.ledger.get_file(file_id)
        if record is None or record.state != FileState.REJECTED:
            return None
        summary = summary_of(record, self.ledger.row_counts(file_id), self._original(record))
        answer = None
        if self.outbox is not None:
            answer = self.outbox.write_refused(record, refusal_note(record, self._original(record)))
            log.info("file=%s refusal answered in %s", file_id, answer.error)
        self._notify(summary, None, answer)
        return answer

    def _notify(self, summary: ReportSummary, html: str | None, answer: Answer | None) -> None:
        if self.notifier is not None:
            where = (answer.html or answer.error) if answer is not None else None
            self.notifier.file_answered(summary, html, where)


def _read_back(config: Config, record: FileRecord) -> list[dict[str, str]] | None:
    """The differences a mapping's ``verify: true`` found (written beside the report just before),
    or None when the file was not verified."""
    from importer.verify import verify_path

    path = verify_path(config.paths.reports, record.id, record.name)
    if not path.is_file():
        return None
    return list(_csv_lines(path, encoding="utf-8"))


def _report_entries(ledger: Ledger, record: FileRecord) -> Iterator[dict[str, str]]:
    """The file's report lines for its page, streamed: read back from the CSV report written
    just before (one CSV read, not a second pass over the ledger's rows), from the ledger when
    there is none."""
    path = Path(record.report_path) if record.report_path else None
    if path is None or not path.is_file():
        yield from ledger.report(record.id)
        return
    yield from _csv_lines(path, encoding="utf-8-sig")  # the report starts with a BOM, for Excel


def _csv_lines(path: Path, *, encoding: str) -> Iterator[dict[str, str]]:
    """A CSV report's lines, each cell as it was before ``excel_safe`` defused it."""
    defused = operator.methodcaller("startswith", "'")
    with path.open(newline="", encoding=encoding) as handle:
        lines = csv.reader(handle)
        header = next(lines, [])
        for cells in lines:
            if any(map(defused, cells)):  # seldom: the usual line is taken as it is, at C speed
                cells = [_un_excel(cell) for cell in cells]
            yield dict(zip(header, cells, strict=False))


def _un_excel(value: str | None) -> str:
    """A CSV cell as it was before ``excel_safe`` defused it (the page is not a spreadsheet)."""
    text = value or ""
    return text[1:] if text.startswith("'") and excel_safe(text[1:]) == text else text


def answer_location(config: Config, record: FileRecord) -> Path | None:
    """Where a person finds a file's answer: the outbox page (or refusal note) if written, else
    the report in the state folder."""
    root = config.paths.outbox_dir
    if root is not None:
        outbox = Outbox(root)
        html, _csv = outbox.report_paths(record)
        for candidate in (html, outbox.error_path(record)):
            if candidate.is_file():
                return candidate
    return Path(record.report_path) if record.report_path else None


def answer_line(config: Config, file: FileRecord, rows: Mapping[str, int]) -> str:
    """A file's answer in one line, for ``importer status``: what is done, what needs a person,
    where the report is."""
    summary = summary_of(file, rows)
    line = summary.one_line().removeprefix(f"{file.name}: ")
    where = answer_location(config, file)
    return f"{line}; report: {where}" if where is not None else line
