"""Shared fixtures: a real sandbox instance on a loopback port, and a guard against leaked threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from importer.sandbox import SandboxServer
from tests.waiting import WaitTimeout, wait_until

THREAD_GRACE_S = 2.0

# `ledger_url`: every ledger test runs on SQLite and on PostgreSQL.
pytest_plugins = ["tests.db_fixtures"]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (after a short grace period for them to end)."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_until(lambda: not leaked(), THREAD_GRACE_S, "the test's threads to end")
    except WaitTimeout:
        if still := leaked():
            pytest.fail(f"test leaked threads: {', '.join(t.name for t in still)}")


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A started sandbox with the default data set, stopped after the test."""
    with SandboxServer() as server:
        yield server


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Factory: make_sandbox(data=dict | path | None, **kwargs) -> a started sandbox, stopped at teardown."""
    servers: list[SandboxServer] = []

    def make(data: dict[str, Any] | str | Path | None = None, **kwargs: Any) -> SandboxServer:
        server = SandboxServer(data, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
