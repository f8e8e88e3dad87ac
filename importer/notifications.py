"""Messages to people when a file finishes or is refused: e-mail over SMTP, or a webhook.

(Not ``notify.py``, which speaks to systemd.)

Messages are sent from background threads, one per channel, so a slow or unreachable mail server
never holds up an import (nor the webhook): ``file_answered`` only puts messages on queues. A
failed send is retried with capped exponential backoff and jitter (``[notify] retry_*``); one that
still fails is logged and counted (``importer_notifications_total{outcome="failed"}``), and the
import is unaffected.
A message carries the file's summary and its report page, never a secret: the webhook URL (which
holds a token for Teams and Slack) and the SMTP password are not logged either.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryError, Retrying, stop_after_attempt, wait_random_exponential

from importer import __version__
from importer.config import NotifyConfig
from importer.inbox import safe_name
from importer.report_page import ReportSummary, _ordered

if TYPE_CHECKING:  # e-mail's modules are loaded by the first e-mail, not by every command
    import smtplib
    from email.message import EmailMessage

log = logging.getLogger("importer.notifications")

OnResult = Callable[[str, str], None]  # (channel, "sent" | "failed")
CHANNELS = ("email", "webhook")
# At exit, what is still queued gets this long (a stop must stay quick; systemd waits 30 s).
SHUTDOWN_WAIT_S = 5.0


@dataclass(frozen=True)
class _Job:
    channel: str  # email | webhook
    what: str  # for the log: "file 5 (hr_users.csv) to 2 addresses"
    send: Callable[[], None]


class _Permanent(Exception):
    """A refusal that trying again cannot change (a 4xx answer other than 429)."""


class Notifier:
    def __init__(self, config: NotifyConfig, on_result: OnResult | None = None) -> None:
        self.config = config
        self.on_result = on_result or (lambda channel, outcome: None)
        self._queues: dict[str, queue.Queue[_Job | None]] = {c: queue.Queue() for c in CHANNELS}
        self._closing = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._session = requests.Session()

    @property
    def wants_html(self) -> bool:
        return bool(self.config.smtp_host) and self.config.attach_html

    def start(self) -> Notifier:
        for channel in CHANNELS:
            thread = threading.Thread(
                target=self._run, args=(self._queues[channel],), name=f"notify-{channel}", daemon=True
            )
            thread.start()
            self._threads[channel] = thread
        return self

    def close(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Send what is queued, without further backoff, for at most ``wait_s`` in all; what is
        still unsent then is logged as lost (the threads are daemons: they do not hold up exit)."""
        if not self._threads:
            return
        self._closing.set()
        deadline = time.monotonic() + wait_s
        for channel in self._threads:
            self._queues[channel].put(None)
        for channel, thread in self._threads.items():
            thread.join(max(deadline - time.monotonic(), 0))
            if thread.is_alive():
                log.warning(
                    "exiting with %s %s notifications not sent (no answer from the %s)",
                    self._queues[channel].qsize(),
                    channel,
                    "mail server" if channel == "email" else "webhook",
                )
        self._session.close()
        self._threads = {}

    def __enter__(self) -> Notifier:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what to send --------------------------------------------------------------------------

    def file_answered(self, summary: ReportSummary, html: str | None, answer: Path | None) -> None:
        """Queue the messages for a finished or refused file; returns at once."""
        per_mapping = self.config.mappings.get(summary.mapping or "")
        if per_mapping is not None and not per_mapping.enabled:
            return
        to = per_mapping.to if per_mapping is not None and per_mapping.to is not None else self.config.to
        webhook = (
            per_mapping.webhook_url
            if per_mapping is not None and per_mapping.webhook_url is not None
            else self.config.webhook_url
        )
        what = f"file {summary.file_id} ({summary.name})"
        if self.config.smtp_host and to:
            message = self._email(summary, html, answer, to)
            self._put(_Job("email", f"{what} to {len(to)} addresses", lambda: self._send_email(message)))
        if webhook is not None:
            url = webhook.get_secret_value()
            payload = _webhook_payload(summary, answer)
            self._put(_Job("webhook", f"{what} to {_safe_url(url)}", lambda: self._post(url, payload)))

    def _put(self, job: _Job) -> None:
        if not self._threads:
            log.warning("notifications are not running; %s not sent", job.what)
            self.on_result(job.channel, "failed")
            return
        self._queues[job.channel].put(job)

    # -- the sending threads -------------------------------------------------------------------

    def _run(self, jobs: queue.Queue[_Job | None]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            self._deliver(job)

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)  # closing: no more backoff, the last tries go at once

    def _deliver(self, job: _Job) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self.config.retry_attempts),
            # "Full jitter": a random wait up to retry_backoff_s * 2**n, capped.
            wait=wait_random_exponential(
                multiplier=self.config.retry_backoff_s, max=self.config.retry_backoff_max_s
            ),
            retry=lambda state: (
                state.outcome is not None
                and state.outcome.failed
                and not isinstance(state.outcome.exception(), _Permanent)
            ),
            sleep=self._sleep,
            before_sleep=lambda state: log.info(
                "notification %s: attempt %s failed (%s); trying again",
                job.what,
                state.attempt_number,
                _describe(state.outcome.exception() if state.outcome else None),
            ),
            reraise=True,
        )
        try:
            retrying(job.send)
        except (Exception, RetryError) as exc:
            log.error("notification %s not sent: %s", job.what, _describe(exc))
            self.on_result(job.channel, "failed")
            return
        log.info("notification %s sent", job.what)
        self.on_result(job.channel, "sent")

    # -- e-mail --------------------------------------------------------------------------------

    def _email(
        self, summary: ReportSummary, html: str | None, answer: Path | None, to: list[str]
    ) -> EmailMessage:
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        message = EmailMessage()
        message["Subject"] = _one_line(f"importer: {summary.one_line()}", 200)
        message["From"] = self.config.from_address
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=self.config.from_address.rpartition("@")[2] or None)
        message["X-Mailer"] = f"importer {__version__}"
        message.set_content(_text_body(summary, answer))
        if html is not None and self.config.attach_html:
            message.add_attachment(
                html.encode("utf-8"),
                maintype="text",
                subtype="html",
                filename=f"{summary.file_id}-{safe_name(summary.name)}.report.html",
            )
        return message

    def _send_email(self, message: EmailMessage) -> None:
        import smtplib

        config = self.config
        host, port, timeout = config.smtp_host or "", config.port, config.timeout_s
        smtp: smtplib.SMTP
        if config.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=config.tls_context())
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
        with smtp:
            if config.smtp_security == "starttls":
                smtp.starttls(context=config.tls_context())
            password = config.smtp_password_value()
            if config.smtp_user and password is not None:
                smtp.login(config.smtp_user, password)
            smtp.send_message(message)

    # -- webhook -------------------------------------------------------------------------------

    def _post(self, url: str, payload: dict[str, Any]) -> None:
        response = self._session.post(
            url,
            data=json.dumps(payload),
            headers={"Content-Type": "application/json", "User-Agent": f"importer/{__version__}"},
            timeout=self.config.timeout_s,
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise ConnectionError(f"the webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise _Permanent(f"the webhook refused the message: {response.status_code}")


def _webhook_payload(summary: ReportSummary, answer: Path | None) -> dict[str, Any]:
    payload = summary.as_json()
    payload["text"] = summary.one_line()  # what Slack and Teams incoming webhooks show
    payload["report"] = str(answer) if answer is not None else None
    return payload


def _text_body(summary: ReportSummary, answer: Path | None) -> str:
    lines = [summary.one_line(), ""]
    lines.append(f"File:     #{summary.file_id} {summary.name}")
    if summary.rerun_of:
        original = f" {summary.rerun_of_name}" if summary.rerun_of_name else ""
        lines.append(f"Re-run of: #{summary.rerun_of}{original}")
    lines.append(f"Mapping:  {summary.mapping or '-'}")
    lines.append(f"State:    {summary.state}")
    if summary.rows:
        counts = ", ".join(f"{state} {count}" for state, count in _ordered(summary.rows))
        lines.append(f"Rows:     {summary.total} ({counts})")
    if summary.state == "rejected" and summary.error:
        lines += ["", "Why it was refused:", summary.error.strip()]
    if answer is not None:
        lines += ["", f"The answer: {answer}"]
    lines += ["", "The report page is attached when the file was imported."]
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _safe_url(url: str) -> str:
    """A webhook URL for the log: scheme and host only (the path holds the token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"


def _describe(exc: BaseException | None) -> str:
    """An error for the log, without the URL (requests puts it, token and all, in messages)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, requests.RequestException):
        reason = type(exc).__name__
        text = str(exc)
        for word in ("Connection refused", "timed out", "Name or service not known", "certificate"):
            if word.lower() in text.lower():
                reason += f": {word}"
        return reason
    return f"{type(exc).__name__}: {exc}"
