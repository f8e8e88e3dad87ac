"""Basic auth and OAuth (``/oauth_token.do``): users, roles, tokens with lifetimes (notes §8)."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from .data import DataSpec, UserSpec


class OAuthError(Exception):
    """Any token request failure: ServiceNow answers them all alike (401 access_denied)."""


@dataclass
class _Token:
    user: str
    client_id: str
    expires_at: float


class Auth:
    def __init__(self, spec: DataSpec) -> None:
        self.users = dict(spec.users)
        self.clients = dict(spec.clients)
        self.client_credentials_enabled = spec.client_credentials_grant
        self.access_lifetime_s = spec.access_token_lifetime_s
        self.refresh_lifetime_s = spec.refresh_token_lifetime_s
        self._lock = threading.Lock()
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}

    def set_lifetimes(self, access_s: float | None, refresh_s: float | None) -> None:
        """Applies to tokens issued from now on."""
        with self._lock:
            if access_s is not None:
                self.access_lifetime_s = float(access_s)
            if refresh_s is not None:
                self.refresh_lifetime_s = float(refresh_s)

    def authenticate(self, authorization: str | None) -> UserSpec | None:
        """The user behind an Authorization header, or None for missing/bad/expired credentials."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                name, _, password = (
                    base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                return None
            user = self.users.get(name)
            if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
                return None
            return user
        if scheme == "bearer":
            with self._lock:
                token = self._access.get(value.strip())
                if token is None:
                    return None
                if token.expires_at <= time.time():
                    del self._access[value.strip()]
                    return None
            return self.users.get(token.user)
        return None

    def grant(self, form: dict[str, str]) -> dict[str, object]:
        grant_type = form.get("grant_type", "")
        client = self.clients.get(form.get("client_id", ""))
        if client is None or not hmac.compare_digest(
            client.client_secret.encode(), form.get("client_secret", "").encode()
        ):
            raise OAuthError("bad client")
        if grant_type == "password":
            user = self.users.get(form.get("username", ""))
            if user is None or not hmac.compare_digest(
                user.password.encode(), form.get("password", "").encode()
            ):
                raise OAuthError("bad user")
            return self._issue(user.user_name, client.client_id, with_refresh=True)
        if grant_type == "client_credentials":
            if not self.client_credentials_enabled or client.application_user is None:
                raise OAuthError("client credentials not allowed")
            # No refresh token for client credentials (sandbox choice: the client must re-grant).
            return self._issue(client.application_user, client.client_id, with_refresh=False)
        if grant_type == "refresh_token":
            with self._lock:
                token = self._refresh.get(form.get("refresh_token", ""))
                if token is None or token.client_id != client.client_id or token.expires_at <= time.time():
                    raise OAuthError("bad refresh token")
            issued = self._issue(token.user, client.client_id, with_refresh=False)
            issued["refresh_token"] = form["refresh_token"]
            return issued
        raise OAuthError("unsupported grant type")

    def _issue(self, user: str, client_id: str, with_refresh: bool) -> dict[str, object]:
        now = time.time()
        access = secrets.token_urlsafe(48)
        with self._lock:
            lifetime = self.access_lifetime_s
            self._access[access] = _Token(user, client_id, now + lifetime)
            answer: dict[str, object] = {
                "scope": "useraccount",
                "token_type": "Bearer",
                # ServiceNow reports one second less than the configured lifetime (1800 -> 1799).
                "expires_in": max(0, int(lifetime) - 1),
                "access_token": access,
            }
            if with_refresh:
                refresh = secrets.token_urlsafe(48)
                self._refresh[refresh] = _Token(user, client_id, now + self.refresh_lifetime_s)
                answer["refresh_token"] = refresh
        return answer
