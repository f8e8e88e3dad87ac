"""Notifications from a running daemon (a real subprocess): e-mail to a real SMTP server on
127.0.0.1 (aiosmtpd), a webhook to a real HTTP server; and a mail server that never answers."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from importer.sandbox.defaults import IMPORT_PASSWORD
from tests.daemon.conftest import REPO, DaemonHost
from tests.smtp_server import Inbox, LoopbackController
from tests.waiting import wait_until

TOKEN = "T0K3N-never-in-a-log"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    handler = Inbox()
    controller = LoopbackController(handler)
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"1")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def with_notify(host: DaemonHost, text: str, **daemon: Any) -> None:
    host.write_config(**daemon)
    with host.config_path.open("a") as config:
        config.write(text)


def test_each_finished_or_refused_file_sends_an_email_and_a_webhook_with_its_counts(
    host: DaemonHost, smtp: tuple[int, Inbox], webhook: tuple[int, list[tuple[str, dict[str, Any]]]]
) -> None:
    smtp_port, mail = smtp
    hook_port, posts = webhook
    with_notify(
        host,
        f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\nsmtp_security = "none"\n'
        f'to = ["hr@example.com"]\nfrom_address = "importer@example.com"\n'
        f'webhook_url = "http://127.0.0.1:{hook_port}/hooks/{TOKEN}"\n'
        '[notify.mappings.departments]\nto = ["facilities@example.com"]\n',
    )
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
    (host.inbox / "holiday-list.csv").write_text("Name,Days\nAda,25\n")
    host.start("--once")
    assert host.wait_exit(90) == 3, host.logs()

    files = {f["name"]: f for f in host.status()}
    assert len(files) == 3
    # Everything queued was sent before the process exited: one e-mail and one POST per file.
    with mail.lock:
        messages = {m["Subject"]: (to, m) for to, m in mail.messages}
    assert len(messages) == 3 == len(mail.messages), list(messages)
    assert sorted(p["file_id"] for _, p in posts) == sorted(f["id"] for f in files.values())
    for path, payload in posts:
        file = files[payload["name"]]
        assert path == f"/hooks/{TOKEN}"
        assert (payload["state"], payload["rows"], payload["mapping"]) == (
            file["state"],
            file["rows"],
            file["mapping"],
        )
    by_name = {p["name"]: p for _, p in posts}
    assert by_name["hr_users.csv"]["needs_a_person"] == 3 and by_name["hr_users.csv"]["done"] == 4
    assert (
        by_name["hr_users.csv"]["text"]
        == "hr_users.csv: 4 of 7 rows done, 3 need a person (2 error, 1 invalid)"
    )
    assert by_name["hr_users.csv"]["report"] == str(
        host.outbox / f"{files['hr_users.csv']['id']}-hr_users.csv.report.html"
    )
    assert by_name["holiday-list.csv"]["state"] == "rejected"
    assert by_name["holiday-list.csv"]["error"] == files["holiday-list.csv"]["error"]

    to, users_mail = messages[
        "importer: hr_users.csv: 4 of 7 rows done, 3 need a person (2 error, 1 invalid)"
    ]
    assert to == ["hr@example.com"]
    body = _text(users_mail)
    assert "Rows:     7 (error 2, invalid 1, inserted 1, updated 1, ignored 1, skipped 1)" in body
    [attachment] = list(users_mail.iter_attachments())
    assert attachment.get_filename() == f"{files['hr_users.csv']['id']}-hr_users.csv.report.html"
    assert "3 need a person" in attachment.get_content()
    [(depts_to, _)] = [v for k, v in messages.items() if k.startswith("importer: departments.csv")]
    assert depts_to == ["facilities@example.com"]  # the mapping's own addresses
    [refusal] = [m for k, (_, m) in messages.items() if "holiday-list.csv: refused" in k]
    assert "no mapping matches 'holiday-list.csv'" in _text(refusal)

    # No secret travels or is logged.
    everything = json.dumps([p for _, p in posts]) + "".join(m.as_string() for _, m in mail.messages)
    assert IMPORT_PASSWORD not in everything
    assert TOKEN not in host.logs()


def _black_hole() -> tuple[socket.socket, list[socket.socket], threading.Thread]:
    """A mail server that accepts connections and never says a word (a hung relay, a firewall)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return server, held, thread


def test_a_mail_server_that_never_answers_delays_no_import_and_failures_are_counted(host: DaemonHost) -> None:
    server, held, thread = _black_hole()
    closed = socket.create_server(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    try:
        with_notify(
            host,
            f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {server.getsockname()[1]}\n'
            'smtp_security = "none"\nto = ["hr@example.com"]\ntimeout_s = 60\n'
            "retry_attempts = 2\nretry_backoff_s = 0.05\nretry_backoff_max_s = 0.1\n"
            f'webhook_url = "http://127.0.0.1:{refused_port}/hooks/{TOKEN}"\n',
            metrics_port=0,
        )
        host.start()
        shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
        host.wait_final(1)
        wait_until(lambda: held, 30, "the e-mail of the first file to hang on the silent server")
        shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
        files = host.wait_final(2, timeout=45)

        # The second file went through while the first e-mail still hangs (for up to 60 s).
        assert [f["state"] for f in files] == ["done", "done_with_errors"]
        assert len(held) == 1, "the mail thread was still waiting on the first message"
        # The reports are written once the ledger says final: wait for them, not only for that.
        reports = sorted(f"{f['id']}-{f['name']}.report.{kind}" for f in files for kind in ("csv", "html"))
        wait_until(lambda: sorted(p.name for p in host.outbox.iterdir()) == reports, 30, "the reports")

        # The webhook (its own thread) gave up on both files, and said so in the log and metrics.
        metrics = host.metrics_url()

        def failed_webhooks() -> float:
            text = requests.get(metrics, timeout=10).text
            found = re.search(
                r'importer_notifications_total\{channel="webhook",outcome="failed"\} (\S+)', text
            )
            return float(found[1]) if found else 0.0

        wait_until(lambda: failed_webhooks() == 2.0, 30, "two failed webhook notifications counted")
        logs = host.logs()
        assert f"notification file 1 (departments.csv) to http://127.0.0.1:{refused_port}/… not sent" in logs
        assert TOKEN not in logs

        # A stop is not held up by the hanging e-mail for more than a few seconds.
        assert host.process is not None
        started = time.monotonic()
        host.process.send_signal(signal.SIGTERM)
        assert host.wait_exit(40) == 0
        assert time.monotonic() - started < 25, "the daemon waited on the silent mail server at exit"
        assert "notifications not sent" in host.logs()
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        server.close()
        for connection in held:
            connection.close()
        thread.join(5)
