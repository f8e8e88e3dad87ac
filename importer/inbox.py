"""The file-system edge: find dropped files, wait until they settle, take them, file them away.

A dropped file travels ``inbox/`` -> ``processing/`` -> ``archive/YYYY/MM/DD/`` (or ``failed/``
with a ``<name>.error.txt``). Rules that hold all along the way:

- Nothing dropped is ever deleted. The one time the importer unlinks a dropped file is after a
  cross-file-system take, once its copy is safely (fsynced) in ``processing/``.
- Symlinks are never followed and hard-linked files are never taken: either could make the
  importer read (and then archive, i.e. move) a file from outside the inbox that the person who
  dropped the link could not read themselves.
- A move never overwrites: a name already taken gets a numeric suffix.
- Files the importer writes (reports, error notes) are 0600 in 0700 folders, written to a temporary
  name and renamed, so a reader never sees half a file.

No network and no database here; everything is tested on real temporary folders.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import fnmatch
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from importer.errors import ImporterError

log = logging.getLogger(__name__)

# Hidden files, Office lock files (~$Book.xlsx) and the partial files browsers and copy tools write
# while a transfer is in progress: none of them is a drop.
IGNORED_PATTERNS = (".*", "~$*", "*.tmp", "*.part", "*.crdownload")

MAX_NAME_BYTES = 200
_HASH_CHUNK = 1024 * 1024
# OWASP "CSV injection": a cell starting with one of these is a formula to Excel / LibreOffice.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(_FORMULA_PREFIXES)


class FileChangedError(ImporterError):
    """The file changed (or vanished, or was replaced) since it was judged settled: it was left
    where it was, and will be considered again once it settles."""


def is_ignored(name: str) -> bool:
    """True for names that are never a drop (see ``IGNORED_PATTERNS``); case-insensitive."""
    folded = name.lower()
    return any(fnmatch.fnmatchcase(folded, pattern) for pattern in IGNORED_PATTERNS)


# --- scanning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A regular file seen in the inbox: where it is, and the size and mtime it had when seen."""

    path: Path
    relative: PurePosixPath  # relative to the inbox: "hr_users.csv" or "departments/x.csv"
    size: int
    mtime_ns: int


class _WarnOnce:
    """Warn about a refused path once while it stays there, not on every rescan; warn again if it
    goes away and comes back (someone is trying again, the operator should hear about it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned: dict[Path, set[tuple[Path, str]]] = {}

    def report(self, inbox: Path, seen: set[tuple[Path, str]]) -> None:
        with self._lock:
            before = self._warned.get(inbox, set())
            for path, why in sorted(seen - before):
                log.warning("skipping %s in the inbox: %s", path, why)
            self._warned[inbox] = seen


_refused = _WarnOnce()

_WHY_SYMLINK = "it is a symbolic link, which the importer never follows; drop the file itself"
_WHY_HARDLINK = (
    "it is a hard link (the same file has another name elsewhere), which the importer never takes; "
    "copy the file into the inbox instead"
)


def scan_inbox(inbox: Path) -> list[Candidate]:
    """Regular files directly in ``inbox`` and one level down (mapping folders), in arrival order
    (mtime, then name). Ignored names, deeper folders, special files, symlinks and hard-linked
    files are skipped; symlinks and hard links are logged once as warnings."""
    found: list[Candidate] = []
    refused: set[tuple[Path, str]] = set()
    for entry in _entries(inbox, missing_ok=False):
        if is_ignored(entry.name):
            continue
        if entry.is_symlink():
            refused.add((Path(entry.path), _WHY_SYMLINK))
        elif entry.is_dir(follow_symlinks=False):
            for inner in _entries(Path(entry.path), missing_ok=True):
                if is_ignored(inner.name):
                    continue
                if inner.is_symlink():
                    refused.add((Path(inner.path), _WHY_SYMLINK))
                elif not inner.is_dir(follow_symlinks=False):  # deeper folders are not looked into
                    _add_candidate(found, refused, inner, PurePosixPath(entry.name, inner.name))
        else:
            _add_candidate(found, refused, entry, PurePosixPath(entry.name))
    _refused.report(inbox, refused)
    found.sort(key=lambda c: (c.mtime_ns, c.relative.as_posix()))
    return found


def _entries(folder: Path, missing_ok: bool) -> list[os.DirEntry[str]]:
    """The inbox itself missing or unreadable is the caller's error to report; a mapping folder
    removed while we looked, or one we may not read, only costs its files this round."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        if not missing_ok:
            raise
        return []
    except PermissionError as exc:
        if not missing_ok:
            raise
        log.warning("cannot list %s: %s; check the folder's permissions", folder, exc.strerror)
        return []


