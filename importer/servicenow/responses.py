"""The one place that decides what an instance's answer means.

``classify`` turns every non-success response into the exception that says how to recover
(``importer.errors``); ``validated_body`` checks that a 2xx body is what the endpoint promises
(a 200 can carry an error, a 202 can mean nothing was done). They are pure functions of a
``requests.Response`` and a ``Call`` describing what was asked, so a parametrized table tests
them (tests/servicenow/test_responses.py).

Messages are written for the operator: they name the instance, the table and what to change,
and never contain credentials or headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import requests

from importer.errors import AmbiguousResponse, AuthError, InstanceError, RequestTooLarge, TransientError

Endpoint = Literal["import", "table", "stats", "token"]

PASSWORD_SOURCES = "IMPORTER_INSTANCE__PASSWORD, password_file, or the servicenow-password credential"

# 400 messages that mean "the body is too big": ServiceNow does not document the Import Set API's
# answer to a body over glide.rest.max_content_length, so match the wordings seen for REST in general.
_TOO_LARGE_WORDS = (
    "too large",
    "max content length",
    "maximum content length",
    "max_content_length",
    "content length exceeds",
    "request entity",
    "payload too large",
)


@dataclass(frozen=True)
class Call:
    """What a request was for, so that an error can say it in the operator's words."""

    instance: str  # base URL, never with credentials
    endpoint: Endpoint
    action: str  # "insertMultiple", "insert", "read import result", "query", "read record", "count", "token"
    table: str | None = None
    user: str | None = None  # whose roles and password matter (None for client_credentials)
    auth: Literal["basic", "oauth"] = "basic"
    # False for requests that change data (insertMultiple, insert): an answer that may have been
    # produced after the instance committed them is then ambiguous, not retryable.
    idempotent: bool = True

    @property
    def what(self) -> str:
        if self.table is None:
            return self.action
        kind = "staging table" if self.endpoint == "import" else "table"
        return f"{self.action} on {kind} '{self.table}'"


@dataclass(frozen=True)
class ErrorBody:
    message: str
    detail: str = ""

    def summary(self, status: int) -> str:
        text = f"{status} {self.message}".rstrip()
        return f"{text}: {self.detail}" if self.detail and self.detail != self.message else text


_DECODED = "_importer_decoded_json"


def decoded(response: requests.Response) -> Any:
    """``response.json()``, decoded once per response and kept on it: a page of staging rows is
    megabytes, and the body is looked at by the classifier, the page check and the caller."""
    if _DECODED not in response.__dict__:
        response.__dict__[_DECODED] = response.json()  # ValueError (not JSON) is not kept
    return response.__dict__[_DECODED]


def error_body(response: requests.Response) -> ErrorBody:
    """ServiceNow's error envelope ``{"error": {"message", "detail"}, "status": "failure"}``,
    the OAuth endpoint's ``{"error", "error_description"}``, or a short excerpt of anything else."""
    try:
        data = decoded(response)
    except ValueError:
        return ErrorBody(_text_excerpt(response))
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            # The Application Service API says "details" (servicenow-notes.md §11).
            detail = error.get("detail") or error.get("details") or ""
            return ErrorBody(str(error.get("message") or "").strip(), str(detail).strip())
        if isinstance(error, str):
            description = str(data.get("error_description") or "").strip()
            return ErrorBody(description or error, error if description else "")
        if isinstance(data.get("message"), str):
            return ErrorBody(data["message"].strip())
    return ErrorBody(_text_excerpt(response))


def _text_excerpt(response: requests.Response, limit: int = 200) -> str:
    try:
        text = response.text
    except Exception:  # an undecodable body says nothing useful
        return response.reason or ""
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    elif "<" in text:
        text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    if not text:
        return response.reason or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_s(response: requests.Response, *, now: float | None = None) -> float | None:
    """Seconds to wait before asking again: ``Retry-After`` (seconds or an HTTP date), else
    ServiceNow's ``X-RateLimit-Reset`` (Unix time of the rate-limit window's reset)."""
    now = time.time() if now is None else now
    value = response.headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            number = float(reset.strip())
        except ValueError:
            return None
        # ServiceNow sends a Unix time; a small number can only be a delay in seconds.
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    return None


def is_no_record_found(response: requests.Response) -> bool:
    """A v1-style Table API answer to a query that matched nothing (404 "No Record found")."""
    return response.status_code == 404 and "no record found" in error_body(response).message.lower()


