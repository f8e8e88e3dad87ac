"""Client settings: a plain value the client trusts; built by hand, they are checked by the same
rules as a config file's [instance] (every problem at once, secrets never in repr or messages)."""

from __future__ import annotations

import pytest

from importer.config import check_client_settings
from importer.errors import ConfigError
from importer.servicenow import ClientSettings

SECRETS = {"password": "pw-secret", "client_secret": "client-secret"}


def test_secrets_not_in_repr() -> None:
    settings = check_client_settings(
        {"url": "https://acme.service-now.com", "auth": "oauth", "username": "svc.import", "client_id": "cid"}
        | SECRETS
    )
    assert isinstance(settings, ClientSettings)
    assert settings.password == "pw-secret"
    assert "pw-secret" not in repr(settings)
    assert "client-secret" not in repr(settings)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        check_client_settings(
            {"url": "https://acme.service-now.com", "auth": "oauth", "timeout_s": 0, "retry_attempts": 0}
        )
    assert caught.value.problems == [
        "client settings: instance.timeout_s: must be greater than 0, got 0",
        "client settings: instance.retry_attempts: must be at least 1, got 0",
        'client settings: instance.username: required with auth = "oauth" with grant = "password"',
        'client settings: instance.password: required with auth = "oauth" with grant = "password"; '
        "set IMPORTER_INSTANCE__PASSWORD, instance.password_file, or a systemd credential "
        "servicenow-password",
        'client settings: instance.client_id: required with auth = "oauth"',
        'client settings: instance.client_secret: required with auth = "oauth"; '
        "set IMPORTER_INSTANCE__CLIENT_SECRET, instance.client_secret_file, or a systemd credential "
        "servicenow-client-secret",
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("acme.service-now.com", 'must be "sandbox" or an address like https://acme.service-now.com'),
        ("https://", 'must be "sandbox" or an address like https://acme.service-now.com'),
        ("https://acme.service-now.com/?sysparm_x=1", "must be the instance's root, without a query"),
    ],
)
def test_a_url_that_is_not_an_instance_root_is_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_client_settings({"url": url, "username": "u", "password": "p"})
    assert caught.value.problems[0].startswith(f"client settings: instance.url: {problem}")


def test_credentials_in_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        check_client_settings(
            {"url": "https://svc:hunter2@acme.service-now.com", "username": "svc", "password": "x"}
        )
    assert caught.value.problems == [
        "client settings: instance.url: must not contain credentials; set username and password instead"
    ]
    assert "hunter2" not in str(caught.value)


def test_client_credentials_needs_no_user() -> None:
    settings = check_client_settings(
        {
            "url": "https://acme.service-now.com",
            "auth": "oauth",
            "grant": "client_credentials",
            "client_id": "c",
            "client_secret": "s",
        }
    )
    assert (settings.username, settings.password, settings.client_secret) == (None, None, "s")


def test_trailing_slash() -> None:
    settings = check_client_settings(
        {"url": "https://acme.service-now.com/", "username": "u", "password": "p"}
    )
    assert settings.base_url == "https://acme.service-now.com"