def _add_candidate(
    found: list[Candidate], refused: set[tuple[Path, str]], entry: os.DirEntry[str], relative: PurePosixPath
) -> None:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # gone between listing and stat
    if not stat.S_ISREG(st.st_mode):
        return  # FIFO, socket, device: opening one could block or worse
    if st.st_nlink > 1:
        refused.add((Path(entry.path), _WHY_HARDLINK))
        return
    found.append(Candidate(Path(entry.path), relative, st.st_size, st.st_mtime_ns))


class SettleTracker:
    """Decides when a file has finished arriving: its size and mtime have not changed for
    ``settle_s`` seconds. A file is handed out once, then forgotten (the caller takes it)."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, since)

    def observe(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        now = self._clock()
        settled: list[Candidate] = []
        seen: dict[Path, tuple[int, int, float]] = {}
        for candidate in candidates:
            size, mtime_ns, since = self._seen.get(candidate.path, (-1, -1, now))
            if (size, mtime_ns) != (candidate.size, candidate.mtime_ns):
                since = now  # new, or changed: its clock starts again
            if now - since >= self.settle_s:
                settled.append(candidate)
            else:
                seen[candidate.path] = (candidate.size, candidate.mtime_ns, since)
        self._seen = seen  # files no longer present, and the ones handed out, are forgotten
        return settled


# --- taking ----------------------------------------------------------------------------------------


def take_file(candidate: Candidate, processing_dir: Path, file_id_hint: str) -> Path:
    """Move a settled file into ``processing_dir/<file_id_hint>-<safe name>`` and return its new path.

    Same file system: one ``rename``. Another file system (a network share; also, under systemd,
    any two different ``ReadWritePaths=``/``StateDirectory=`` bind mounts): copy to a temporary name,
    fsync, rename into place, and only then unlink the dropped file. Raises ``FileChangedError``
    (leaving the file where it is) if it is no longer the regular file of the size and mtime seen.
    """
    source = candidate.path
    before = _check_unchanged(candidate, source)
    target = _free_name(processing_dir, safe_name(f"{file_id_hint}-{source.name}"))
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_then_unlink(candidate, before, target)
    else:
        try:
            after = os.lstat(target)
        except FileNotFoundError:
            raise FileChangedError(f"{source} vanished while it was being taken", path=str(source)) from None
        if not _still_the_file(candidate, before, after):
            # Swapped for something else between the check and the rename: put it back untouched.
            if not os.path.lexists(source):
                os.rename(target, source)
            raise FileChangedError(f"{source} was replaced while it was being taken", path=str(source))
        _fsync_dir(processing_dir)
    return target


def _same_file(candidate: Candidate, st: os.stat_result) -> bool:
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_size == candidate.size
        and st.st_mtime_ns == candidate.mtime_ns
    )


def _still_the_file(candidate: Candidate, before: os.stat_result, st: os.stat_result) -> bool:
    """The same inode as checked before, and still the regular file of the candidate's size/mtime."""
    return (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino) and _same_file(candidate, st)


