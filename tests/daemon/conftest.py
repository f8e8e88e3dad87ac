"""The daemon as a real subprocess (`python -m importer run`) against a sandbox in this process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from importer.sandbox import SandboxServer
from importer.sandbox.defaults import IMPORT_PASSWORD, IMPORT_USER
from tests.instance import Host
from tests.waiting import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DaemonHost(Host):
    daemon: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.root / f"daemon-{self.runs}.log"

    def write_config(self, **daemon: Any) -> None:
        settings = {"settle_s": 0.5, "poll_s": 0.3, "rescan_s": 1, "watch": True, "max_concurrent_files": 2}
        settings.update(self.daemon)
        settings.update(daemon)
        lines = [
            "[instance]",
            f'url = "{self.server.url}"',
            f'username = "{IMPORT_USER}"',
            "retry_backoff_s = 0.05",
            "retry_backoff_max_s = 0.5",
            "timeout_s = 10",
            "[paths]",
            f'inbox = "{self.inbox}"',
            f'mappings = "{self.root / "mappings"}"',
            f'state = "{self.state}"',
            f'ledger = "{self.ledger_url}"',
            f'outbox = "{self.outbox}"',
            "[daemon]",
        ]
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPORTER_", "NOTIFY_", "WATCHDOG_"))}
        env["IMPORTER_INSTANCE__PASSWORD"] = IMPORT_PASSWORD
        env.update(extra)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        assert self.process is None or self.process.poll() is not None, "daemon already running"
        self.runs += 1
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "importer", "--config", str(self.config_path), "run", *args],
            cwd=self.root,
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self.process

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("daemon-*.log")))

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"daemon did not exit within {timeout}s; log:\n{self.logs()}") from None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "importer", "--config", str(self.config_path), *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self) -> list[dict[str, Any]]:
        result = self.cli("status", "--json", "--limit", "100")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def report(self, file_id: int) -> list[dict[str, Any]]:
        result = self.cli("report", str(file_id), "--format", "json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def wait_final(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        final = {"done", "done_with_errors", "rejected", "duplicate"}

        def all_final() -> list[dict[str, Any]] | None:
            files = self.status()
            return files if len(files) >= count and all(f["state"] in final for f in files) else None

        try:
            return list(wait_until(all_final, timeout, f"{count} files to finish"))
        except WaitTimeout as exc:
            raise AssertionError(
                f"files did not finish ({exc}): {self.status()}\nlog:\n{self.logs()}"
            ) from None

    def metrics_url(self) -> str:
        """The running daemon's metrics endpoint (configure ``metrics_port=0``: any free port)."""
        found = wait_until(
            lambda: re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", self.log_path.read_text()),
            30,
            "the daemon to serve its metrics",
        )
        return found[1]

    def inbox_scans(self) -> int:
        """How many times the running daemon has looked at its inbox (its metrics say)."""
        text = requests.get(self.metrics_url(), timeout=5).text
        found = re.search(r"^importer_inbox_scans_total (\S+)$", text, re.MULTILINE)
        assert found, text
        return int(float(found[1]))

    def wait_scans(self, more: int, timeout: float = 30) -> None:
        """Until the daemon has looked at its inbox ``more`` more times: for "nothing else happens"."""
        target = self.inbox_scans() + more
        wait_until(lambda: self.inbox_scans() >= target, timeout, f"{more} more scans of the inbox")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def make_host(tmp_path: Path, ledger_url: str) -> Iterator[Callable[..., DaemonHost]]:
    hosts: list[DaemonHost] = []
    servers: list[SandboxServer] = []

    def build(data: Any = None, **daemon: Any) -> DaemonHost:
        server = SandboxServer(data=data)
        server.start()
        servers.append(server)
        host = DaemonHost(tmp_path, server, ledger_url, daemon)
        shutil.copytree(REPO / "mappings", tmp_path / "mappings")
        host.inbox.mkdir()
        host.write_config()
        hosts.append(host)
        return host

    yield build
    for host in hosts:
        host.stop()
    for server in servers:
        server.stop()


@pytest.fixture
def host(make_host: Callable[..., DaemonHost]) -> DaemonHost:
    return make_host()
