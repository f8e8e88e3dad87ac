"""What a person (or a test) sees at the sandbox instance, and its default data to vary."""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

import importer.sandbox
from importer.sandbox import SandboxServer
from importer.sandbox.defaults import ADMIN_PASSWORD, ADMIN_USER

DEFAULT_DATA = Path(importer.sandbox.__file__).parent / "data" / "default.yaml"


@dataclass
class Host:
    """A folder laid out as importer expects it, beside a sandbox and a ledger."""

    root: Path
    server: SandboxServer
    ledger_url: str

    @property
    def config_path(self) -> Path:
        return self.root / "importer.toml"

    @property
    def mappings(self) -> Path:
        return self.root / "mappings"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def state(self) -> Path:
        return self.root / "var"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def mapping(self, name: str, text: str) -> Path:
        path = self.mappings / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    def table(self, table: str, query: str = "", fields: str = "") -> list[dict[str, Any]]:
        """What a person would see through the Table API (as admin)."""
        return table_rows(self.server.url, table, query, fields)


def table_rows(url: str, table: str, query: str = "", fields: str = "") -> list[dict[str, Any]]:
    """A table's records through the Table API, as admin."""
    params = {"sysparm_query": query, "sysparm_exclude_reference_link": "true"}
    if fields:
        params["sysparm_fields"] = fields
    response = requests.get(
        f"{url}/api/now/table/{table}",
        params=params,
        auth=(ADMIN_USER, ADMIN_PASSWORD),
        headers={"Accept": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json()["result"])


def count_rows(url: str, table: str, query: str = "") -> int:
    """How many records a table holds, through the Aggregate API (as admin)."""
    response = requests.get(
        f"{url}/api/now/stats/{table}",
        params={"sysparm_count": "true", "sysparm_query": query},
        auth=(ADMIN_USER, ADMIN_PASSWORD),
        headers={"Accept": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["result"]["stats"]["count"])


def default_data() -> dict[str, Any]:
    """A fresh copy of the sandbox's default data set, for a test to change."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_DATA.read_text()))


@contextlib.contextmanager
def sandbox_process(data: Path | None = None) -> Iterator[str]:
    """`importer sandbox` in its own process (its work and memory are not the caller's); yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "importer",
            "sandbox",
            "--port",
            str(port),
            *(["--data", str(data)] if data else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert match, banner
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(10)
