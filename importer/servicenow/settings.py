"""How to reach one ServiceNow instance: URL, credentials, timeouts and the retry policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from importer.errors import ConfigError

# A Retry-After longer than this is not waited out in-process: the request fails with a
# TransientError carrying retry_after, and the caller reschedules the work instead of holding
# a thread (and a shutdown) hostage for an hourly rate-limit window.
RETRY_AFTER_CAP_S = 300.0

# A staging (import set) row holds at most this many bytes; a larger one is skipped and logged by
# the instance (servicenow-notes §7, SND r_MaximumRowSize.md).
MAX_ROW_BYTES = 8126

# Refresh an OAuth access token when less than this is left of it (or 10% of its lifetime,
# whichever is smaller, so a 2 s token is not refreshed on every request).
TOKEN_REFRESH_MARGIN_S = 60.0


@dataclass(frozen=True)
class ClientSettings:
    url: str  # "https://acme.service-now.com" or "http://127.0.0.1:PORT"
    auth: Literal["basic", "oauth"] = "basic"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    grant: Literal["password", "client_credentials"] = "password"
    timeout_s: float = 30
    verify_tls: bool | str = True
    retry_attempts: int = 6
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 30

    def __post_init__(self) -> None:
        problems = settings_problems(self)
        if problems:
            raise ConfigError("invalid instance settings", problems=problems)

    @property
    def base_url(self) -> str:
        """The instance URL without a trailing slash (and never with credentials in it)."""
        return self.url.rstrip("/")


def settings_problems(settings: ClientSettings) -> list[str]:
    """Every problem with ``settings``, each as ``[instance] key: what is wrong``."""
    problems: list[str] = []
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(
            f"[instance] url: {settings.url!r} is not an http(s) URL "
            "(expected e.g. https://acme.service-now.com)"
        )
    elif parts.username is not None or parts.password is not None:
        # Never echo the URL: it holds a secret.
        problems.append("[instance] url: must not contain credentials; use username and password")
    elif parts.query or parts.fragment:
        problems.append(
            f"[instance] url: {settings.url!r} must be the instance root, without a query "
            "(e.g. https://acme.service-now.com)"
        )
    if settings.auth not in ("basic", "oauth"):
        problems.append(f"[instance] auth: {settings.auth!r} is not one of basic, oauth")
    needs_user = settings.auth == "basic" or (settings.auth == "oauth" and settings.grant == "password")
    if needs_user:
        if not settings.username:
            problems.append("[instance] username: required for auth=" + settings.auth)
        if not settings.password:
            problems.append(
                "[instance] password: required for auth="
                + settings.auth
                + " (IMPORTER_INSTANCE__PASSWORD, password_file, or the servicenow-password credential)"
            )
    if settings.auth == "oauth":
        if settings.grant not in ("password", "client_credentials"):
            problems.append(
                f"[instance] grant: {settings.grant!r} is not one of password, client_credentials"
            )
        if not settings.client_id:
            problems.append("[instance] client_id: required for auth=oauth")
        if not settings.client_secret:
            problems.append("[instance] client_secret: required for auth=oauth")
    if not settings.timeout_s > 0:
        problems.append(f"[instance] timeout_s: must be > 0, not {settings.timeout_s}")
    if settings.retry_attempts < 1:
        problems.append(f"[instance] retry_attempts: must be >= 1, not {settings.retry_attempts}")
    if settings.retry_backoff_s < 0:
        problems.append(f"[instance] retry_backoff_s: must be >= 0, not {settings.retry_backoff_s}")
    if settings.retry_backoff_max_s < settings.retry_backoff_s:
        problems.append(
            f"[instance] retry_backoff_max_s: must be >= retry_backoff_s ({settings.retry_backoff_s}), "
            f"not {settings.retry_backoff_max_s}"
        )
    return problems
