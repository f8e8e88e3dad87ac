"""The systemd notify protocol (``sd_notify(3)``): a few ``KEY=value`` lines in one datagram.

With ``Type=notify`` systemd waits for ``READY=1`` before it considers the service started, shows
``STATUS=`` in ``systemctl status``, and with ``WatchdogSec=`` restarts the service if
``WATCHDOG=1`` stops arriving. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.

A notification that cannot be sent is logged at debug level and otherwise ignored: telling systemd
how we are must never be the reason the daemon stops.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to systemd's socket (``$NOTIFY_SOCKET`` unless ``socket_path`` is given;
    a leading ``@`` means the Linux abstract namespace)."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = _socket_address(path) if path else None
        self.enabled = self._address is not None

    def ready(self, status: str | None = None) -> None:
        """The daemon is up: config read, ledger open, the inbox watched."""
        self._send("READY=1", *([_status_line(status)] if status is not None else []))

    def status(self, text: str) -> None:
        """One line for ``systemctl status``, e.g. ``"2 files in progress, 0 waiting"``."""
        self._send(_status_line(text))

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Still alive: send at least every ``watchdog_interval()`` seconds when that is not None."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings — half of ``WatchdogSec=``, as sd_watchdog_enabled(3)
        advises — or None when systemd is not watching this process."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None  # meant for another process (we were started by the one being watched)
        return usec / 2 / 1_000_000

    def _send(self, *lines: str) -> None:
        if self._address is None:
            return
        message = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("systemd notification %r not sent to %r: %s", lines, self._address, exc)


def _socket_address(path: str) -> str | bytes | None:
    if path.startswith("@"):
        return b"\0" + os.fsencode(path[1:])  # abstract namespace: no file behind it
    if path.startswith("/"):
        return path
    # "vsock:..." (systemd 253+, for VMs) and anything else are not ours to speak.
    log.debug("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications are off", path)
    return None


def _status_line(text: str) -> str:
    # A newline would start another KEY=value line (a status text could claim READY=1 or MAINPID=).
    return "STATUS=" + " ".join(text.splitlines())
