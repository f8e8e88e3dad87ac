"""The command line as a user meets it: real processes, exit codes, messages."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from importer.sandbox.defaults import IMPORT_PASSWORD, IMPORT_USER
from tests.commands import run_importer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_importer(*args, cwd=cwd, env=env)


def quick_start_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_the_quick_start_has_two_commands_and_the_demo_shows_every_row_state(tmp_path: Path) -> None:
    blocks = quick_start_blocks()
    assert len(blocks) == 2
    demo, tests = blocks
    assert demo.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert (REPO / ".ci" / "run").read_text().count(tests) == 1  # CI runs the test command verbatim
    # The demo after its install step, from a fresh folder holding what the repository ships.
    for name in ("samples", "mappings"):
        shutil.copytree(REPO / name, tmp_path / name)
    commands = demo.split("&&", 2)[2].replace(".venv/bin/importer", str(BIN / "importer"))
    done = subprocess.run(
        commands,
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")},
    )
    assert done.returncode == 0, done.stderr  # the last command, the report, succeeds
    out = done.stdout
    for state in ("inserted", "updated", "ignored", "skipped", "error", "invalid"):
        assert f",{state}," in out, state
    assert "row 7: error: Reference value 'Marketing' not found" in out
    assert (tmp_path / "var" / "ledger.db").exists()
    assert "2-hr_users.csv.report.html" in out  # it ends pointing at the page people read
    assert (tmp_path / "outbox" / "2-hr_users.csv.report.html").is_file()


def test_config_errors_are_reported_all_at_once_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "importer.toml").write_text(
        '[instance]\ntimeout_s = 0\nurll = "x"\n[daemon]\npoll_s = "often"\n'
    )
    result = run("status", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("instance.timeout_s" in line for line in lines)
    assert any("urll" in line and "url" in line for line in lines)
    assert any("daemon.poll_s" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_an_environment_override_with_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    result = run("status", cwd=tmp_path, env={"IMPORTER_DAEMON__SETTLE_S": "-1"})
    assert result.returncode == 2
    assert "IMPORTER_DAEMON__SETTLE_S" in result.stderr


def test_a_broken_mapping_is_exit_2_naming_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "bad.yaml").write_text(
        'staging_table: u_x\nbatchrows: 10\ncolumns: {"A": {to: "A", patern: "x"}}\n'
    )
    result = run("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "batchrows" in result.stderr and "batch_rows" in result.stderr
    assert "patern" in result.stderr


def test_report_of_an_unknown_file_is_exit_2_and_says_what_to_do(tmp_path: Path) -> None:
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    result = run("report", "99", cwd=tmp_path)
    assert result.returncode == 2
    assert "importer status" in result.stderr


def test_importer_sandbox_serves_people_until_stopped(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "importer", "sandbox", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert url and IMPORT_USER in banner and IMPORT_PASSWORD in banner  # demo credentials, on purpose
        answer = requests.get(
            f"{url.group(0)}/api/now/table/sys_user",
            auth=(IMPORT_USER, IMPORT_PASSWORD),
            params={"sysparm_query": "employee_number=000042"},
            headers={"Accept": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json()["result"][0]["first_name"] == "Ada"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
