"""E-mail over TLS (STARTTLS and implicit TLS) with a login, against a real aiosmtpd server on
127.0.0.1 with its own CA (trustme); the password comes as a systemd credential would."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from importer.config import load_config
from importer.notifications import Notifier
from importer.report_page import ReportSummary
from tests.smtp_server import Inbox, LoopbackController
from tests.waiting import wait_until

SECRET = "smtp-pa55-never-in-a-message"


class _TlsController(LoopbackController):
    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._socket, ssl=self.ssl_context)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_an_email_goes_over_tls_with_a_login_from_a_credential(tmp_path: Path, security: str) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    logins: list[tuple[str, str]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password.decode() == SECRET)

    mail = Inbox()
    tls: dict[str, Any] = (
        {"tls_context": server_context, "require_starttls": True}
        if security == "starttls"
        # aiosmtpd only counts STARTTLS as TLS when it decides whether to offer AUTH.
        else {"ssl_context": server_context, "auth_require_tls": False}
    )
    controller = _TlsController(mail, auth_required=True, authenticator=authenticate, **tls)
    controller.start()
    try:
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "smtp-password").write_text(SECRET + "\n")
        config_file = tmp_path / "importer.toml"
        config_file.write_text(
            f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {controller.port}\n'
            f'smtp_security = "{security}"\nsmtp_verify_tls = "{ca_file}"\nsmtp_user = "importer"\n'
            'to = ["hr@example.com"]\nretry_attempts = 1\n'
        )
        notify = load_config(config_file, env={"CREDENTIALS_DIRECTORY": str(credentials)}).notify
        summary = ReportSummary(file_id=7, name="x.csv", mapping="m", state="done", rows={"inserted": 3})
        with Notifier(notify) as notifier:
            notifier.file_answered(summary, "<p>page</p>", tmp_path / "7-x.csv.report.html")
            wait_until(lambda: mail.messages, 30, "the e-mail")
        # The same server checked against the system's CAs only: refused, nothing sent in clear.
        outcomes: list[tuple[str, str]] = []
        untrusting = notify.model_copy(update={"smtp_verify_tls": True})
        with Notifier(untrusting, lambda channel, outcome: outcomes.append((channel, outcome))) as notifier:
            notifier.file_answered(summary, None, None)
            wait_until(lambda: outcomes, 30, "the refused e-mail")
        assert outcomes == [("email", "failed")] and len(mail.messages) == 1
    finally:
        controller.stop()
    assert logins == [("importer", SECRET)]
    [(to, message)] = mail.messages
    assert (
        to == ["hr@example.com"]
        and message["Subject"] == "importer: x.csv: 3 of 3 rows done, none needs a person"
    )
    assert SECRET not in message.as_string()
