"""deploy/: the systemd unit, the example config and the install script."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "importer.service"
INSTALL = DEPLOY / "install.sh"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order. Unlike configparser, keeps repeated keys (systemd adds
    them up: Environment=, ReadWritePaths=, SystemCallFilter=), and joins "\\" continuations."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = _values(unit, section, key)
    assert values, f"[{section}] {key}= is missing from {UNIT.name}"
    return values[-1]  # systemd: the last assignment wins


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/opt/importer/venv/bin/importer run --config /etc/importer/importer.toml"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("WatchdogSec", "60"),
        ("TimeoutStopSec", "30"),
        ("KillSignal", "SIGTERM"),
        ("User", "importer"),
        ("Group", "importer"),
        ("StateDirectory", "importer"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("PrivateDevices", "true"),
        ("NoNewPrivileges", "true"),
        ("ProtectKernelTunables", "true"),
        ("ProtectKernelModules", "true"),
        ("ProtectKernelLogs", "true"),
        ("ProtectControlGroups", "true"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "true"),
        ("LockPersonality", "true"),
        ("MemoryDenyWriteExecute", "true"),
        ("RestrictRealtime", "true"),
        ("RestrictSUIDSGID", "true"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_unit_sets_the_required_service_directive(
    unit: dict[str, list[tuple[str, str]]], key: str, expected: str
) -> None:
    assert _one(unit, "Service", key) == expected


def test_unit_secrets_come_as_credentials_not_environment(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert "servicenow-password:/etc/importer/servicenow-password" in _values(
        unit, "Service", "LoadCredential"
    )
    assert "#LoadCredential=servicenow-client-secret:" in UNIT.read_text(encoding="utf-8")
    for value in _values(unit, "Service", "Environment"):
        assert not re.search(r"PASSWORD|SECRET", value, re.IGNORECASE), value
    assert "IMPORTER_PATHS__STATE=/var/lib/importer" in _values(unit, "Service", "Environment")


def test_unit_may_write_only_the_inbox_and_the_outbox_besides_its_state(
    unit: dict[str, list[tuple[str, str]]],
) -> None:
    assert _values(unit, "Service", "ReadWritePaths") == ["/srv/importer/inbox", "/srv/importer/outbox"]
    assert "/srv/importer/outbox" in _one(unit, "Unit", "RequiresMountsFor").split()


def test_unit_filters_system_calls_and_installs_for_boot(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert "@system-service" in _values(unit, "Service", "SystemCallFilter")
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in _one(unit, "Unit", "After")


def test_unit_paths_agree_with_the_example_config() -> None:
    config = tomllib.loads((DEPLOY / "importer.toml").read_text(encoding="utf-8"))
    unit_text = UNIT.read_text(encoding="utf-8")
    assert f"ReadWritePaths={config['paths']['inbox']}\n" in unit_text
    assert f"ReadWritePaths={config['paths']['outbox']}\n" in unit_text
    assert config["paths"]["state"] == "/var/lib/importer"  # StateDirectory=importer
    assert config["paths"]["ledger"] == "sqlite:////var/lib/importer/ledger.db"


def test_example_config_is_valid_and_holds_no_secret(tmp_path: Path) -> None:
    """The example loads with the project's own config loader, the password arriving the way the
    unit delivers it: a file named servicenow-password under $CREDENTIALS_DIRECTORY."""
    from importer.config import load_config

    text = (DEPLOY / "importer.toml").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(password|client_secret)\s*=", text, re.MULTILINE)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "servicenow-password").write_text("s3cret\n", encoding="utf-8")

    config = load_config(DEPLOY / "importer.toml", env={"CREDENTIALS_DIRECTORY": str(credentials)})

    assert config.instance.password_value() == "s3cret"
    assert str(config.paths.inbox) == "/srv/importer/inbox"
    assert str(config.paths.mappings) == "/etc/importer/mappings"
    assert str(config.paths.state) == "/var/lib/importer"
    assert config.paths.outbox_dir == Path("/srv/importer/outbox")
    assert not config.notify.enabled  # the [notify] example is commented out


# --- systemd-analyze verify ------------------------------------------------------------------------

_KNOWN_GOOD_UNIT = """\
[Unit]
Description=known-good unit, to tell "verify cannot run here" from "our unit is wrong"