def _check_unchanged(candidate: Candidate, path: Path) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileChangedError(
            f"{path} is gone: it was moved or deleted before it was taken", path=str(path)
        ) from None
    if not _same_file(candidate, st):
        raise FileChangedError(
            f"{path} changed since it was seen settled; it will be taken once it stops changing",
            path=str(path),
        )
    return st


def _copy_then_unlink(candidate: Candidate, before: os.stat_result, target: Path) -> None:
    source = candidate.path
    try:
        # O_NOFOLLOW: refuse a symlink swapped in since the check; O_NONBLOCK: never hang on a FIFO.
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            raise FileChangedError(
                f"{source} was replaced while it was being taken", path=str(source)
            ) from exc
        raise
    with open(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not _still_the_file(candidate, before, st):
            raise FileChangedError(f"{source} was replaced while it was being taken", path=str(source))
        tmp_fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".taking-", suffix=".tmp")
        try:
            with open(tmp_fd, "wb") as dst:
                while chunk := src.read(_HASH_CHUNK):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if not _same_file(candidate, os.fstat(src.fileno())):
                raise FileChangedError(
                    f"{source} changed while it was being copied; it will be taken once it stops changing",
                    path=str(source),
                )
            os.utime(tmp_name, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
    _fsync_dir(target.parent)  # the copy must be durable before the original goes
    # Unlink the dropped file only if it is still the one we copied (not a newer drop of that name).
    try:
        if _still_the_file(candidate, before, os.lstat(source)):
            os.unlink(source)
        else:
            log.warning("%s was replaced after it was copied; the new file stays in the inbox", source)
    except FileNotFoundError:
        pass
    except OSError:
        # We cannot remove it, so it would be taken again and again: undo the take (our copy is ours to
        # delete) and let the caller report why.
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable. Some network file systems refuse to fsync a folder: that is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_name(name: str) -> str:
    """A file name that cannot leave its folder, hide, or break a terminal: no separators, no "..",
    no control or invisible format characters, no leading dot, at most 200 bytes of UTF-8."""
    cleaned = "".join(
        "_" if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") else ch
        for ch in name
    )
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    # Leading dots hide the file; trailing dots and spaces are invalid on Windows shares.
    cleaned = cleaned.strip(" ").lstrip(".").rstrip(". ")
    if not cleaned:
        return "unnamed"
    if len(cleaned.encode("utf-8")) <= MAX_NAME_BYTES:
        return cleaned
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot or not stem or len(suffix.encode("utf-8")) > 16:
        stem, suffix = cleaned, ""
    else:
        suffix = "." + suffix
    budget = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    return _truncate_utf8(stem, budget).rstrip(". ") + suffix


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")  # drops a character cut in half


def _free_name(folder: Path, name: str, extra_suffixes: Sequence[str] = ()) -> Path:
    """``folder/name``, or ``folder/<stem>-N<suffix>`` for the first N not taken (nor with any of
    ``extra_suffixes`` appended). The folders this is used on are private to the importer (0700), so
    nobody else can take the name between this check and the rename."""
    candidate = folder / name
    path = Path(name)
    stem, suffix = path.stem, path.suffix
    n = 0
    while any(os.path.lexists(f"{candidate}{extra}") for extra in ("", *extra_suffixes)):
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def _move(path: Path, target: Path) -> Path:
    """Rename, falling back to copy + fsync + unlink when the state folders span file systems."""
    try:
        os.rename(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        st = os.lstat(path)
        candidate = Candidate(path, PurePosixPath(path.name), st.st_size, st.st_mtime_ns)
        _copy_then_unlink(candidate, st, target)
    else:
        _fsync_dir(target.parent)
    return target


# --- filing away -----------------------------------------------------------------------------------


def archive_file(path: Path, archive_root: Path, when: datetime, name: str | None = None) -> Path:
    """Move a finished file into ``archive_root/YYYY/MM/DD/`` (the day ``when`` falls on), under
    ``name`` (the name it was dropped with) when given."""
    folder = archive_root / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}"
    ensure_private_dirs(folder)
    return _move(path, _free_name(folder, safe_name(name or path.name)))


def fail_file(
    path: Path, failed_dir: Path, reason: str, when: datetime | None = None, name: str | None = None
) -> Path:
    """Move a refused file into ``failed_dir`` (under ``name``, the name it was dropped with, when
    given) and write ``<name>.error.txt`` next to it saying why."""
    ensure_private_dirs(failed_dir)
    target = _free_name(failed_dir, safe_name(name or path.name), extra_suffixes=(".error.txt",))
    _move(path, target)
    when = when or datetime.now().astimezone()
    note = (
        f"The importer refused the file {name or path.name!r} as a whole on {when:%Y-%m-%d %H:%M:%S %Z}.\n"
        f"\n"
        f"What was wrong:\n"
        f"{reason.strip()}\n"
        f"\n"
        f"What to do: correct the file (or the mapping) and drop it into the inbox again.\n"
        f"The importer does not retry files in this folder by itself; the file next to this note\n"
        f"({target.name}) is the file exactly as it was dropped.\n"
    )
    write_atomically(failed_dir / f"{target.name}.error.txt", lambda out: out.write(note.encode("utf-8")))
    return target


def write_report(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    """Stream rows into a CSV report that is safe to open in Excel: UTF-8 with a BOM (so Excel
    guesses the encoding right), formula-like cells defused with a leading apostrophe, 0600,
    written to a temporary name and renamed into place."""
    ensure_private_dirs(path.parent)

    def write(out: BinaryIO) -> None:
        text = codecs.getwriter("utf-8")(out)
        text.write("\ufeff")
        writer = csv.writer(text, lineterminator="\r\n")
        writer.writerow([excel_safe(column) for column in columns])
        writer.writerows(_report_lines(columns, rows))

    write_atomically(path, write)
    return path


def _report_lines(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Iterator[list[str]]:
    for row in rows:
        yield list(map(excel_safe, map(row.get, columns)))


def excel_safe(value: object) -> str:
    """A cell's text that a spreadsheet will show, not run: None is empty, and text that starts
    like a formula (= + - @ tab CR, or = + - @ after spaces) gets a leading apostrophe."""
    cell = "" if value is None else value if type(value) is str else str(value)
    if not cell:
        return cell
    first = cell[0]
    # Only a cell that starts with a formula character or with white space can look like one
    # (a report writes 100,000s of cells: the usual one is decided by its first character).
    if first in _FORMULA_FIRST or (first.isspace() and cell.strip().startswith(_FORMULA_PREFIXES[:4])):
        return "'" + cell
    return cell


def write_atomically(path: Path, write: Callable[[BinaryIO], object], *, mode: int | None = None) -> None:
    """Write ``path`` under a hidden temporary name in its folder (0600, or ``mode``), fsync,
    rename over ``path``, fsync the folder: a reader sees the old file or the whole new one."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:50]}.", suffix=".tmp")  # 0600
    try:
        with open(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def ensure_private_dirs(*dirs: Path) -> None:
    """``mkdir -p`` where every folder created is 0700 (whatever the umask). Folders that already
    exist are left as they are: the inbox, for one, is the operator's to set up."""
    for folder in dirs:
        ensure_dirs(folder, 0o700)


def ensure_dirs(folder: Path, mode: int, *, keep_setgid: bool = False) -> None:
    """``mkdir -p`` where every folder created gets ``mode`` whatever the umask (a service's
    umask, 0077, would take the group's bits); folders that exist are left as they are.
    ``keep_setgid``: a setgid bit that Linux passed on from the parent stays, so the parent's
    group still owns what is inside."""
    missing: list[Path] = []
    current = Path(folder)
    while not current.is_dir():
        if os.path.lexists(current):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(current))
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # made by someone else meanwhile: not ours to chmod
        setgid = os.stat(path).st_mode & stat.S_ISGID if keep_setgid else 0
        os.chmod(path, mode | setgid)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB chunks (files can be large)."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
