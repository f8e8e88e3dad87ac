"""The client against the embedded ServiceNow sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

import importer.sandbox as sandbox_package
from importer.errors import AmbiguousResponse, AuthError, InstanceError, RequestTooLarge, TransientError
from importer.sandbox import defaults
from importer.servicenow import ImportSetRef, InstanceClient
from tests.waiting import accepts_connections, wait_until

HR = "u_hr_user_import"

MakeClient = Callable[..., InstanceClient]


def hr_rows(count: int, *, start: int = 1000, source: str = "test") -> list[dict[str, str]]:
    return [
        {
            "Employee Number": f"{start + i:06d}",
            "First Name": f"First{start + i}",
            "Last Name": f"Last{start + i}",
            "Email": f"user{start + i}@example.com",
            "Phone": "",
            "Department": "Engineering",
            "Start Date": "2024-01-15",
            "Title": "Engineer",
            "Source": source,
        }
        for i in range(count)
    ]


def records_body(rows: list[dict[str, str]]) -> bytes:
    return json.dumps({"records": rows}).encode()


def wait_for_transform(
    client: InstanceClient, ref: ImportSetRef, rows: int, timeout_s: float = 10
) -> list[dict]:
    """The staging rows of an import set once none is pending any more."""

    def transformed() -> list[dict] | None:
        staged = list(client.query(HR, f"sys_import_set={ref.import_set_id}"))
        pending = [row for row in staged if row.get("sys_import_state") in ("", "pending")]
        return staged if len(staged) == rows and not pending else None

    return wait_until(transformed, timeout_s, f"import set {ref.import_set_id} to transform", interval=0.05)


def set_token_lifetime(server: Any, seconds: float) -> None:
    response = requests.post(
        f"{server.url}/sandbox/admin/oauth",
        json={"access_token_lifetime_s": seconds},
        auth=(defaults.ADMIN_USER, defaults.ADMIN_PASSWORD),
        timeout=5,
    )
    response.raise_for_status()


def begin_outage(server: Any, seconds: float) -> None:
    """Start an outage and wait until the listening socket is really closed: the sandbox closes
    it while its serving loop still polls it, so for up to one poll interval (50 ms) connections
    are still accepted into the backlog, then reset after the request was sent (which the client
    rightly reports as ambiguous for insertMultiple)."""
    server.set_faults(outage_s=seconds)
    wait_until(lambda: not accepts_connections(server.host, server.port), 5, "connections to be refused")


def default_data(**instance: Any) -> dict[str, Any]:
    """The sandbox's default data set with some [instance] settings changed."""
    with open(Path(sandbox_package.__file__).parent / "data" / "default.yaml", encoding="utf-8") as file:
        data: dict[str, Any] = yaml.safe_load(file)
    data["instance"].update(instance)
    return data


def oauth(grant: str = "password", **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "auth": "oauth",
        "grant": grant,
        "client_id": defaults.OAUTH_CLIENT_ID,
        "client_secret": defaults.OAUTH_CLIENT_SECRET,
    }
    if grant == "client_credentials":
        values.update(username=None, password=None)
    values.update(overrides)
    return values


# -- the happy path -----------------------------------------------------------------------