def classify(response: requests.Response, call: Call) -> None:
    """Return if ``response`` succeeded; otherwise raise the error that says how to recover."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = error_body(response)
    summary = body.summary(status)
    context: dict[str, Any] = {"instance": call.instance, "table": call.table, "action": call.action}
    if call.endpoint == "token":
        _classify_token_failure(response, call, body, summary, context)
        return

    if status == 401:
        if call.auth == "oauth":
            raise AuthError(
                f"ServiceNow refused the OAuth access token for {call.what} on {call.instance} ({summary}), "
                "even with a freshly issued token. Check that the OAuth application's user "
                f"{_user_phrase(call)}is active and allowed to use the REST API.",
                status=status,
                **context,
            )
        raise AuthError(
            f"ServiceNow refused the credentials for user '{call.user}' ({summary}) on {call.instance}. "
            f"Check [instance] username and password ({PASSWORD_SOURCES}).",
            status=status,
            **context,
        )
    if status == 403:
        raise AuthError(
            f"ServiceNow forbids {call.what} on {call.instance} for user {_user_phrase(call)}({summary}): "
            f"the user lacks a role or an ACL blocks it. {_role_advice(call)}",
            status=status,
            **context,
        )
    if status == 413 or (status == 400 and _says_too_large(body)):
        size = _request_body_size(response)
        of_size = f" of {size} bytes" if size is not None else ""
        raise RequestTooLarge(
            f"{call.instance} refused the request body{of_size} of {call.what} as too large ({summary}). "
            "Split it into smaller batches (the instance's limit is glide.rest.max_content_length, "
            "10 MB by default).",
            status=status,
            body_bytes=size,
            **context,
        )
    if status == 429:
        wait = retry_after_s(response)
        after = f"; it asks to wait {wait:.0f} s" if wait is not None else ""
        raise TransientError(
            f"{call.instance} is rate limiting {call.what} ({summary}){after}.",
            status=status,
            retry_after=wait,
            reason=str(status),
            **context,
        )
    if status in (500, 502, 503, 504):
        wait = retry_after_s(response)
        # 503 means the node refused the work (semaphores full, node unavailable) before doing
        # any of it. 500 (a transaction cancelled by the 60 s quota rule, a node shutting down),
        # 502 and 504 (a proxy lost or gave up on the node) can arrive after the instance
        # committed part or all of a change: for a request that is not idempotent that is
        # ambiguous, and the caller must look the import set up before sending it again.
        if not call.idempotent and status != 503:
            raise AmbiguousResponse(
                f"{call.instance} answered {summary} to {call.what}; it may have stored the records "
                "anyway. Look the import set up before sending them again.",
                status=status,
                retry_after=wait,
                reason=str(status),
                **context,
            )
        # 500 is retried: ServiceNow answers it for cancelled transactions and restarting nodes,
        # which pass. A 500 that persists still ends, after the bounded retries, as a
        # TransientError naming the status, so the work is retried later, not lost.
        raise TransientError(
            f"{call.instance} answered {summary} to {call.what}: the instance is busy, restarting "
            "or failing; retry later.",
            status=status,
            retry_after=wait,
            reason=str(status),
            **context,
        )
    if status == 404 and call.endpoint == "import":
        raise InstanceError(
            f"staging table '{call.table}' does not exist on {call.instance} ({summary}): "
            "check staging_table in the mapping.",
            status=status,
            **context,
        )
    if status == 400 and "invalid table" in body.message.lower():
        if call.endpoint == "import":
            missing, advice = "staging table", "check staging_table in the mapping"
        else:
            missing, advice = "table", "check the table name (and that the plugin providing it is active)"
        raise InstanceError(
            f"{missing} '{call.table}' does not exist on {call.instance} ({summary}): {advice}.",
            status=status,
            **context,
        )
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        raise InstanceError(
            f"{call.instance} redirected {call.what} ({status}) to {location or 'another address'}: "
            "check [instance] url (it must be the instance's own https:// address).",
            status=status,
            **context,
        )
    raise InstanceError(
        f"{call.instance} refused {call.what} ({summary}).",
        status=status,
        **context,
    )


def _classify_token_failure(
    response: requests.Response, call: Call, body: ErrorBody, summary: str, context: dict[str, Any]
) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(
            f"the OAuth token endpoint of {call.instance} answered {summary}; retry later.",
            status=status,
            retry_after=retry_after_s(response),
            reason=str(status),
            **context,
        )
    if status == 404:
        raise AuthError(
            f"{call.instance} has no OAuth token endpoint ({summary} from /oauth_token.do): check [instance] "
            "url, and that OAuth is enabled on the instance, or use auth = basic.",
            status=status,
            **context,
        )
    if 400 <= status < 500:
        # The endpoint answers 401 {"error": "server_error", "error_description": "access_denied"}
        # whatever is wrong, so list everything that can be.
        if call.user:
            what = (
                "Check [instance] client_id, client_secret, username and password "
                f"({PASSWORD_SOURCES}), and that the OAuth application exists on the instance "
                f"and user '{call.user}' is active."
            )
        else:
            what = (
                "Check [instance] client_id and client_secret, that the OAuth application exists "
                "on the instance with an OAuth Application User, and that the client_credentials "
                "grant is enabled (glide.oauth.inbound.client.credential.grant_type.enabled = true)."
            )
        raise AuthError(
            f"ServiceNow refused to issue an OAuth token on {call.instance} ({summary}). {what}",
            status=status,
            **context,
        )
    raise AuthError(
        f"the OAuth token endpoint of {call.instance} answered {summary}: check [instance] url.",
        status=status,
        **context,
    )


_BODY_EXCEEDS = re.compile(r"\b(body|request|payload|content)\b.{0,40}\b(too large|exceeds?)\b")


def _says_too_large(body: ErrorBody) -> bool:
    text = f"{body.message} {body.detail}".lower()
    return any(words in text for words in _TOO_LARGE_WORDS) or _BODY_EXCEEDS.search(text) is not None


def _request_body_size(response: requests.Response) -> int | None:
    request = response.request
    body = getattr(request, "body", None) if request is not None else None
    if isinstance(body, bytes | str):
        return len(body)
    return None


def _user_phrase(call: Call) -> str:
    return f"'{call.user}' " if call.user else "(the OAuth application user) "


def _role_advice(call: Call) -> str:
    if call.endpoint == "import":
        return (
            f"Give the user the import_transformer role (or import_admin) so it may load staging "
            f"table '{call.table}' (insertMultiple also runs the staging table's ACLs unless "
            "com.glide.import_set_api.insert_multiple_optimize is true)."
        )
    if call.endpoint == "stats":
        return (
            f"Give the user a role that may read table '{call.table}' and use the Aggregate API "
            "(e.g. import_admin)."
        )
    return (
        f"Give the user a role that may read table '{call.table}' (e.g. import_admin for import set tables)."
    )


# What a 2xx must carry to be a success, per endpoint (servicenow-notes §11: a 200 can carry an
# error object appended to a partial or malformed body; a 202 may mean "dropped unprocessed").
Promise = Callable[[Any], bool]


def has_result_list(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("result"), list)


def has_result_object(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("result"), dict)


def has_import_set_id(data: Any) -> bool:
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]
    return isinstance(data, dict) and bool(data.get("import_set_id"))


def is_object(data: Any) -> bool:
    return isinstance(data, dict)


def validated_body(response: requests.Response, call: Call, promise: Promise = is_object) -> Any:
    """The JSON of a 2xx answer that is what the endpoint promises; otherwise raise.

    Not a success: a body that does not parse, one carrying ``error`` / ``"status": "failure"``
    (a quota rule cancelled the transaction after it started, KB1297438), a 202 (the session's
    queue overflowed and the request was dropped, KB3047080), or a body without what ``promise``
    checks for. A read is retried (TransientError); a change (``call.idempotent`` False) may have
    been committed anyway, so it is ambiguous (AmbiguousResponse): look before sending it again.
    """
    problem: str | None = None
    data: Any = None
    if response.status_code == 202:
        problem = "202 Accepted (the instance queued too many requests on one session and dropped it)"
    else:
        try:
            data = decoded(response)
        except ValueError:
            problem = (
                f"a body that is not JSON ({_text_excerpt(response, 120)!r}; if this persists, check "
                "[instance] url: it must be the instance itself, not a login page or proxy)"
            )
        else:
            failed = isinstance(data, dict) and (
                isinstance(data.get("error"), dict) or data.get("status") == "failure"
            )
            if failed:
                body = error_body(response)
                summary = body.summary(response.status_code)
                problem = f"an error in a {response.status_code} answer ({summary})"
            elif not promise(data):
                problem = f"an unexpected body ({str(data)[:160]})"
    if problem is None:
        return data
    context: dict[str, Any] = {"instance": call.instance, "table": call.table, "action": call.action}
    if not call.idempotent:
        raise AmbiguousResponse(
            f"{call.instance} answered {call.what} with {problem}; it may have stored the records "
            "anyway. Look the import set up before sending them again.",
            status=response.status_code,
            reason="bad 2xx",
            **context,
        )
    raise TransientError(
        f"{call.instance} answered {call.what} with {problem}: not a complete answer; retrying.",
        status=response.status_code,
        reason="bad 2xx",
        **context,
    )
