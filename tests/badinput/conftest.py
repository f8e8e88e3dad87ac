"""The daemon as a real subprocess held to what a poison file may cost: an address-space limit
(RLIMIT_AS, via prlimit) and no file-permission override even as root (setpriv drops
CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so a mode-000 file is as unreadable to it as to a service
user). Each test checks that nothing outside the host's folders was touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from importer.sandbox import SandboxServer
from tests.daemon.conftest import REPO, DaemonHost
from tests.e2e.conftest import workspace  # noqa: F401 - the in-process CLI workspace, for these tests too

MEMORY_LIMIT = 1024 * 1024 * 1024  # what any single input may drive the daemon to, at most
SOAK = os.environ.get("IMPORTER_SOAK") == "1"


def _guard() -> list[str]:
    wrapper = []
    if shutil.which("prlimit"):
        wrapper += ["prlimit", f"--as={MEMORY_LIMIT}", "--"]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        wrapper += ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return wrapper


def tree_digest(root: Path, skip: set[Path]) -> dict[str, str]:
    """Every path under ``root`` (not under ``skip``) with its content hash or link target."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            path = here / name
            if path in skip:
                continue
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            else:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass
class GuardedHost(DaemonHost):
    @property
    def outside(self) -> Path:
        """Files the daemon has no business with; links in the inbox point here."""
        return self.root / "outside"

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        assert self.process is None or self.process.poll() is not None, "daemon already running"
        self.runs += 1
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*_guard(), sys.executable, "-m", "importer", "--config", str(self.config_path), "run", *args],
            cwd=self.root,
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self.process

    def status(self) -> list[dict[str, Any]]:
        result = self.cli("status", "--json", "--limit", "100000")  # the soak drops hundreds of files
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def untouched(self) -> dict[str, str]:
        skip = {self.inbox, self.state, self.outbox, *self.root.glob("daemon-*.log")}
        return tree_digest(self.root, skip)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def make_guarded(tmp_path: Path) -> Iterator[Callable[..., GuardedHost]]:
    """A host with a SQLite ledger: the ledger is not what these tests are about (tests/test_ledger.py
    runs the attempt count on PostgreSQL too), and each daemon start costs seconds."""
    ledger_url = f"sqlite:///{tmp_path}/var/ledger.db"  # inside the state folder, as by default
    hosts: list[GuardedHost] = []
    servers: list[SandboxServer] = []

    def build(data: Any = None, **daemon: Any) -> GuardedHost:
        server = SandboxServer(data=data)
        server.start()
        servers.append(server)
        host = GuardedHost(tmp_path, server, ledger_url, daemon)
        shutil.copytree(REPO / "mappings", tmp_path / "mappings")
        host.inbox.mkdir()
        host.outside.mkdir()
        (host.outside / "secret.csv").write_text("Emp ID,First\n999999,Secret\n")
        host.write_config()
        hosts.append(host)
        return host

    yield build
    for host in hosts:
        host.stop()
    for server in servers:
        server.stop()
