"""Clients pointed at the embedded sandbox (fixtures ``sandbox`` / ``make_sandbox`` come from
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from importer.config import check_client_settings
from importer.servicenow import InstanceClient

# Small backoffs keep the fault tests fast; the policy is the same as in production.
FAST_RETRIES: dict[str, Any] = {"retry_attempts": 8, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.5}


MakeClient = Callable[..., InstanceClient]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """make_client(server, **settings) -> a client with the import user's Basic credentials
    unless told otherwise, its settings checked as a config file's [instance]; closed at the
    end of the test."""
    from importer.sandbox import defaults

    clients: list[InstanceClient] = []

    def build(
        server: Any, *, on_retry: Any = None, stop_event: Any = None, **overrides: Any
    ) -> InstanceClient:
        values: dict[str, Any] = {
            "url": server.url,
            "username": defaults.IMPORT_USER,
            "password": defaults.IMPORT_PASSWORD,
            "timeout_s": 10,
            **FAST_RETRIES,
        }
        values.update(overrides)
        client = InstanceClient(check_client_settings(values), on_retry=on_retry, stop_event=stop_event)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()
