"""OAuth (/oauth_token.do) grants, lifetimes, expiry and refresh; Bearer tokens on the APIs."""

from __future__ import annotations

import requests

from importer.sandbox import defaults as d
from tests.waiting import wait_until

FAILURE = {"error_description": "access_denied", "error": "server_error"}


def _token(srv, **form: str) -> requests.Response:
    base = {"client_id": d.OAUTH_CLIENT_ID, "client_secret": d.OAUTH_CLIENT_SECRET}
    return requests.post(f"{srv.url}/oauth_token.do", data={**base, **form})


def _get_sets(srv, token: str) -> requests.Response:
    return requests.get(
        f"{srv.url}/api/now/table/sys_import_set", headers={"Authorization": f"Bearer {token}"}
    )


def test_password_grant(sandbox):
    r = _token(sandbox, grant_type="password", username=d.IMPORT_USER, password=d.IMPORT_PASSWORD)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"scope", "token_type", "expires_in", "refresh_token", "access_token"}
    assert (body["scope"], body["token_type"], body["expires_in"]) == ("useraccount", "Bearer", 1799)
    assert _get_sets(sandbox, body["access_token"]).status_code == 200
    r = requests.post(
        f"{sandbox.url}/api/now/import/u_department_import",
        json={"Code": "B1", "Name": "Bearer"},
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert r.status_code == 201


def test_client_credentials_grant_only_for_clients_allowed_to(make_sandbox):
    data = {
        "users": [{"user_name": "app", "password": "pw", "roles": ["import_admin"]}],
        "oauth": {
            "clients": [
                {"client_id": "with_user", "client_secret": "s1", "application_user": "app"},
                {"client_id": "without", "client_secret": "s2"},
            ]
        },
    }
    srv = make_sandbox(data)
    r = requests.post(
        f"{srv.url}/oauth_token.do",
        data={"grant_type": "client_credentials", "client_id": "with_user", "client_secret": "s1"},
    )
    assert r.status_code == 200
    assert "refresh_token" not in r.json()
    assert _get_sets(srv, r.json()["access_token"]).status_code == 200
    r = requests.post(
        f"{srv.url}/oauth_token.do",
        data={"grant_type": "client_credentials", "client_id": "without", "client_secret": "s2"},
    )
    assert (r.status_code, r.json()) == (401, FAILURE)


def test_token_failures_are_all_alike(sandbox):
    cases = [
        {"grant_type": "password", "username": d.IMPORT_USER, "password": "wrong"},
        {
            "grant_type": "password",
            "username": d.IMPORT_USER,
            "password": d.IMPORT_PASSWORD,
            "client_secret": "wrong",
        },
        {"grant_type": "refresh_token", "refresh_token": "nope"},
        {"grant_type": "authorization_code"},
    ]
    for form in cases:
        r = _token(sandbox, **form)
        assert (r.status_code, r.json()) == (401, FAILURE)
    r = requests.post(f"{sandbox.url}/oauth_token.do", json={"grant_type": "password"})
    assert (r.status_code, r.json()) == (401, FAILURE)


def test_access_token_expires_and_refresh_gives_a_new_one(sandbox):
    requests.post(f"{sandbox.url}/sandbox/admin/oauth", json={"access_token_lifetime_s": 0.3})
    body = _token(sandbox, grant_type="password", username=d.IMPORT_USER, password=d.IMPORT_PASSWORD).json()
    assert body["expires_in"] == 0
    assert _get_sets(sandbox, body["access_token"]).status_code == 200
    answers: list[requests.Response] = []

    def refused() -> bool:
        answers.append(_get_sets(sandbox, body["access_token"]))
        return answers[-1].status_code != 200

    wait_until(refused, 5, "the access token to expire")
    expired = answers[-1]
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "User Not Authenticated"
    requests.post(f"{sandbox.url}/sandbox/admin/oauth", json={"access_token_lifetime_s": 1800})
    fresh = _token(sandbox, grant_type="refresh_token", refresh_token=body["refresh_token"]).json()
    assert fresh["access_token"] != body["access_token"]
    assert fresh["expires_in"] == 1799
    assert _get_sets(sandbox, fresh["access_token"]).status_code == 200


def test_refresh_token_expires(sandbox):
    requests.post(f"{sandbox.url}/sandbox/admin/oauth", json={"refresh_token_lifetime_s": 0.2})
    body = _token(sandbox, grant_type="password", username=d.IMPORT_USER, password=d.IMPORT_PASSWORD).json()
    answers: list[requests.Response] = []

    def refused() -> bool:
        answers.append(_token(sandbox, grant_type="refresh_token", refresh_token=body["refresh_token"]))
        return answers[-1].status_code != 200

    wait_until(refused, 5, "the refresh token to expire")
    r = answers[-1]
    assert (r.status_code, r.json()) == (401, FAILURE)


def test_bad_bearer_token_is_401(sandbox):
    assert _get_sets(sandbox, "made-up").status_code == 401
    assert sandbox.counters()["requests"]["table"] == 1
