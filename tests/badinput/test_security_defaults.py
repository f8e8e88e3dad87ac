"""Security defaults with a voice: unsafe settings refused or warned about at every start, log
lines that a file name cannot forge, and read-only commands that need no secret."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from importer.config import load_config
from importer.errors import ConfigError
from importer.logs import OneLineFormatter

REMOTE = '[instance]\nurl = "{url}"\nusername = "svc.import"\n'


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "importer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_plain_http_to_another_host_is_refused_unless_allowed(tmp_path: Path) -> None:
    env = {"IMPORTER_INSTANCE__PASSWORD": "pw"}
    path = write(tmp_path, REMOTE.format(url="http://acme.service-now.com"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert "instance.url: http://acme.service-now.com is plain http:// to another host" in str(caught.value)
    assert "use https://, or set allow_insecure_http = true" in str(caught.value)

    allowed = write(
        tmp_path, REMOTE.format(url="http://acme.service-now.com") + "allow_insecure_http = true\n"
    )
    assert any("plain http://" in w for w in load_config(allowed, env=env).warnings)
    for loopback in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        config = load_config(write(tmp_path, REMOTE.format(url=loopback)), env=env)
        assert config.warnings == []


def test_verify_tls_false_is_said_at_every_start(tmp_path: Path) -> None:
    path = write(tmp_path, REMOTE.format(url="https://acme.service-now.com") + "verify_tls = false\n")
    config = load_config(path, env={"IMPORTER_INSTANCE__PASSWORD": "pw"})
    assert [w for w in config.warnings if w.startswith("instance.verify_tls = false")]
    result = subprocess.run(
        [sys.executable, "-m", "importer", "--config", str(path), "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert "warning: instance.verify_tls = false" in result.stderr, result.stderr


def test_a_readable_file_holding_a_secret_is_named_with_the_chmod_that_fixes_it(tmp_path: Path) -> None:
    text = REMOTE.format(url="https://acme.service-now.com") + 'password = "s3cret"\n'
    [warning] = load_config(write(tmp_path, text, mode=0o644), env={}).warnings
    assert f"{tmp_path / 'importer.toml'} holds a secret and group and others may read it" in warning
    assert f"chmod 600 {tmp_path / 'importer.toml'}" in warning
    assert "s3cret" not in warning
    assert load_config(write(tmp_path, text, mode=0o600), env={}).warnings == []

    secret = write(tmp_path, "s3cret\n", mode=0o640, name="password")
    no_secret = REMOTE.format(url="https://acme.service-now.com") + f'password_file = "{secret}"\n'
    [warning] = load_config(write(tmp_path, no_secret, mode=0o644), env={}).warnings
    assert f"{secret} holds a secret and group may read it" in warning


def test_commands_that_only_read_the_ledger_need_no_secret(tmp_path: Path) -> None:
    (tmp_path / "mappings").mkdir()
    path = write(
        tmp_path,
        REMOTE.format(url="https://acme.service-now.com")
        + f'[paths]\nstate = "{tmp_path / "var"}"\nmappings = "{tmp_path / "mappings"}"\n',
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "importer", "--config", str(path), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )

    assert run("status").returncode == 0, run("status").stderr
    assert run("check").returncode == 0
    report = run("report", "1")
    assert report.returncode == 2 and "no file 1 in the ledger" in report.stderr
    remote = run("check", "--remote")
    assert remote.returncode == 2 and "instance.password: required" in remote.stderr


def test_a_file_name_cannot_forge_a_log_line() -> None:
    record = logging.LogRecord(
        "importer.daemon",
        logging.INFO,
        __file__,
        1,
        "file=%s name=%s taken",
        (7, "a\nb FORGED\x1b[2J.csv"),
        None,
    )
    line = OneLineFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO file=7 name=a\\nb FORGED\\x1b[2J.csv taken"
