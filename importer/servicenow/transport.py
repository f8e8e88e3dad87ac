"""One HTTP exchange with the instance; every ``requests`` exception is translated here.

The distinction that matters is *when* the connection failed:

- before the request reached the instance (refused, DNS, connect timeout): nothing happened,
  any request may be sent again -> ``TransientError``;
- after it was sent (reset, closed without an answer, read timeout, a truncated answer): the
  instance may have acted on it -> ``AmbiguousResponse`` for requests that change data,
  ``TransientError`` for reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
import urllib3.exceptions

from importer.errors import AmbiguousResponse, InstanceError, TransientError

from .responses import Call

UNREACHABLE_ADVICE = "check [instance] url, the network and any proxy (HTTPS_PROXY, NO_PROXY)"


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    call: Call,
    timeout: float,
    auth: requests.auth.AuthBase,
    params: Mapping[str, str] | None = None,
    data: bytes | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    try:
        return session.request(
            method,
            url,
            params=params,
            data=data,
            headers=dict(headers or {}),
            auth=auth,
            timeout=timeout,
            # The REST API does not redirect; a redirect means a wrong URL (http -> https, an SSO
            # page), and following it could turn a POST into a GET. classify() reports it.
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as exc:
        raise InstanceError(
            f"TLS with {call.instance} failed ({_reason(exc)}): check [instance] url and verify_tls "
            "(a path to the CA bundle that signed the instance's certificate).",
            instance=call.instance,
            action=call.action,
        ) from exc
    except (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError) as exc:
        raise _unreachable(call, exc, "connection") from exc
    except requests.exceptions.ConnectionError as exc:
        if _failed_to_connect(exc):
            raise _unreachable(call, exc, "connection") from exc
        raise _lost_answer(call, exc, "the connection was closed before the answer came") from exc
    except requests.exceptions.ReadTimeout as exc:
        raise _lost_answer(
            call, exc, f"no answer within {timeout:g} s (timeout_s)", reason="timeout"
        ) from exc
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        raise _lost_answer(call, exc, "the answer was cut off") from exc
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidHeader,
    ) as exc:
        raise InstanceError(
            f"cannot send {call.what} to {call.instance} ({_reason(exc)}): check [instance] url.",
            instance=call.instance,
            action=call.action,
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise _lost_answer(call, exc, "the exchange failed") from exc


def _failed_to_connect(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the request never reached the instance (refused, DNS, connect timeout)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(error, ConnectionRefusedError):
            return True
        if isinstance(error, urllib3.exceptions.MaxRetryError):
            stack.append(error.reason)
        if isinstance(error, BaseException):
            stack.extend(arg for arg in error.args if isinstance(arg, BaseException))
            stack.append(error.__cause__)
            stack.append(error.__context__)
    return False


def _unreachable(call: Call, exc: Exception, reason: str) -> TransientError:
    return TransientError(
        f"instance unreachable: {call.instance} did not accept a connection for {call.what} "
        f"({_reason(exc)}): {UNREACHABLE_ADVICE}.",
        instance=call.instance,
        table=call.table,
        action=call.action,
        reason=reason,
    )


def _lost_answer(
    call: Call, exc: Exception, what_happened: str, *, reason: str = "connection"
) -> TransientError:
    if call.idempotent:
        return TransientError(
            f"{call.what} on {call.instance} failed: {what_happened} ({_reason(exc)}).",
            instance=call.instance,
            table=call.table,
            action=call.action,
            reason=reason,
        )
    return AmbiguousResponse(
        f"{call.what} was sent to {call.instance} but {what_happened} ({_reason(exc)}): the instance "
        "may or may not have stored the records. Look the import set up before sending them again.",
        instance=call.instance,
        table=call.table,
        action=call.action,
        reason=reason,
    )


def _reason(exc: BaseException) -> str:
    """The innermost cause's text: short, and free of the URL's query (which may hold a query
    on user data) and of headers. requests never puts credentials in exception text."""
    innermost: BaseException = exc
    while True:
        if isinstance(innermost, urllib3.exceptions.MaxRetryError) and innermost.reason is not None:
            innermost = innermost.reason
            continue
        nested = next((arg for arg in innermost.args if isinstance(arg, BaseException)), None)
        if nested is None:
            break
        innermost = nested
    text = str(innermost) or type(innermost).__name__
    # urllib3 prefixes "<urllib3.connection.HTTPConnection object at 0x...>: "; it says nothing.
    text = text.split(">: ", 1)[-1]
    return f"{type(innermost).__name__}: {text}" if type(innermost).__name__ not in text else text
