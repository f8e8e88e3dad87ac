"""How to reach one ServiceNow instance: URL, credentials, timeouts and the retry policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    """A plain, typed value: checked once, where it is made (``[instance]`` by ``load_config``,
    by hand with ``importer.config.check_client_settings``); the client trusts it."""

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

    @property
    def base_url(self) -> str:
        """The instance URL without a trailing slash (and never with credentials in it)."""
        return self.url.rstrip("/")
