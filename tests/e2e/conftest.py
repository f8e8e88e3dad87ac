"""A workspace per test: a config pointing at a real sandbox over HTTP, real folders, a real
ledger (SQLite and PostgreSQL), and the CLI run in-process exactly as a user runs it."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from importer.cli import cli
from importer.sandbox import SandboxServer
from importer.sandbox.defaults import IMPORT_PASSWORD, IMPORT_USER
from tests.instance import Host

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace(Host):
    instance: dict[str, Any] = field(default_factory=dict)

    def write_config(self, **instance: Any) -> None:
        settings: dict[str, Any] = {
            "url": self.server.url,
            "username": IMPORT_USER,
            "password": IMPORT_PASSWORD,
            "retry_backoff_s": 0.05,
            "retry_backoff_max_s": 0.5,
            "timeout_s": 10,
        }
        settings.update(self.instance)
        settings.update(instance)
        lines = ["[instance]"]
        for key, value in settings.items():
            if value is None:
                continue
            lines.append(
                f"{key} = {value!r}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}"
            )
        lines += [
            "[paths]",
            f"inbox = {str(self.inbox)!r}",
            f"mappings = {str(self.mappings)!r}",
            f"state = {str(self.state)!r}",
            f"ledger = {self.ledger_url!r}",
            f"outbox = {str(self.outbox)!r}",
            "[daemon]",
            "poll_s = 0.2",
            "settle_s = 0.3",
            "rescan_s = 1",
        ]
        self.config_path.write_text("\n".join(lines).replace("'", '"') + "\n")

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / "drops" / name
        path.parent.mkdir(exist_ok=True)
        if isinstance(content, str):
            content = textwrap.dedent(content).lstrip("\n").encode()
        path.write_bytes(content)
        return path

    def cli(self, *args: str) -> Result:
        runner = CliRunner()
        result = runner.invoke(cli, ["--config", str(self.config_path), *args], catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    def user(self, employee_number: str) -> dict[str, Any]:
        found = self.table("sys_user", f"employee_number={employee_number}")
        assert len(found) == 1, f"expected one sys_user {employee_number}, found {len(found)}"
        return found[0]


@pytest.fixture
def workspace(tmp_path: Path, ledger_url: str) -> Iterator[Workspace]:
    with SandboxServer() as server:
        ws = Workspace(tmp_path, server, ledger_url)
        shutil.copytree(REPO / "mappings", ws.mappings)
        ws.inbox.mkdir()
        ws.write_config()
        yield ws