[Service]
Type=notify
ExecStart=/bin/true
"""


def _verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    return subprocess.run(
        [analyze, "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); unit not verified")

    control = tmp_path / "control" / "known-good.service"
    control.parent.mkdir()
    control.write_text(_KNOWN_GOOD_UNIT, encoding="utf-8")
    baseline = _verify(control)
    if baseline.returncode != 0 or "known-good.service" in baseline.stdout + baseline.stderr:
        pytest.skip(
            "systemd-analyze verify cannot run here (it rejects even a known-good unit): "
            + (baseline.stderr or baseline.stdout).strip()[:500]
        )

    # verify also checks that ExecStart's program exists and is executable, and
    # /opt/importer/venv/bin/importer only exists on an installed host. So verify a copy whose
    # ExecStart names /bin/true with the same arguments: every other line is checked as written.
    text = UNIT.read_text(encoding="utf-8")
    exec_start = "ExecStart=/opt/importer/venv/bin/importer "
    assert exec_start in text
    copy = tmp_path / "importer.service"
    copy.write_text(text.replace(exec_start, "ExecStart=/bin/true "), encoding="utf-8")

    result = _verify(copy)

    # verify exits 0 on many mistakes (an unknown key, a bad value: "ignoring"), so any line about
    # our unit is a failure too; lines about other units on this host are not ours to judge.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "importer.service" in line]
    assert result.returncode == 0 and not ours, "\n".join(ours) or result.stderr


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is only worth something if a wrong directive makes it fail."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    broken = tmp_path / "broken.service"
    broken.write_text(_KNOWN_GOOD_UNIT + "ProtectSytem=strict\n", encoding="utf-8")
    result = _verify(broken)
    if "broken.service" not in result.stdout + result.stderr and result.returncode == 0:
        pytest.fail(
            "systemd-analyze verify did not report an unknown key; the unit check above proves nothing"
        )


# --- install.sh ------------------------------------------------------------------------------------


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_install_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_script_refuses_to_run_without_root() -> None:
    # Run a copy in a folder anyone may read: the checkout itself may sit in a private folder
    # (/root/x, a 0700 home), where the user we switch to could not even open the script.
    folder = Path(tempfile.mkdtemp(prefix="importer-install-"))
    try:
        folder.chmod(0o755)
        script = folder / "install.sh"
        shutil.copyfile(INSTALL, script)
        script.chmod(0o644)
        _run_install_unprivileged(script)
    finally:
        shutil.rmtree(folder)


def _run_install_unprivileged(script: Path) -> None:
    command = ["bash", str(script)]
    if os.geteuid() == 0:
        # As root the script would really install: run it as nobody instead.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop privileges; the script would really install")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, cwd="/")
    assert result.returncode == 1, result.stderr
    assert "run me as root" in result.stderr


def _script_constants() -> dict[str, str]:
    """The script's ``readonly NAME=value`` lines, with earlier names expanded."""
    constants: dict[str, str] = {}
    for name, value in re.findall(
        r"^readonly (\w+)=(\S+)$", INSTALL.read_text(encoding="utf-8"), re.MULTILINE
    ):
        constants[name] = re.sub(r"\$(\w+)", lambda m: constants[m.group(1)], value)
    return constants


def test_install_script_puts_things_where_the_unit_looks(unit: dict[str, list[tuple[str, str]]]) -> None:
    paths = _script_constants()
    assert _one(unit, "Service", "ExecStart").split()[0] == paths["VENV"] + "/bin/importer"
    assert f"--config {paths['ETC']}/importer.toml" in _one(unit, "Service", "ExecStart")
    assert _values(unit, "Service", "ReadWritePaths") == [paths["INBOX"], paths["OUTBOX"]]
    assert f"servicenow-password:{paths['ETC']}/servicenow-password" in _values(
        unit, "Service", "LoadCredential"
    )
    assert _one(unit, "Service", "User") == paths["SERVICE_USER"]
    assert _one(unit, "Service", "SupplementaryGroups") == paths["DROP_GROUP"]
    assert paths["UNIT"] == "/etc/systemd/system/importer.service"


def _shell_block(name: str) -> str:
    text = INSTALL.read_text(encoding="utf-8")
    found = re.search(rf"^# --- {name} .*?---\n(.*?)^# --- end {name} ---$", text, re.S | re.M)
    assert found, f"install.sh has no '# --- {name}' block"
    return found.group(1)


def test_install_script_makes_an_outbox_the_drop_group_can_read_and_nobody_else(tmp_path: Path) -> None:
    """The script's outbox block, run on its own (with this test's user and group standing in for
    importer and importer-drop), then an answer written there the way the service writes it."""
    if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
        pytest.skip("setfacl/getfacl are not installed (apt-get install acl): the outbox ACL is NOT tested")
    outbox = tmp_path / "srv" / "outbox"
    outbox.parent.mkdir()
    user, group = os.getuid(), os.getgid()
    script = f"set -euo pipefail\nSERVICE_USER={user} DROP_GROUP={group} OUTBOX={outbox}\n" + _shell_block(
        "outbox"
    )
    for _ in range(2):  # safe to run again: the second run keeps it as it is
        result = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout

    st = outbox.stat()
    assert stat.S_IMODE(st.st_mode) == 0o2750 and (st.st_uid, st.st_gid) == (user, group)
    acl = subprocess.run(["getfacl", "-p", str(outbox)], capture_output=True, text=True, check=True).stdout
    assert f"default:group:{group}:r-x" in acl or f"default:group:{_group_name(group)}:r-x" in acl, acl
    assert "default:other::---" in acl, acl

    # The service writes with umask 0077; the answer is still the drop group's to read.
    written = subprocess.run(
        [sys.executable, "-c", _WRITE_AS_THE_SERVICE, str(outbox)], capture_output=True, text=True, timeout=30
    )
    assert written.returncode == 0, written.stderr
    for path in (outbox / "hr" / "1-x.csv.report.html", outbox / "hr"):
        assert path.stat().st_gid == group, path
    assert stat.S_IMODE((outbox / "hr" / "1-x.csv.report.html").stat().st_mode) == 0o640
    assert stat.S_IMODE((outbox / "hr").stat().st_mode) == 0o2750


_WRITE_AS_THE_SERVICE = """
import os, sys
from pathlib import Path
from importer.inbox import ensure_dirs
from importer.outbox import DIR_MODE, write_answer
os.umask(0o077)
folder = Path(sys.argv[1]) / "hr"
ensure_dirs(folder, DIR_MODE, keep_setgid=True)  # as Outbox.write_finished makes a dropper's folder
write_answer(folder / "1-x.csv.report.html", lambda out: out.write(b"<p>ok</p>"))
"""


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
