"""The response classifier, as a table: (call, status, body, headers) -> error class and message.

Responses are built directly: classify() is a pure function of a response."""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from importer.errors import AmbiguousResponse, AuthError, InstanceError, RequestTooLarge, TransientError
from importer.servicenow.responses import (
    Call,
    classify,
    error_body,
    has_import_set_id,
    has_result_list,
    is_no_record_found,
    retry_after_s,
    validated_body,
)

URL = "https://acme.service-now.com"

IMPORT = Call(URL, "import", "insertMultiple", "u_x", user="svc.import", idempotent=False)
IMPORT_READ = Call(URL, "import", "read import result", "u_x", user="svc.import")
TABLE = Call(URL, "table", "query", "sys_user", user="svc.import")
STATS = Call(URL, "stats", "count", "sys_user", user="svc.import")
OAUTH_API = Call(URL, "table", "query", "sys_user", user="svc.import", auth="oauth")
TOKEN_PW = Call(URL, "token", "OAuth token request", user="svc.import", auth="oauth")
TOKEN_CC = Call(URL, "token", "OAuth token request", user=None, auth="oauth")


def sn_error(message: str, detail: str = "") -> bytes:
    return json.dumps({"error": {"message": message, "detail": detail}, "status": "failure"}).encode()


def make_response(
    status: int,
    body: bytes | dict[str, Any] = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    request_body: bytes | None = None,
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if isinstance(body, dict) else body
    response.headers = CaseInsensitiveDict(headers or {})
    response.encoding = "utf-8"
    response.url = f"{URL}/api/now/import/u_x/insertMultiple"
    response.request = requests.Request(method, response.url, data=request_body).prepare()
    return response


# (id, call, status, body, headers, expected class, words the message must contain)
TABLE_OF_CASES: list[tuple[str, Call, int, bytes, dict[str, str], type[Exception], list[str]]] = [
    (
        "401 basic",
        IMPORT,
        401,
        sn_error("User Not Authenticated", "Required to provide Auth information"),
        {},
        AuthError,
        [
            "refused the credentials for user 'svc.import'",
            "401 User Not Authenticated: Required to provide Auth information",
            "[instance] username and password",
            "IMPORTER_INSTANCE__PASSWORD",
        ],
    ),
    (
        "401 oauth api",
        OAUTH_API,
        401,
        sn_error("User Not Authenticated"),
        {},
        AuthError,
        ["OAuth access token", "freshly issued"],
    ),
    (
        "403 import",
        IMPORT,
        403,
        sn_error("Operation Failed", "ACL Exception Insert Failed due to security constraints"),
        {},
        AuthError,
        ["'svc.import'", "staging table 'u_x'", "import_transformer", "import_admin", "lacks a role"],
    ),
    (
        "403 table",
        TABLE,
        403,
        sn_error("Operation Failed"),
        {},
        AuthError,
        ["table 'sys_user'", "read"],
    ),
    (
        "404 unknown staging table",
        IMPORT,
        404,
        sn_error("Requested URI does not represent any resource"),
        {},
        InstanceError,
        [
            "staging table 'u_x' does not exist on https://acme.service-now.com",
            "staging_table in the mapping",
        ],
    ),
    (
        "400 invalid table on import",
        IMPORT,
        400,
        sn_error("Invalid table u_x"),
        {},
        InstanceError,
        ["staging table 'u_x' does not exist", "staging_table in the mapping"],
    ),
    (
        "400 invalid table on table api",
        TABLE,
        400,
        sn_error("Invalid table sys_user"),
        {},
        InstanceError,
        ["table 'sys_user' does not exist", "check the table name"],
    ),
    ("413", IMPORT, 413, b"Request Entity Too Large", {}, RequestTooLarge, ["too large", "Split"]),
    (
        "400 exceeds max content length",
        IMPORT,
        400,
        sn_error("Request body exceeds max content length", "glide.rest.max_content_length"),
        {},
        RequestTooLarge,
        ["too large", "glide.rest.max_content_length"],
    ),
    (
        "400 request body exceeds the maximum",
        IMPORT,
        400,
        sn_error("Bad request", "The request body of 20000000 bytes exceeds the maximum of 10485760 bytes"),
        {},
        RequestTooLarge,
        ["too large"],
    ),
    (
        "400 a field too long is not a body too large",
        IMPORT,
        400,
        sn_error("Invalid value", "Value of field u_email is too long"),
        {},
        InstanceError,
        ["400 Invalid value"],
    ),
    (
        "429 seconds",
        IMPORT,
        429,
        sn_error("Rate limit exceeded"),
        {"Retry-After": "7"},
        TransientError,
        ["rate limiting", "7 s"],
    ),
    ("500 on a read", TABLE, 500, sn_error("Transaction cancelled"), {}, TransientError, ["500", "retry"]),
    (
        "502 on a read",
        TABLE,
        502,
        b"<html><title>Bad Gateway</title></html>",
        {},
        TransientError,
        ["Bad Gateway"],
    ),
    ("503 on a read", TABLE, 503, b"", {}, TransientError, ["503"]),
    ("504 on a read", STATS, 504, b"", {}, TransientError, ["504"]),
    ("503 on insertMultiple is retryable", IMPORT, 503, b"", {}, TransientError, ["503"]),
    (
        "500 on insertMultiple is ambiguous",
        IMPORT,
        500,
        sn_error("boom"),
        {},
        AmbiguousResponse,
        ["may have"],
    ),
    (
        "502 on insertMultiple is ambiguous",
        IMPORT,
        502,
        b"",
        {},
        AmbiguousResponse,
        ["Look the import set up"],
    ),
    ("504 on insertMultiple is ambiguous", IMPORT, 504, b"", {}, AmbiguousResponse, ["504"]),
    (
        "415",
        IMPORT,
        415,
        sn_error("Unsupported Media Type", "Content-Type must be application/json"),
        {},
        InstanceError,
        ["415 Unsupported Media Type", "application/json"],
    ),
    ("406", TABLE, 406, sn_error("Not Acceptable"), {}, InstanceError, ["406 Not Acceptable"]),
    ("400 other", TABLE, 400, sn_error("Invalid query"), {}, InstanceError, ["400 Invalid query"]),
    ("405", TABLE, 405, b"Method Not Allowed", {}, InstanceError, ["405 Method Not Allowed"]),
    ("404 on table api", TABLE, 404, sn_error("No Record found"), {}, InstanceError, ["404 No Record found"]),
    (
        "302 redirect",
        TABLE,
        302,
        b"",
        {"Location": "https://acme.service-now.com/login.do"},
        InstanceError,
        ["redirected", "login.do", "[instance] url"],
    ),
    (
        "token 401 password grant",
        TOKEN_PW,
        401,
        b'{"error_description": "access_denied", "error": "server_error"}',
        {},
        AuthError,
        ["client_id, client_secret, username and password", "OAuth application exists", "access_denied"],
    ),
    (
        "token 401 client_credentials",
        TOKEN_CC,
        401,
        b'{"error_description": "access_denied", "error": "server_error"}',
        {},
        AuthError,
        ["client_id and client_secret", "client_credentials", "grant_type.enabled"],
    ),
    ("token 404", TOKEN_PW, 404, b"", {}, AuthError, ["no OAuth token endpoint"]),
    ("token 503", TOKEN_PW, 503, b"", {}, TransientError, ["503"]),
]


@pytest.mark.parametrize(
    ("call", "status", "body", "headers", "expected", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in TABLE_OF_CASES],
)
def test_classify(
    call: Call,
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[Exception],
    words: list[str],
) -> None:
    response = make_response(status, body, headers, request_body=b'{"records": []}')
    with pytest.raises(InstanceError) as caught:
        classify(response, call)
    assert type(caught.value) is expected
    assert caught.value.status == status
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_passes(status: int) -> None:
    assert classify(make_response(status, b"{}"), IMPORT) is None


def test_too_large_names_the_body_size() -> None:
    with pytest.raises(RequestTooLarge) as caught:
        classify(make_response(413, b"", request_body=b"x" * 1234), IMPORT)
    assert "1234 bytes" in str(caught.value)
    assert caught.value.context["body_bytes"] == 1234


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    response = make_response(
        429, sn_error("Rate limit exceeded"), {"Retry-After": formatdate(now + 30, usegmt=True)}
    )
    assert retry_after_s(response, now=now) == pytest.approx(30, abs=1)


def test_retry_after_from_rate_limit_reset() -> None:
    now = 1_800_000_000.0
    response = make_response(429, sn_error("Rate limit exceeded"), {"X-RateLimit-Reset": str(int(now + 12))})
    assert retry_after_s(response, now=now) == pytest.approx(12)


def test_retry_after_absent_or_garbage() -> None:
    assert retry_after_s(make_response(429)) is None
    assert retry_after_s(make_response(429, b"", {"Retry-After": "soon"})) is None


def test_429_carries_retry_after() -> None:
    with pytest.raises(TransientError) as caught:
        classify(make_response(429, sn_error("Rate limit exceeded"), {"Retry-After": "2"}), TABLE)
    assert caught.value.retry_after == 2
    assert caught.value.context["reason"] == "429"


def test_error_body_shapes() -> None:
    assert error_body(make_response(400, sn_error("m", "d"))).summary(400) == "400 m: d"
    assert error_body(
        make_response(502, b"<html><head><title>Bad Gateway</title></head></html>")
    ).message == ("Bad Gateway")
    assert error_body(make_response(500, b"\n  plain   text \n")).message == "plain text"
    assert len(error_body(make_response(500, b"y" * 5000)).message) <= 200


def test_no_record_found() -> None:
    assert is_no_record_found(
        make_response(404, sn_error("No Record found", "Records matching query not found"))
    )
    assert not is_no_record_found(make_response(404, b"<html>Not Found</html>"))


def test_import_read_404_is_the_callers_business() -> None:
    # import_row_result accepts 404 before classify; classify itself reports it as a missing table.
    with pytest.raises(InstanceError, match="staging table 'u_x' does not exist"):
        classify(make_response(404, sn_error("No Record found")), IMPORT_READ)


# A 2xx is a success only when its body is what the endpoint promises (servicenow-notes §11).
QUOTA = {"message": "Transaction cancelled: maximum execution time exceeded", "detail": "quota rule"}
BAD_2XX: list[tuple[str, int, bytes | dict[str, Any]]] = [
    ("200 with an error object", 200, {"import_set_id": "abc", "error": QUOTA, "status": "failure"}),
    ("200 with status failure", 200, {"result": [], "status": "failure"}),
    ("200 not parsing", 200, b'{"import_set_id": "ab{"error": {"message": "Transaction cancelled"}}'),
    ("202 empty", 202, b""),
    ("201 without the promised field", 201, {"multi_import_set_id": "m"}),
]


@pytest.mark.parametrize(("status", "body"), [c[1:] for c in BAD_2XX], ids=[c[0] for c in BAD_2XX])
def test_a_2xx_that_is_not_what_insert_multiple_promises_is_ambiguous(
    status: int, body: bytes | dict[str, Any]
) -> None:
    with pytest.raises(AmbiguousResponse) as caught:
        validated_body(make_response(status, body), IMPORT, has_import_set_id)
    assert "Look the import set up" in str(caught.value)


@pytest.mark.parametrize(("status", "body"), [c[1:] for c in BAD_2XX], ids=[c[0] for c in BAD_2XX])
def test_a_2xx_that_is_not_what_a_read_promises_is_retried(status: int, body: bytes | dict[str, Any]) -> None:
    with pytest.raises(TransientError) as caught:
        validated_body(make_response(status, body, method="GET"), TABLE, has_result_list)
    assert not isinstance(caught.value, AmbiguousResponse)
    assert caught.value.status == status


def test_a_2xx_that_keeps_its_promise_is_returned() -> None:
    assert validated_body(make_response(201, {"import_set_id": "a"}), IMPORT, has_import_set_id) == {
        "import_set_id": "a"
    }
    assert validated_body(make_response(200, {"result": []}), TABLE, has_result_list) == {"result": []}
