"""The instance client: Import Set, Table and Aggregate APIs over keep-alive sessions, one per thread.

A real instance serves one transaction at a time per session (its ``JSESSIONID`` cookie): a
client whose threads shared one cookie would be serialised by the instance, and past ten queued
requests see them dropped with a 202 (servicenow-notes §11). So each thread (each daemon worker,
the poller) has its own ``requests.Session``: its own cookie and its own connection pool.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from importer import __version__
from importer.errors import InstanceError, TransientError

from .auth import Authenticator, make_authenticator
from .importsets import ImportSets
from .responses import (
    Call,
    Endpoint,
    Promise,
    classify,
    decoded,
    has_import_set_id,
    has_result_list,
    has_result_object,
    is_no_record_found,
    is_object,
    validated_body,
)
from .retry import OnRetry, RetryPolicy, call_with_retries
from .settings import ClientSettings
from .transport import send

log = logging.getLogger(__name__)

USER_AGENT = f"importer/{__version__}"


@dataclass(frozen=True)
class ImportSetRef:
    import_set_id: str  # sys_import_set sys_id
    multi_import_set_id: str  # sys_multi_import_set sys_id


class ShortRead(TransientError):
    """A page held fewer rows than the instance counted (an ACL filtered them): retried."""


class InstanceClient:
    """Talks to one ServiceNow instance. Thread-safe for concurrent calls (a session per thread,
    one shared token); close it, or use it as a context manager."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        on_retry: OnRetry | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self._base = settings.base_url
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        # Tokens are fetched on a session of their own (under the authenticator's lock).
        self._auth: Authenticator = make_authenticator(settings, self._new_session())
        self._policy = RetryPolicy.from_settings(settings)
        self._on_retry = on_retry
        self._stop_event = stop_event
        uses_user = settings.auth == "basic" or settings.grant == "password"
        self._user = settings.username if uses_user else None

    def __repr__(self) -> str:
        return f"InstanceClient({self._base!r}, auth={self.settings.auth!r}, user={self._user!r})"

    def __enter__(self) -> InstanceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        session.verify = self.settings.verify_tls
        with self._sessions_lock:
            self._sessions.append(session)
        return session

    @functools.cached_property
    def import_sets(self) -> ImportSets:
        """Import sets, staging rows, staging columns and transform maps by name."""
        return ImportSets(self)

    @property
    def _session(self) -> requests.Session:
        """This thread's session: its own JSESSIONID cookie and connection pool."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session()
        return session

    # -- Import Set API -------------------------------------------------------------------

    def insert_multiple(
        self,
        staging_table: str,
        body: bytes,
        *,
        run_after: str | None = None,
        multi_import_set_id: str | None = None,
    ) -> ImportSetRef:
        """POST a pre-encoded ``{"records": [...]}`` to the staging table (transformed
        asynchronously by default). Not idempotent: a lost answer raises AmbiguousResponse."""
        call = self._call("import", "insertMultiple", staging_table, idempotent=False)
        params = {
            key: value
            for key, value in (("run_after", run_after), ("multi_import_set_id", multi_import_set_id))
            if value
        }
        response = self._exchange(
            "POST",
            self._path("import", staging_table, "insertMultiple"),
            call,
            params=params,
            body=body,
            promise=has_import_set_id,
        )
        data = decoded(response)
        # Documented at the top level; tolerate a {"result": {...}} wrapper.
        if isinstance(data.get("result"), dict):
            data = data["result"]
        import_set_id = data["import_set_id"]
        return ImportSetRef(str(import_set_id), str(data.get("multi_import_set_id") or ""))

    def insert_one(self, staging_table: str, record: dict[str, str]) -> dict[str, Any]:
        """POST one record; the instance transforms it synchronously and answers with the
        transform results. Not idempotent: a lost answer raises AmbiguousResponse."""
        call = self._call("import", "insert", staging_table, idempotent=False)
        body = json.dumps(record, ensure_ascii=False).encode("utf-8")
        response = self._exchange(
            "POST", self._path("import", staging_table), call, body=body, promise=has_result_list
        )
        return self._json_object(response, call)

    def import_row_result(self, staging_table: str, staging_sys_id: str) -> dict[str, Any] | None:
        """The transform result of one staging row; None once the row is gone (404: the Import
        Set Deleter removes import sets after 7 days by default)."""
        call = self._call("import", "read import result", staging_table)
        response = self._exchange(
            "GET",
            self._path("import", staging_table, staging_sys_id),
            call,
            accept_statuses=(404,),
            promise=has_result_list,
        )
        if response.status_code == 404:
            return None
        return self._json_object(response, call)

    # -- Table API ------------------------------------------------------------------------

    def query(
        self,
        table: str,
        query: str = "",
        *,
        fields: Sequence[str] | None = None,
        page_size: int = 1000,
        display_value: Literal["true", "false", "all"] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every record of ``table`` matching the encoded ``query``, page after page."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        call = self._call("table", "query", table)
        # Offsets are stable only over a stable order: add one unless the caller chose one.
        if "ORDERBY" not in query:
            query = f"{query}^ORDERBYsys_id" if query else "ORDERBYsys_id"
        params: dict[str, str] = {
            "sysparm_query": query,
            "sysparm_limit": str(page_size),
            "sysparm_offset": "0",
            "sysparm_exclude_reference_link": "true",
        }
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        if display_value is not None:
            params["sysparm_display_value"] = display_value
        url: str = self._path("table", table)
        page_params: dict[str, str] | None = params
        offset = 0
        seen: set[str] = set()
        while True:
            response = self._exchange(
                "GET",
                url,
                call,
                params=page_params,
                accept_statuses=(404,),
                promise=has_result_list,
                check=_full_page(call, page_size, offset, self._user),
            )
            if response.status_code == 404:
                if is_no_record_found(response):  # v1: a query matching nothing (or past the end)
                    return
                classify(response, call)
            rows = self._result(response, call, list)
            total = response.headers.get("X-Total-Count")
            log.debug("%s: %d records at offset %d of %s", call.what, len(rows), offset, total or "?")
            yield from rows
            if not rows:
                return
            offset += len(rows)
            links = response.links
            if links:
                next_url = links.get("next", {}).get("url")
                if not next_url:
                    return
                url, page_params = self._same_origin(next_url), None
                if url in seen:
                    raise InstanceError(
                        f'{self._base} answered {call.what} with a Link rel="next" to a page already read '
                        f"({url}); stopping rather than looping.",
                        instance=self._base,
                        table=table,
                    )
                seen.add(url)
            else:
                if len(rows) < page_size:
                    return
                params = {**params, "sysparm_offset": str(offset)}
                page_params = params

    def check_readable(self, table: str) -> None:
        """Raise (naming the table and what grants access) unless the user may read ``table``:
        a 403, or rows the instance counts but does not return (an ACL filters them)."""
        call = self._call("table", "read", table)
        params = {"sysparm_limit": "1", "sysparm_fields": "sys_id"}
        self._exchange(
            "GET",
            self._path("table", table),
            call,
            params=params,
            promise=has_result_list,
            check=_full_page(call, 1, 0, self._user),
        )

    def check_insert_multiple(self, staging_table: str) -> None:
        """Raise unless the user may post to the staging table's insertMultiple (a 403 names the
        role). It posts no record: the instance answers with an empty import set."""
        self.insert_multiple(staging_table, b'{"records": []}')

    def get_record(
        self, table: str, sys_id: str, *, fields: Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """One record by sys_id; None when it does not exist (or an ACL hides it)."""
        call = self._call("table", "read record", table)
        params = {"sysparm_exclude_reference_link": "true"}
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        response = self._exchange(
            "GET",
            self._path("table", table, sys_id),
            call,
            params=params,
            accept_statuses=(404,),
            promise=has_result_object,
        )
        if response.status_code == 404:
            return None
        return self._result(response, call, dict)

    # -- Aggregate API --------------------------------------------------------------------

    def count(
        self, table: str, query: str = "", *, group_by: Sequence[str] | None = None
    ) -> int | dict[tuple[str, ...], int]:
        """The number of matching records, or with ``group_by`` a count per tuple of values."""
        call = self._call("stats", "count", table)
        params = {"sysparm_count": "true"}
        if query:
            params["sysparm_query"] = query
        if group_by:
            params["sysparm_group_by"] = ",".join(group_by)
        response = self._exchange("GET", self._path("stats", table), call, params=params)
        data = decoded(response)
        result = data.get("result") if isinstance(data, dict) else None
        try:
            if not group_by:
                if isinstance(result, list):  # some versions wrap even an ungrouped answer
                    result = result[0] if result else {"stats": {"count": "0"}}
                assert isinstance(result, dict)
                return int(result["stats"]["count"])
            if isinstance(result, dict):
                # The instance ignores group-by fields it does not know and answers ungrouped.
                raise InstanceError(
                    f"{self._base} ignored sysparm_group_by={','.join(group_by)} for {call.what}: "
                    f"check that table '{table}' has these fields.",
                    status=response.status_code,
                    instance=self._base,
                    table=table,
                )
            assert isinstance(result, list)
            counts: dict[tuple[str, ...], int] = {}
            for group in result:
                values = {item["field"]: str(item.get("value") or "") for item in group["groupby_fields"]}
                key = tuple(values.get(field, "") for field in group_by)
                counts[key] = counts.get(key, 0) + int(group["stats"]["count"])
            return counts
        except (AssertionError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise InstanceError(
                f"{self._base} answered {call.what} with an unexpected body: {str(data)[:200]}",
                status=response.status_code,
                instance=self._base,
                table=table,
            ) from exc

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, endpoint: Endpoint, action: str, table: str, *, idempotent: bool = True) -> Call:
        return Call(
            instance=self._base,
            endpoint=endpoint,
            action=action,
            table=table,
            user=self._user,
            auth=self.settings.auth,
            idempotent=idempotent,
        )

    def _path(self, api: str, *parts: str) -> str:
        return "/".join([f"{self._base}/api/now/{api}", *(quote(part, safe="") for part in parts)])

    def _same_origin(self, url: str) -> str:
        """A server-given URL (Link header) pointed at our instance URL, so credentials are only
        ever sent to the configured host even when the instance names itself differently."""
        ours, theirs = urlsplit(self._base), urlsplit(url)
        return urlunsplit((ours.scheme, ours.netloc, theirs.path, theirs.query, ""))

    def _exchange(
        self,
        method: str,
        url: str,
        call: Call,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        accept_statuses: tuple[int, ...] = (),
        promise: Promise = is_object,
        check: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """Send with retries; return a success whose body is what ``promise`` checks for (or an
        accepted status), raise otherwise. ``check`` may refuse a success (then it is retried)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}

        def attempt() -> requests.Response:
            response = self._send_authenticated(method, url, call, params=params, body=body, headers=headers)
            if response.status_code in accept_statuses:
                return response
            classify(response, call)
            validated_body(response, call, promise)
            if check is not None:
                check(response)
            return response

        return call_with_retries(
            attempt,
            policy=self._policy,
            what=f"{call.what} on {self._base}",
            stop_event=self._stop_event,
            on_retry=self._on_retry,
        )

    def _send_authenticated(
        self,
        method: str,
        url: str,
        call: Call,
        *,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> requests.Response:
        auth = self._auth.request_auth()
        response = send(
            self._session, method, url, call=call, timeout=self.settings.timeout_s,
            auth=auth, params=params, data=body, headers=headers,
        )  # fmt: skip
        if response.status_code == 401 and self._auth.can_reauthenticate:
            # The token was revoked or expired early: a request refused with 401 was not
            # processed, so one more try with a fresh token is safe even for insertMultiple.
            log.info("%s: 401 with the current OAuth token; fetching a new one", call.what)
            response.close()
            self._auth.reauthenticate(auth)
            response = send(
                self._session, method, url, call=call, timeout=self.settings.timeout_s,
                auth=self._auth.request_auth(), params=params, data=body, headers=headers,
            )  # fmt: skip
        return response

    def _json_object(self, response: requests.Response, call: Call) -> dict[str, Any]:
        data = decoded(response)
        if not isinstance(data, dict):
            raise InstanceError(
                f"{self._base} answered {call.what} with {type(data).__name__} instead of an object.",
                status=response.status_code,
                instance=self._base,
                table=call.table,
            )
        return data

    def _result(self, response: requests.Response, call: Call, kind: type) -> Any:
        data = self._json_object(response, call)
        result = data.get("result")
        if not isinstance(result, kind):
            raise InstanceError(
                f"{self._base} answered {call.what} without a 'result' {kind.__name__}: {str(data)[:200]}",
                status=response.status_code,
                instance=self._base,
                table=call.table,
            )
        return result


def _full_page(
    call: Call, page_size: int, offset: int, user: str | None
) -> Callable[[requests.Response], None]:
    """A check that a page holds as many rows as X-Total-Count says it should. ACLs filter rows
    after the query (KB3047115): a short or empty page is not proof that the rows are gone."""

    def check(response: requests.Response) -> None:
        total_text = response.headers.get("X-Total-Count")
        if not total_text or not total_text.strip().isdigit():
            return
        total = int(total_text)
        expected = max(0, min(page_size, total - offset))
        got = len(decoded(response)["result"])
        if got < expected:
            who = f"user '{user}'" if user else "the OAuth application user"
            raise ShortRead(
                f"{call.instance} counted {total} records of table '{call.table}' for {call.what} but "
                f"returned {got} of the {expected} expected at offset {offset}: an ACL hides them from "
                f"{who}. Give the user read access to '{call.table}' (a role its read ACLs name, e.g. "
                "import_admin for import set tables, or admin).",
                status=response.status_code,
                instance=call.instance,
                table=call.table,
                action=call.action,
                reason="acl",
            )

    return check
