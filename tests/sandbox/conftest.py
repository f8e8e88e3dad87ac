"""Helpers for driving the sandbox over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests

from importer.sandbox import SandboxServer
from importer.sandbox import defaults as d

PASSWORDS = {
    d.ADMIN_USER: d.ADMIN_PASSWORD,
    d.IMPORT_USER: d.IMPORT_PASSWORD,
    d.NO_ROLES_USER: d.NO_ROLES_PASSWORD,
    d.ITIL_USER: d.ITIL_PASSWORD,
    d.NO_APP_SERVICE_USER: d.NO_APP_SERVICE_PASSWORD,
}


@pytest.fixture
def api() -> Iterator[Callable[..., requests.Session]]:
    """api(server, user="svc.import") -> a requests.Session with Basic auth for that user."""
    sessions: list[requests.Session] = []

    def make(
        server: SandboxServer, user: str = d.IMPORT_USER, password: str | None = None
    ) -> requests.Session:
        session = requests.Session()
        session.auth = (user, password if password is not None else PASSWORDS[user])
        session.headers["Accept"] = "application/json"
        session.base_url = server.url  # type: ignore[attr-defined]
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
