"""Reading a dropped file where it can be abandoned: a child process with its own memory limit.

The file is read and translated through its mapping (readers + mapping.translate_row) in a
child process forked from a clean server process (multiprocessing ``forkserver``: no threads,
no open ledger or sockets inherited). Rows come back over a pipe, a few hundred at a time, and
the pipe's buffer is the backpressure: the child is never more than a few batches ahead.

What this buys, whatever a file holds:
- memory: the child runs under ``RLIMIT_AS`` (``[limits] reader_memory_mb``); a file that needs
  more is refused, and the daemon's own memory never grows with a file's content;
- time: the parent waits for rows with a timeout, so a stop (SIGTERM), the watchdog and the
  scheduler never wait behind one file's CPU work; a child that sends nothing for
  ``read_stall_s`` is killed and the file refused, and a stop kills it at once;
- crashes: a reader that dies (a segfault in a C parser, the kernel's OOM killer) refuses that
  file; the daemon goes on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from importer.errors import InputFileError, TransientError
from importer.mapping import Mapping, TranslatedRow, check_headers, translate_row
from importer.readers import open_source
from importer.readers.options import ReadLimits

log = logging.getLogger("importer.isolated")

ROWS_PER_MESSAGE = 256
_WAIT_STEP_S = 0.2

_context_lock = threading.Lock()
_context: Any = None


class ReadingInterrupted(TransientError):
    """A stop was asked while the file was being read; it is read again when the daemon resumes."""


def rows_in_process(path: Path, mapping: Mapping, limits: ReadLimits) -> Iterator[TranslatedRow]:
    """Every row of a file through its mapping, headers checked first, in this process."""
    with open_source(path, csv=mapping.csv, excel=mapping.excel, json=mapping.json, limits=limits) as source:
        if source.headers is not None:
            check_headers(mapping, source.headers)
        for row in source:
            yield translate_row(mapping, row, pattern_timeout_s=limits.pattern_timeout_s)


def _mp_context() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            # The CSV reader too (the common case; it is small): each child starts with it loaded.
            # Excel and JSON readers pull in openpyxl and ijson: a child imports them when it needs them.
            context.set_forkserver_preload(["importer.isolated", "importer.readers.csv"])
            _context = context
        return _context


def start_reading_server() -> None:
    """Start the clean server process that reading processes are forked from, now.

    Its start (a new interpreter importing the readers, a few hundred ms) then overlaps the
    ledger's and the instance's set-up instead of delaying a command's first batch. Only the
    process is spawned here (no wait, no thread); the first ``isolated_rows`` uses it."""
    from multiprocessing import forkserver

    _mp_context()
    forkserver.ensure_running()


def _limit_memory(megabytes: int) -> None:
    import resource

    wanted = megabytes * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _child(conn: Connection, path: str, mapping: Mapping, limits: ReadLimits) -> None:
    """The child's whole life: read, send rows, then ("end",) or why it could not."""
    try:
        import signal

        # A stop is the parent's to decide (it kills this process); systemd and a terminal send
        # SIGTERM/SIGINT to the whole group, which must not look like a reader crash.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _limit_memory(limits.reader_memory_mb)
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter without setrlimit/prlimit64
            conn.send(("unlimited", str(exc)))
        chunk: list[tuple[int, dict[str, str] | None, str | None]] = []
        for row in rows_in_process(Path(path), mapping, limits):
            chunk.append((row.number, row.record, row.problem))
            if len(chunk) >= ROWS_PER_MESSAGE:
                conn.send(("rows", chunk))
                chunk = []
        if chunk:
            conn.send(("rows", chunk))
        conn.send(("end",))
    except InputFileError as exc:
        conn.send(("refused", exc.message, {k: str(v) for k, v in exc.context.items()}))
    except MemoryError:
        chunk = []
        conn.send(("memory",))
    except RecursionError:
        conn.send(("crashed", "RecursionError: nested too deeply"))
    except Exception as exc:  # a reader's bug met on this content: the parent refuses the file
        text = str(exc).strip().splitlines()
        conn.send(("crashed", f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__))
    finally:
        conn.close()


def isolated_rows(
    path: Path,
    mapping: Mapping,
    limits: ReadLimits,
    stop_event: threading.Event | None = None,
) -> Iterator[TranslatedRow]:
    """``rows_in_process``, run in a child process (see the module docstring)."""
    context = _mp_context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(sender, str(path), mapping, limits), name="importer-reader", daemon=True
    )
    child.start()
    sender.close()  # the child holds the only writing end: its death closes the pipe
    try:
        while True:
            message = _next_message(receiver, child, path, limits, stop_event)
            kind = message[0]
            if kind == "unlimited":
                _warn_unlimited(message[1])
                continue
            if kind == "rows":
                for number, record, problem in message[1]:
                    yield TranslatedRow(number, record, problem)
            elif kind == "end":
                return
            elif kind == "refused":
                raise InputFileError(message[1], **message[2])
            elif kind == "memory":
                raise InputFileError(
                    f"{path.name}: reading it needs more than {limits.reader_memory_mb} MB of memory "
                    "([limits] reader_memory_mb), so it was not read; split the file, or check it is "
                    "what it should be (a compressed bomb, a runaway nesting)."
                )
            else:
                raise InputFileError(
                    f"{path.name}: the reader failed on this file ({message[1]}); open it, save it "
                    "again and drop it again, and report it if it happens again."
                )
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(5)
        with contextlib.suppress(ValueError):
            child.close()


_warned_unlimited = False


def _warn_unlimited(reason: str) -> None:
    global _warned_unlimited
    if not _warned_unlimited:
        _warned_unlimited = True
        log.warning(
            "the reading process cannot limit its own memory (%s): allow setrlimit and prlimit64 in "
            "the unit's SystemCallFilter= (deploy/importer.service does), or bound the service with "
            "MemoryMax=",
            reason,
        )


def _next_message(
    receiver: Connection,
    child: Any,
    path: Path,
    limits: ReadLimits,
    stop_event: threading.Event | None,
) -> tuple[Any, ...]:
    started = time.monotonic()
    while True:
        if stop_event is not None and stop_event.is_set():
            raise ReadingInterrupted(f"{path.name}: stopped while reading; it is read again on resume")
        try:
            ready = receiver.poll(_WAIT_STEP_S)
        except (EOFError, OSError):
            ready = True
        if ready:
            try:
                return tuple(receiver.recv())
            except (EOFError, OSError):
                child.join(5)
                if stop_event is not None and stop_event.is_set():
                    continue  # raised as ReadingInterrupted above
                return ("crashed", _death(child.exitcode))
        if time.monotonic() - started > limits.read_stall_s:
            child.kill()
            raise InputFileError(
                f"{path.name}: reading it produced no row for {limits.read_stall_s:g} s "
                "([limits] read_stall_s), so it was abandoned; check the file (and the mapping's "
                "patterns), or raise the limit for very slow files."
            )


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the reading process was killed by {name}{hint}"
    return f"the reading process ended with exit code {exitcode}"
