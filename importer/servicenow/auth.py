"""Credentials for each request: HTTP Basic, or an OAuth bearer token fetched, cached and
refreshed before it expires."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from importer.errors import AuthError, InstanceError

from .responses import Call, classify
from .settings import TOKEN_REFRESH_MARGIN_S, ClientSettings
from .transport import send

log = logging.getLogger(__name__)

# When the token endpoint does not say how long a token lives: ServiceNow's default.
DEFAULT_TOKEN_LIFETIME_S = 1800.0


class Authenticator(Protocol):
    # True when a 401 may be cured by fetching new credentials (a token), so the request is
    # worth sending once more; Basic credentials do not change.
    can_reauthenticate: bool

    def request_auth(self) -> AuthBase: ...

    def reauthenticate(self, rejected: AuthBase) -> None: ...


class BasicAuthenticator:
    can_reauthenticate = False

    def __init__(self, username: str, password: str) -> None:
        self._auth = HTTPBasicAuth(username, password)

    def request_auth(self) -> AuthBase:
        return self._auth

    def reauthenticate(self, rejected: AuthBase) -> None:  # Basic credentials cannot be renewed
        return None

    def __repr__(self) -> str:
        return "BasicAuthenticator(...)"


class _Bearer(AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(...)"


class _NoAuth(AuthBase):
    """Sends no Authorization header, and stops requests from adding one from ~/.netrc."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


@dataclass
class _Token:
    access: str
    refresh: str | None
    lifetime_s: float
    obtained_at: float  # time.monotonic()

    def refresh_due(self, now: float) -> bool:
        # Refresh with min(60 s, 10% of the lifetime) left: early enough that a request in
        # flight does not carry an expired token, late enough that a 2 s token is used.
        margin = min(TOKEN_REFRESH_MARGIN_S, 0.1 * self.lifetime_s)
        return now >= self.obtained_at + self.lifetime_s - margin

    def __repr__(self) -> str:
        return f"_Token(lifetime_s={self.lifetime_s})"


class OAuthAuthenticator:
    """Tokens from ``POST {url}/oauth_token.do`` (password or client_credentials grant),
    refreshed with the refresh_token grant when one is held."""

    can_reauthenticate = True

    def __init__(
        self,
        settings: ClientSettings,
        session: requests.Session,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._session = session
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._call = Call(
            instance=settings.base_url,
            endpoint="token",
            action="OAuth token request",
            user=settings.username if settings.grant == "password" else None,
            auth="oauth",
        )

    def __repr__(self) -> str:
        return f"OAuthAuthenticator(client_id={self._settings.client_id!r}, grant={self._settings.grant!r})"

    def request_auth(self) -> AuthBase:
        with self._lock:
            token = self._token
            if token is None or token.refresh_due(self._clock()):
                token = self._renew(token)
            return _Bearer(token.access)

    def reauthenticate(self, rejected: AuthBase) -> None:
        with self._lock:
            # Another thread may already have replaced the rejected token.
            if (
                self._token is not None
                and isinstance(rejected, _Bearer)
                and rejected.token == self._token.access
            ):
                self._renew(self._token)

    def _renew(self, current: _Token | None) -> _Token:
        token: _Token | None = None
        if current is not None and current.refresh:
            try:
                token = self._fetch(
                    {"grant_type": "refresh_token", "refresh_token": current.refresh}, refreshing=True
                )
            except AuthError as exc:
                # A refresh token expires (100 days), or is revoked: start over with the grant.
                log.info(
                    "OAuth refresh on %s refused (%s); requesting a new token", self._settings.base_url, exc
                )
        if token is None:
            token = self._fetch(self._grant_form(), refreshing=False)
        self._token = token
        return token

    def _grant_form(self) -> dict[str, str]:
        if self._settings.grant == "client_credentials":
            return {"grant_type": "client_credentials"}
        return {
            "grant_type": "password",
            "username": self._settings.username or "",
            "password": self._settings.password or "",
        }

    def _fetch(self, form: dict[str, str], *, refreshing: bool) -> _Token:
        form = {
            **form,
            "client_id": self._settings.client_id or "",
            "client_secret": self._settings.client_secret or "",
        }
        # The lifetime counts from before the request: the token may be issued late in it.
        started = self._clock()
        response = send(
            self._session,
            "POST",
            f"{self._settings.base_url}/oauth_token.do",
            call=self._call,
            timeout=self._settings.timeout_s,
            auth=_NoAuth(),
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        classify(response, self._call)
        try:
            data = response.json()
            access = data["access_token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InstanceError(
                f"the OAuth token endpoint of {self._settings.base_url} answered {response.status_code} "
                "without an access_token: check [instance] url.",
                status=response.status_code,
                instance=self._settings.base_url,
            ) from exc
        lifetime = _lifetime_s(data.get("expires_in"))
        refresh = data.get("refresh_token") or None
        log.debug(
            "OAuth token %s on %s, valid %.0f s",
            "refreshed" if refreshing else "issued",
            self._settings.base_url,
            lifetime,
        )
        return _Token(access=str(access), refresh=refresh, lifetime_s=lifetime, obtained_at=started)


def _lifetime_s(expires_in: object) -> float:
    """``expires_in`` as seconds; 0 is a real answer (a token for less than a second), only a
    missing or unreadable value falls back to ServiceNow's default lifetime."""
    if expires_in is None or expires_in == "":
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        return max(0.0, float(expires_in))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_S


def make_authenticator(settings: ClientSettings, session: requests.Session) -> Authenticator:
    if settings.auth == "oauth":
        return OAuthAuthenticator(settings, session)
    return BasicAuthenticator(settings.username or "", settings.password or "")
