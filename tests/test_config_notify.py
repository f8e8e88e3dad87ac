"""The `[notify]` and `[paths] outbox` keys of importer.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from importer.config import load_config
from importer.errors import ConfigError

SECRET = "smtp-s3cret-value"


def test_the_outbox_is_beside_the_inbox_by_default_and_can_be_turned_off() -> None:
    assert load_config(env={}).paths.outbox_dir == Path("outbox")
    assert load_config(env={"IMPORTER_PATHS__OUTBOX": ""}).paths.outbox_dir is None
    assert (
        load_config(env={"IMPORTER_PATHS__OUTBOX": "~/answers"}).paths.outbox_dir == Path.home() / "answers"
    )


def test_notify_reads_addresses_and_the_smtp_password_like_the_instances(tmp_path: Path) -> None:
    config_file = tmp_path / "importer.toml"
    config_file.write_text(
        '[notify]\nsmtp_host = "mail.example.com"\nsmtp_user = "importer"\n'
        '[notify.mappings.hr_users]\nto = ["people@example.com"]\n'
        "[notify.mappings.departments]\nenabled = false\n"
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "smtp-password").write_text(SECRET + "\n")
    config = load_config(
        config_file,
        env={
            "CREDENTIALS_DIRECTORY": str(credentials),
            "IMPORTER_NOTIFY__TO": "hr@example.com, it@example.com",
        },
    )
    notify = config.notify
    assert notify.to == ["hr@example.com", "it@example.com"]
    assert notify.port == 587 and notify.enabled
    assert notify.smtp_password_value() == SECRET
    assert notify.mappings["hr_users"].to == ["people@example.com"]
    assert not notify.mappings["departments"].enabled
    assert SECRET not in repr(config)


def test_notify_problems_are_reported_at_once_without_the_secret(tmp_path: Path) -> None:
    config_file = tmp_path / "importer.toml"
    config_file.write_text(
        '[notify]\nto = ["not an address"]\nsmtp_user = "importer"\nsmtp_security = "ssl"\n'
        'webhook_url = "ftp://hooks.example.com/T0K3N"\n'
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file, env={})
    problems = excinfo.value.problems
    text = "\n".join(problems)
    assert any("notify.smtp_security" in p for p in problems), text
    assert any("notify.smtp_host: required" in p for p in problems), text
    assert any("notify.smtp_password: required with smtp_user" in p for p in problems), text
    assert any("'not an address' is not an e-mail address" in p for p in problems), text
    assert any("notify.webhook_url: must start with https://" in p for p in problems), text
    assert "T0K3N" not in text