def test_insert_multiple_then_read_results(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    ref = client.insert_multiple(HR, records_body(hr_rows(3)))
    assert ref.import_set_id and ref.multi_import_set_id
    staged = wait_for_transform(client, ref, 3)
    for row in staged:
        result = client.import_row_result(HR, row["sys_id"])
        assert result is not None
        assert result["result"][0]["status"] in ("inserted", "updated"), result
    assert client.count("sys_user", "sourceSTARTSWITHtest^employee_numberIN001000,001001,001002") == 3


def test_insert_multiple_into_the_same_multi_import_set(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    first = client.insert_multiple(HR, records_body(hr_rows(2, start=2000)))
    second = client.insert_multiple(
        HR,
        records_body(hr_rows(2, start=2002)),
        run_after=first.import_set_id,
        multi_import_set_id=first.multi_import_set_id,
    )
    assert second.multi_import_set_id == first.multi_import_set_id
    assert second.import_set_id != first.import_set_id


def test_insert_one_is_synchronous(sandbox: Any, make_client: MakeClient) -> None:
    result = make_client(sandbox).insert_one(HR, hr_rows(1, start=3000)[0])
    assert result["staging_table"] == HR
    assert result["result"][0]["status"] == "inserted"
    assert result["result"][0]["table"] == "sys_user"


def test_import_row_result_of_a_missing_row_is_none(sandbox: Any, make_client: MakeClient) -> None:
    assert make_client(sandbox).import_row_result(HR, "0" * 32) is None


def test_get_record(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    ada = next(client.query("sys_user", "employee_number=000042", fields=["sys_id", "first_name"]))
    assert set(ada) == {"sys_id", "first_name"}
    record = client.get_record("sys_user", ada["sys_id"], fields=["first_name", "last_name"])
    assert record == {"first_name": "Ada", "last_name": "Lovelace"}
    assert client.get_record("sys_user", "f" * 32) is None


# -- pagination and counts ----------------------------------------------------------------


def test_query_follows_pages(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    wait_for_transform(client, client.insert_multiple(HR, records_body(hr_rows(5, start=1500))), 5)
    everyone = list(client.query("sys_user", page_size=1000))
    assert len(everyone) == 7  # two in the default data
    for page_size in (1, 2, 3):
        paged = list(client.query("sys_user", page_size=page_size))
        assert [row["sys_id"] for row in paged] == [row["sys_id"] for row in everyone]
    assert client.count("sys_user") == len(everyone)


def test_query_over_many_pages_after_an_import(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    ref = client.insert_multiple(HR, records_body(hr_rows(25, start=4000)))
    wait_for_transform(client, ref, 25)
    rows = list(client.query(HR, f"sys_import_set={ref.import_set_id}", page_size=7, fields=["sys_id"]))
    assert len({row["sys_id"] for row in rows}) == 25


def test_query_empty_result_yields_nothing(sandbox: Any, make_client: MakeClient) -> None:
    assert list(make_client(sandbox).query("sys_user", "employee_number=nobody")) == []


def test_query_display_value_and_references(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    (raw,) = client.query("sys_user", "employee_number=000042", fields=["department"])
    (shown,) = client.query("sys_user", "employee_number=000042", fields=["department"], display_value="true")
    assert isinstance(raw["department"], str)  # sysparm_exclude_reference_link=true: no {"link", "value"}
    assert shown["department"] == "Engineering"


def test_count_grouped_and_ungrouped(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    total = client.count("cmn_department")
    assert total == 4
    assert client.count("cmn_department", "id=ENG") == 1
    grouped = client.count("cmn_department", group_by=["id"])
    assert grouped == {("ENG",): 1, ("FIN",): 1, ("HR",): 1, ("OPS",): 1}
    with pytest.raises(InstanceError, match="ignored sysparm_group_by=no_such_field"):
        client.count("cmn_department", group_by=["no_such_field"])
    by_title = client.count("sys_user", group_by=["title"])
    assert isinstance(by_title, dict)
    assert sum(by_title.values()) == client.count("sys_user")


# -- authentication -----------------------------------------------------------------------


def test_bad_password(sandbox: Any, make_client: MakeClient) -> None:
    reasons: list[str] = []
    client = make_client(sandbox, password="not-the-password-123", on_retry=lambda r, s: reasons.append(r))
    with pytest.raises(AuthError) as caught:
        client.insert_multiple(HR, records_body(hr_rows(1)))
    message = str(caught.value)
    assert caught.value.status == 401
    assert f"user '{defaults.IMPORT_USER}'" in message
    assert "[instance] username and password" in message
    assert "not-the-password-123" not in message
    assert reasons == []  # a refusal is not retried


def test_no_roles_is_forbidden(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox, username=defaults.NO_ROLES_USER, password=defaults.NO_ROLES_PASSWORD)
    with pytest.raises(AuthError) as caught:
        client.insert_multiple(HR, records_body(hr_rows(1)))
    assert caught.value.status == 403
    assert "import_transformer" in str(caught.value)
    assert defaults.NO_ROLES_USER in str(caught.value)


def test_unknown_staging_table(sandbox: Any, make_client: MakeClient) -> None:
    with pytest.raises(InstanceError) as caught:
        make_client(sandbox).insert_multiple("u_no_such_import", records_body(hr_rows(1)))
    assert not isinstance(caught.value, TransientError)
    assert "staging table 'u_no_such_import' does not exist" in str(caught.value)
    assert sandbox.url in str(caught.value)


@pytest.mark.parametrize("grant", ["password", "client_credentials"])
def test_oauth(sandbox: Any, make_client: MakeClient, grant: str) -> None:
    client = make_client(sandbox, **oauth(grant))
    assert client.count("cmn_department") == 4
    ref = client.insert_multiple(HR, records_body(hr_rows(2, start=5000)))
    assert ref.import_set_id


def test_oauth_bad_secret(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox, **oauth(client_secret="wrong-secret-456"))
    with pytest.raises(AuthError) as caught:
        client.count("cmn_department")
    message = str(caught.value)
    assert "client_id, client_secret, username and password" in message
    assert "OAuth application exists" in message
    assert "wrong-secret-456" not in message


def test_oauth_token_expiry_mid_run_is_refreshed(
    sandbox: Any, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="importer.servicenow")
    # The sandbox, like ServiceNow, reports one second less than the lifetime: expires_in 1.
    set_token_lifetime(sandbox, 2)
    reasons: list[str] = []
    client = make_client(sandbox, on_retry=lambda r, s: reasons.append(r), **oauth())
    calls = 0

    def call_then_count_grants() -> bool:
        nonlocal calls
        assert client.count("cmn_department") == 4
        calls += 1
        return int(sandbox.counters()["requests"].get("oauth", 0)) >= 4

    # Calls every 0.1 s over several token lifetimes: until the token was granted, then refreshed 3 times.
    wait_until(call_then_count_grants, 30, "the token to be refreshed three times", interval=0.1)
    assert calls > 10
    assert reasons == []
    requests_seen = sandbox.counters()["requests"]
    assert requests_seen["stats"] == calls  # refreshed before expiry: never a 401 and a resend
    assert requests_seen["oauth"] >= 4
    assert any("OAuth token refreshed" in record.getMessage() for record in caplog.records)


def test_oauth_rejected_token_is_replaced_once(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox, **oauth())
    assert client.count("cmn_department") == 4
    # As if the instance had revoked the token: the next call is answered 401, and the client
    # fetches a new token and sends the request once more.
    client._auth._token.access = "revoked-token"  # type: ignore[attr-defined]
    assert client.count("cmn_department") == 4


def test_oauth_client_credentials_disabled(make_sandbox: Any, make_client: MakeClient) -> None:
    server = make_sandbox(default_data(client_credentials_grant=False))
    client = make_client(server, **oauth("client_credentials"))
    with pytest.raises(AuthError) as caught:
        client.count("cmn_department")
    assert "client_credentials grant is enabled" in str(caught.value)


def test_body_too_large(make_sandbox: Any, make_client: MakeClient) -> None:
    server = make_sandbox(default_data(max_content_length_bytes=2000))
    client = make_client(server)
    with pytest.raises(RequestTooLarge) as caught:
        client.insert_multiple(HR, records_body(hr_rows(20)))
    assert caught.value.status == 413
    assert "Split" in str(caught.value)
    assert client.insert_multiple(HR, records_body(hr_rows(2))).import_set_id  # a smaller batch passes


# -- faults -------------------------------------------------------------------------------


def test_429_storm_completes_and_honours_retry_after(sandbox: Any, make_client: MakeClient) -> None:
    # Retry-After is whole seconds (as on ServiceNow): 0.3 is sent as "1".
    sandbox.set_faults(rate_limit_every=2, rate_limit_retry_after=0.3)
    reasons: list[str] = []
    client = make_client(sandbox, on_retry=lambda r, s: reasons.append(r))
    started = time.monotonic()
    refs = [client.insert_multiple(HR, records_body(hr_rows(2, start=6000 + 2 * i))) for i in range(3)]
    elapsed = time.monotonic() - started
    sandbox.clear_faults()
    assert len({ref.import_set_id for ref in refs}) == 3
    assert reasons and set(reasons) == {"429"}
    assert elapsed >= 0.95 * len(reasons)


def test_503_fraction_completes(sandbox: Any, make_client: MakeClient) -> None:
    sandbox.set_faults(error_503_fraction=0.3)
    reasons: list[str] = []
    client = make_client(sandbox, on_retry=lambda r, s: reasons.append(r))
    refs = [client.insert_multiple(HR, records_body(hr_rows(1, start=7000 + i))) for i in range(10)]
    counts = [client.count("cmn_department") for _ in range(10)]
    sandbox.clear_faults()
    assert len({ref.import_set_id for ref in refs}) == 10
    assert counts == [4] * 10
    assert set(reasons) <= {"503"}


def test_outage_then_recovery(sandbox: Any, make_client: MakeClient) -> None:
    reasons: list[str] = []
    client = make_client(
        sandbox,
        on_retry=lambda r, s: reasons.append(r),
        retry_attempts=20,
        retry_backoff_s=0.1,
        retry_backoff_max_s=0.3,
    )
    # A fresh client: no kept-alive connection, so every attempt is a connect that is refused.
    # (On a connection kept alive from before the outage the sandbox reads the request and then
    # drops it, which for insertMultiple is rightly ambiguous: see the next test.)
    begin_outage(sandbox, 1.0)
    started = time.monotonic()
    ref = client.insert_multiple(HR, records_body(hr_rows(1, start=8000)))
    assert ref.import_set_id
    assert time.monotonic() - started >= 0.5
    assert "connection" in reasons


def test_outage_on_a_kept_alive_connection(sandbox: Any, make_client: MakeClient) -> None:
    reasons: list[str] = []
    client = make_client(
        sandbox, on_retry=lambda r, s: reasons.append(r), retry_attempts=20, retry_backoff_s=0.1
    )
    assert client.count("cmn_department") == 4  # leaves a kept-alive connection in the pool
    begin_outage(sandbox, 1.0)
    # A read that loses its answer is simply sent again until the instance is back.
    assert client.count("cmn_department") == 4
    assert "connection" in reasons
    # A change whose answer is lost is never resent blindly: the caller must look first.
    begin_outage(sandbox, 1.0)
    try:
        ref = client.insert_multiple(HR, records_body(hr_rows(1, start=8100)))
    except AmbiguousResponse:
        pass  # the request reached a kept-alive connection that the instance dropped
    else:
        assert ref.import_set_id  # the connection was seen closed and a new one refused: retried


def test_outage_longer_than_the_retries(sandbox: Any, make_client: MakeClient) -> None:
    begin_outage(sandbox, 5.0)
    client = make_client(sandbox, retry_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.1)
    with pytest.raises(TransientError) as caught:
        client.count("cmn_department")
    assert not isinstance(caught.value, AmbiguousResponse)
    assert "instance unreachable" in str(caught.value)
    assert "Gave up after 3 attempts" in str(caught.value)
    sandbox.clear_faults()


def test_drop_after_commit_is_ambiguous_and_the_import_set_exists(
    sandbox: Any, make_client: MakeClient
) -> None:
    client = make_client(sandbox)
    before = client.count("sys_import_set")
    sandbox.set_faults(drop_after_commit=[1])
    with pytest.raises(AmbiguousResponse) as caught:
        client.insert_multiple(HR, records_body(hr_rows(3, start=9000, source="dropped-batch")))
    sandbox.clear_faults()
    assert "Look the import set up" in str(caught.value)
    # Not retried: exactly one import set was created, and it holds the rows.
    assert client.count("sys_import_set") == before + 1
    assert client.count(HR, "u_source=dropped-batch") == 3


def test_reads_are_retried_after_a_dropped_connection(sandbox: Any, make_client: MakeClient) -> None:
    # A read that loses its answer is simply asked again (here: a connection refused meanwhile).
    begin_outage(sandbox, 0.5)
    assert make_client(sandbox).count("cmn_department") == 4


def test_stop_event_interrupts_a_retry_wait(sandbox: Any, make_client: MakeClient) -> None:
    sandbox.set_faults(rate_limit_every=1, rate_limit_retry_after=30)
    stop = threading.Event()
    client = make_client(sandbox, stop_event=stop)

    def stop_once_refused() -> None:  # the client is then waiting the 30 s it was told to
        try:
            wait_until(lambda: sandbox.counters()["faults_injected"]["429"] >= 1, 10, "the first refusal")
        finally:
            stop.set()

    stopper = threading.Thread(target=stop_once_refused)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(TransientError, match="stopped"):
        client.count("cmn_department")
    stopper.join()
    assert time.monotonic() - started < 3
    sandbox.clear_faults()


# -- secrets ------------------------------------------------------------------------------


def test_secrets_never_in_errors_or_logs(
    sandbox: Any, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [
        "wrong-password-789",
        "wrong-client-secret-789",
        defaults.IMPORT_PASSWORD,
        defaults.OAUTH_CLIENT_SECRET,
    ]
    errors: list[BaseException] = []
    for overrides in (
        {"password": "wrong-password-789"},
        oauth(password="wrong-password-789"),
        oauth(client_secret="wrong-client-secret-789"),
        oauth("client_credentials", client_secret="wrong-client-secret-789"),
    ):
        client = make_client(sandbox, **overrides)
        with pytest.raises(AuthError) as caught:
            client.count("cmn_department")
        errors.append(caught.value)
        assert "wrong-" not in repr(client)
    # A retried run with good credentials and a token, logged at DEBUG.
    sandbox.set_faults(rate_limit_every=3, rate_limit_retry_after=0.1)
    client = make_client(sandbox, **oauth())
    client.insert_multiple(HR, records_body(hr_rows(2, start=9500)))
    list(client.query("sys_user", page_size=2))
    sandbox.clear_faults()
    token = client._auth._token.access  # type: ignore[attr-defined]
    texts = [record.getMessage() for record in caplog.records]
    texts += [str(error) for error in errors] + [repr(error.context) for error in errors]  # type: ignore[attr-defined]
    for text in texts:
        for secret in [*secrets, token]:
            assert secret not in text
        assert "Authorization" not in text
