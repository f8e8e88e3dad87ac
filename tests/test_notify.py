"""The systemd notify protocol against a real unix datagram socket the test owns."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.notify import SystemdNotifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """Stands in for systemd: a bound datagram socket at a file path."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield path, sock


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def _assert_nothing_waiting(sock: socket.socket) -> None:
    sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_ready_status_watchdog_and_stopping_arrive(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    notifier = SystemdNotifier(path)
    assert notifier.enabled

    notifier.ready("watching /srv/importer/inbox")
    assert _received(sock) == "READY=1\nSTATUS=watching /srv/importer/inbox"
    notifier.ready()
    assert _received(sock) == "READY=1"
    notifier.status("2 files in progress")
    assert _received(sock) == "STATUS=2 files in progress"
    notifier.watchdog()
    assert _received(sock) == "WATCHDOG=1"
    notifier.stopping()
    assert _received(sock) == "STOPPING=1"


def test_socket_comes_from_notify_socket_by_default(
    systemd_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    SystemdNotifier().watchdog()
    assert _received(sock) == "WATCHDOG=1"


def test_a_status_cannot_smuggle_other_fields(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    SystemdNotifier(path).status("bad file name\nMAINPID=1\nREADY=1")
    assert _received(sock) == "STATUS=bad file name MAINPID=1 READY=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"importer-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier()
        notifier.ready("up")
        assert _received(sock) == "READY=1\nSTATUS=up"


def test_without_a_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()


def test_an_unsupported_address_disables_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not SystemdNotifier().enabled


def test_a_send_failure_is_logged_and_swallowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="importer.notify"):
        notifier.ready("x")
        notifier.watchdog()
    assert "not sent" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", None, 30.0),  # WatchdogSec=60 -> ping every 30 s
        ("60000000", "self", 30.0),
        ("60000000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert SystemdNotifier("/nonexistent").watchdog_interval() == expected


def test_nothing_is_sent_by_merely_creating_a_notifier(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    SystemdNotifier(path)
    _assert_nothing_waiting(sock)
