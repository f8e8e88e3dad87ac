"""Waiting in tests: on a condition, never a fixed sleep (a helper module, not a test module).

``wait_until(predicate, timeout, what)`` polls until ``predicate()`` is truthy and returns its
value; at the deadline it fails saying what it waited for. The probes below are conditions that
more than one test waits on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.02


class WaitTimeout(AssertionError):
    """The condition did not come true before the deadline."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = POLL_INTERVAL_S,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise
    ``WaitTimeout`` ("timed out after 5s waiting for <what>") at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def accepts_connections(host: str, port: int) -> bool:
    """True when something listens on host:port (a refused connection: False)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def processes_with_open(path: Path) -> set[int]:
    """Ids of the processes that have ``path`` open (read from /proc; Linux)."""
    target = str(path.resolve())
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    found.add(int(entry.name))
                    break
            except OSError:
                continue
    return found
