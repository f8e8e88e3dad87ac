"""ClientSettings: every problem at once, secrets never in repr or messages."""

from __future__ import annotations

import pytest

from importer.errors import ConfigError
from importer.servicenow import ClientSettings


def test_secrets_not_in_repr() -> None:
    settings = ClientSettings(
        url="https://acme.service-now.com",
        auth="oauth",
        username="svc.import",
        password="pw-secret",
        client_id="cid",
        client_secret="client-secret",
    )
    assert "pw-secret" not in repr(settings)
    assert "client-secret" not in repr(settings)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        ClientSettings(url="acme.service-now.com", auth="oauth", timeout_s=0, retry_attempts=0)
    text = str(caught.value)
    for key in ("url", "username", "password", "client_id", "client_secret", "timeout_s", "retry_attempts"):
        assert f"[instance] {key}:" in text


def test_credentials_in_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        ClientSettings(url="https://svc:hunter2@acme.service-now.com", username="svc", password="x")
    assert "hunter2" not in str(caught.value)


def test_client_credentials_needs_no_user() -> None:
    ClientSettings(
        url="https://acme.service-now.com",
        auth="oauth",
        grant="client_credentials",
        client_id="c",
        client_secret="s",
    )


def test_trailing_slash() -> None:
    assert ClientSettings(url="https://acme.service-now.com/", username="u", password="p").base_url == (
        "https://acme.service-now.com"
    )
