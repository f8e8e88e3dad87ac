"""The sandbox's WSGI application: routing, auth, faults, and the Import Set, Table, Aggregate,
OAuth and admin endpoints. Answers are shaped like ServiceNow's (servicenow-notes.md)."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .appservice import AppService, AppServiceError, app_service_error
from .auth import Auth, OAuthError
from .counters import Counters
from .data import UserSpec
from .faults import FaultError, Faults
from .query import RenderOptions, parse_query, render, select
from .sessions import COOKIE, Sessions
from .store import Store
from .transform import TransformEngine

IMPORT_ROLES = frozenset({"import_transformer", "admin"})
APP_SERVICE_ROLES = frozenset({"app_service_admin", "admin"})
DEFAULT_LIMIT = 10000
_VERSION = re.compile(r"^/api/now/(v1|v2)/")
QUOTA_ERROR = {
    "message": "Transaction cancelled: maximum execution time exceeded",
    "detail": "Transaction cancelled by the quota rule 'REST Table API request timeout' after 60 seconds",
}

JSONValue = Any


class ApiError(Exception):
    """An answer with ServiceNow's error envelope."""

    def __init__(
        self, status: int, message: str, detail: str | None = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class DropConnection(Exception):
    """Close the connection without any HTTP answer."""


def json_response(body: JSONValue, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(exc: ApiError) -> Response:
    return json_response(
        {"error": {"message": exc.message, "detail": exc.detail}, "status": "failure"},
        exc.status,
        exc.headers,
    )


_RULES = [  # (path, methods, endpoint); Rule objects are made per app: a Rule binds to one Map
    ("/api/now/import/<staging>", ["POST"], "import"),
    ("/api/now/import/<staging>/insertMultiple", ["POST"], "insertMultiple"),
    ("/api/now/import/<staging>/<sys_id>", ["GET"], "import_get"),
    ("/api/now/table/<table>", ["GET"], "table"),
    ("/api/now/table/<table>/<sys_id>", ["GET"], "table"),
    ("/api/now/stats/<table>", ["GET"], "stats"),
    ("/api/now/cmdb/app_service/<sys_id>/getContent", ["GET"], "app_service:get_content"),
    ("/api/now/cmdb/app_service/create", ["POST"], "app_service:create"),
    ("/api/now/cmdb/csdm/app_service/find_service", ["GET"], "app_service:find_service"),
    ("/api/now/cmdb/csdm/app_service/register_service", ["POST"], "app_service:register_service"),
    ("/api/now/cmdb/csdm/app_service/<sys_id>/populate_service", ["PUT"], "app_service:populate_service"),
    ("/api/now/cmdb/csdm/app_service/<sys_id>/service_details", ["PUT"], "app_service:service_details"),
    ("/oauth_token.do", ["POST"], "oauth"),
    ("/sandbox/admin/counters", ["GET"], "admin:counters"),
    ("/sandbox/admin/faults", ["GET", "POST", "DELETE"], "admin:faults"),
    ("/sandbox/admin/oauth", ["POST"], "admin:oauth"),
    ("/sandbox/admin/data", ["GET"], "admin:data"),
]


class SandboxApp:
    def __init__(
        self,
        store: Store,
        engine: TransformEngine,
        auth: Auth,
        faults: Faults,
        counters: Counters,
        stopping: threading.Event,
        set_faults: Callable[..., dict[str, Any]],
        outage_active: Callable[[], bool],
    ) -> None:
        self.store = store
        self.engine = engine
        self.auth = auth
        self.faults = faults
        self.counters = counters
        self.stopping = stopping
        self.set_faults = set_faults
        self.outage_active = outage_active
        self.max_content_length = store.spec.max_content_length_bytes
        self.app_service = AppService(store)
        self.sessions = Sessions()
        self.url_map = Map(
            [Rule(path, methods=methods, endpoint=endpoint) for path, methods, endpoint in _RULES],
            strict_slashes=False,
            merge_slashes=False,
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        self.engine.request_started()
        try:
            response = self.dispatch(request)
        except DropConnection:
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            response = Response(b"", status=500)
            environ["sandbox.close"] = True
        finally:
            self.engine.request_finished()
        stream = request.stream
        if request.content_length is None and request.headers.get("Transfer-Encoding"):
            environ["sandbox.close"] = True
        elif not getattr(stream, "is_exhausted", True):
            # The body was not read (refused before it was): the connection cannot be reused.
            environ["sandbox.close"] = True
        return response(environ, start_response)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, request: Request) -> Response:
        path = request.path
        version = None
        found = _VERSION.match(path)
        if found:
            version = found.group(1)
            path = "/api/now/" + path[found.end() :]
        adapter = self.url_map.bind("sandbox", path_info=path)
        try:
            endpoint, args = adapter.match(method=request.method)
        except NotFound:
            return error_response(ApiError(400, "Requested URI does not represent any resource", ""))
        except MethodNotAllowed:
            return error_response(
                ApiError(405, "Method not Supported", f"{request.method} is not supported by this resource")
            )
        kind, _, action = str(endpoint).partition(":")
        if kind == "admin":
            return self.admin(action, request)
        self.counters.add_request(kind)
        if request.environ.get("sandbox.requests_on_connection", 1) > 1 and self.faults.picks(
            "close_on_reuse", kind
        ):
            # The instance closed this idle keep-alive connection just as the client reused it:
            # the request is never read, nothing happens.
            self.counters.add_fault("closed_on_reuse")
            raise DropConnection()
        if kind == "oauth":
            return self.dispatch_api(request, kind, action, args, version)
        sid, new = self.sessions.session_for(request.cookies.get(COOKIE))
        if not self.sessions.enter(sid, kind):
            # More than 10 requests queued on one session: answered 202, dropped unprocessed (§11).
            self.counters.add_fault("session_overflow")
            response = Response(b"", status=202)
        else:
            try:
                response = self.dispatch_api(request, kind, action, args, version)
            finally:
                self.sessions.leave(sid)
        if new:
            response.set_cookie(COOKIE, sid, path="/", httponly=True)
        return response

    def dispatch_api(
        self, request: Request, kind: str, action: str, args: Mapping[str, Any], version: str | None
    ) -> Response:
        quota_cancel = self.faults.picks("quota_cancel", kind)
        response = self._dispatch_api(request, kind, action, args, version)
        if quota_cancel and 200 <= response.status_code < 300:
            self.counters.add_fault("quota_cancel")
            return self._quota_cancelled(response)
        return response

    def _quota_cancelled(self, response: Response) -> Response:
        """A transaction cancelled by a quota rule after it started: 200, with an error object
        appended to a possibly malformed body (KB1297438). Its work is committed."""
        text = response.get_data(as_text=True)
        if self.faults.value("quota_cancel_body", "partial") == "unparsable":
            body = text[: max(1, len(text) // 2)] + json.dumps({"error": QUOTA_ERROR, "status": "failure"})
            return Response(body, status=200, mimetype="application/json")
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {"result": data}
        if isinstance(data.get("result"), list):
            data["result"] = data["result"][: len(data["result"]) // 2]
        data.update(error=QUOTA_ERROR, status="failure")
        answer = json_response(data, 200)
        for key in ("X-Total-Count", "Link"):
            if key in response.headers:
                answer.headers[key] = response.headers[key]
        return answer

    def _dispatch_api(
        self, request: Request, kind: str, action: str, args: Mapping[str, Any], version: str | None
    ) -> Response:
        if self.outage_active():
            self.counters.add_fault("outage")
            raise DropConnection()
        decision = self.faults.decide(kind)
        if decision.latency_s:
            with self.engine.on_the_wire():
                self.stopping.wait(decision.latency_s)
        if decision.status == 429:
            self.counters.add_fault("429")
            return error_response(
                ApiError(
                    429,
                    "Rate limit exceeded",
                    "The maximum number of requests per hour allowed by rate limit rule 'sandbox_rate_limit' "
                    "has been exceeded",
                    decision.headers,
                )
            )
        if decision.status == 503:
            self.counters.add_fault("503")
            return error_response(
                ApiError(503, "Service Unavailable", "The instance is temporarily unavailable")
            )
        try:
            if kind == "oauth":
                return self.oauth(request)
            user = self.auth.authenticate(request.headers.get("Authorization"))
            if user is None:
                raise ApiError(
                    401,
                    "User Not Authenticated",
                    "Required to provide Auth information",
                    {"WWW-Authenticate": 'Basic realm="Service-now"'},
                )
            self._check_accept(request)
            if kind == "insertMultiple":
                return self.insert_multiple(request, user, **args)
            if kind == "import":
                return self.import_one(request, user, **args)
            if kind == "import_get":
                return self.import_get(request, user, **args)
            if kind == "table":
                return self.table(request, user, version, **args)
            if kind == "stats":
                return self.stats(request, user, **args)
            return self.app_service_call(action, request, user, args)
        except ApiError as exc:
            return error_response(exc)

    @staticmethod
    def _require(user: UserSpec, roles: frozenset[str], what: str) -> None:
        if not user.roles & roles:
            raise ApiError(
                403,
                "User Not Authorized",
                f"Insufficient rights: {what} requires one of the roles {', '.join(sorted(roles))}",
            )

    @staticmethod
    def _check_accept(request: Request) -> None:
        accept = request.headers.get("Accept")
        if accept is None:
            if request.method in ("POST", "PUT", "PATCH"):
                raise ApiError(
                    400, "Missing Accept header", "Requests with a body need Accept and Content-Type"
                )
            return
        if not any(t in accept for t in ("application/json", "*/*", "application/*")):
            raise ApiError(406, "Not Acceptable", f"Accept '{accept}' is not supported: use application/json")

    def _read_json(self, request: Request) -> JSONValue:
        content_type = request.headers.get("Content-Type")
        if not content_type:
            # Notes §6: requests with a body need Content-Type, else 400.
            raise ApiError(
                400, "Missing Content-Type header", "Requests with a body need Content-Type: application/json"
            )
        if request.mimetype != "application/json":
            raise ApiError(
                415,
                "Unsupported Media Type",
                f"Content-Type '{content_type}' is not supported: use application/json",
            )
        length = request.content_length
        limit = self.max_content_length
        if length is not None and length > limit:
            raise ApiError(
                413,
                "Request body is too large",
                f"The request body of {length} bytes exceeds the maximum of {limit} bytes",
            )
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            raise ApiError(
                413, "Request body is too large", f"The request body exceeds the maximum of {limit} bytes"
            )
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "Exception while reading request", "The payload is not valid JSON.") from exc

    def _staging(self, name: str) -> None:
        if name not in self.store.staging:
            raise ApiError(400, f"Invalid table {name}", "")

    # ------------------------------------------------------------------ Import Set API

    def insert_multiple(self, request: Request, user: UserSpec, staging: str) -> Response:
        self._require(user, IMPORT_ROLES, "the Import Set API")
        body = self._read_json(request)
        self._staging(staging)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise ApiError(
                400, "Invalid request body", "insertMultiple expects a JSON object with a 'records' array"
            )
        if self.faults.picks("accepted_202", "insertMultiple"):
            # Dropped unprocessed, as when the session's queue overflows (KB3047080).
            self.counters.add_fault("accepted_202")
            return Response(b"", status=202)
        fate = "processed"
        if self.faults.picks("cancel_import_sets", "insertMultiple"):
            fate = "cancelled"
        if self.faults.picks("oncomplete_error_import_sets", "insertMultiple"):
            fate = "error"
        if self.faults.picks("incomplete_import_sets", "insertMultiple"):
            fate = "did_not_complete"
        held = self.faults.picks("untransformed_import_sets", "insertMultiple")
        # An empty records array creates an empty import set that is processed at once (sandbox choice:
        # the client sees a real import set with no rows, not an error).
        loaded = self.engine.load(
            staging,
            records,
            user.user_name,
            multi_import_set_id=request.args.get("multi_import_set_id") or None,
            run_after=request.args.get("run_after") or None,
            fate=fate,
            held=held,
        )
        if self.faults.drop_this_commit():
            self.counters.add_fault("dropped")
            raise DropConnection()
        return json_response(
            {"import_set_id": loaded.import_set_id, "multi_import_set_id": loaded.multi_import_set_id}, 201
        )

    def import_one(self, request: Request, user: UserSpec, staging: str) -> Response:
        self._require(user, IMPORT_ROLES, "the Import Set API")
        body = self._read_json(request)
        self._staging(staging)
        if isinstance(body, list):
            if not body:
                raise ApiError(400, "Exception while reading request", "The payload holds no record.")
            body = body[0]  # ServiceNow processes only the first element of an array
        if not isinstance(body, dict):
            raise ApiError(400, "Exception while reading request", "The payload must be a JSON object.")
        number, results, _ = self.engine.insert_one(staging, body, user.user_name)
        return json_response(
            {
                "import_set": number,
                "staging_table": staging,
                "result": self._linked(request, staging, results),
            },
            201,
        )

    def import_get(self, request: Request, user: UserSpec, staging: str, sys_id: str) -> Response:
        self._require(user, IMPORT_ROLES, "the Import Set API")
        self._staging(staging)
        if self.faults.value("import_get_403"):
            self.counters.add_fault("acl")
            raise ApiError(
                403,
                "User Not Authorized",
                f"Insufficient rights: an ACL on {staging} denies read access to the staging row",
            )
        with self.store.lock:
            row = self.store.tables[staging].records.get(sys_id)
            if row is None:
                raise ApiError(
                    404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
                )
            iset = self.store.tables["sys_import_set"].records.get(row["sys_import_set"])
            number = iset["number"] if iset else ""
        results = self.engine.results_of(sys_id)
        return json_response(
            {
                "import_set": number,
                "staging_table": staging,
                "result": self._linked(request, staging, results),
            }
        )

    def _linked(self, request: Request, staging: str, results: list[dict[str, str]]) -> list[dict[str, str]]:
        base = request.host_url
        for result in results:
            table = result["table"]
            if result["status"] in ("skipped", "error", "pending"):
                table = staging  # the result names the staging row
            result["record_link"] = f"{base}api/now/table/{table}/{result['sys_id']}"
        return results

    # ------------------------------------------------------------------ Table and Aggregate APIs

    def _readable_table(self, user: UserSpec, name: str) -> Any:
        table = self.store.tables.get(name)
        if table is None:
            raise ApiError(400, f"Invalid table {name}", "")
        self._require(user, table.read_roles, f"reading {name}")
        return table

    def table(
        self, request: Request, user: UserSpec, version: str | None, table: str, sys_id: str | None = None
    ) -> Response:
        tbl = self._readable_table(user, table)
        args = request.args
        display = args.get("sysparm_display_value", "false").lower()
        fields_arg = args.get("sysparm_fields")
        options = RenderOptions(
            base_url=request.host_url,
            fields=tuple(f.strip() for f in fields_arg.split(",") if f.strip()) if fields_arg else None,
            display_value=display if display in ("true", "all") else "false",
            exclude_reference_link=args.get("sysparm_exclude_reference_link", "false").lower() == "true",
        )
        if sys_id is not None:
            with self.store.lock:
                record = tbl.records.get(sys_id)
                if record is None:
                    raise ApiError(
                        404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
                    )
                return json_response({"result": render(self.store, tbl, record, options)})
        limit = _int_arg(args, "sysparm_limit", DEFAULT_LIMIT)
        offset = _int_arg(args, "sysparm_offset", 0)
        no_count = args.get("sysparm_no_count", "false").lower() == "true"
        with self.store.lock:
            selected = select(tbl, parse_query(args.get("sysparm_query", ""), tbl))
            page = [render(self.store, tbl, r, options) for r in selected[offset : offset + limit]]
        total = len(selected)
        hidden = self.faults.acl_hides(table)
        if hidden is not None and page:
            # ACLs filter rows after the query (KB3047115): X-Total-Count still counts them.
            self.counters.add_fault("acl")
            page = [] if hidden == "all" else page[::2]
        headers = {"Link": self._links(request, offset, limit, total, no_count, len(page))}
        if not no_count:
            headers["X-Total-Count"] = str(total)
        if not page and version == "v1":
            raise ApiError(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval", headers
            )
        return json_response({"result": page}, 200, headers)

    @staticmethod
    def _links(request: Request, offset: int, limit: int, total: int, no_count: bool, shown: int) -> str:
        params = {k: v for k, v in request.args.items() if k not in ("sysparm_offset", "sysparm_limit")}

        def link(at: int, rel: str) -> str:
            query = urlencode({**params, "sysparm_limit": limit, "sysparm_offset": max(0, at)})
            return f'<{request.base_url}?{query}>;rel="{rel}"'

        links = [link(0, "first")]
        if offset > 0:
            links.append(link(offset - limit, "prev"))
        if (not no_count and offset + limit < total) or (no_count and shown == limit):
            links.append(link(offset + limit, "next"))
        if not no_count and limit > 0:
            last = max(0, (total - 1) // limit * limit) if total else 0
            links.append(link(last, "last"))
        return ",".join(links)

    def stats(self, request: Request, user: UserSpec, table: str) -> Response:
        tbl = self._readable_table(user, table)
        args = request.args
        count = args.get("sysparm_count", "false").lower() == "true"
        group_by = [g.strip() for g in args.get("sysparm_group_by", "").split(",") if g.strip() in tbl.fields]
        with self.store.lock:
            selected = select(tbl, parse_query(args.get("sysparm_query", ""), tbl))
            if not group_by:
                stats = {"count": str(len(selected))} if count else {}
                return json_response({"result": {"stats": stats}})
            groups: dict[tuple[str, ...], int] = {}
            for record in selected:
                key = tuple(record.get(g, "") for g in group_by)
                groups[key] = groups.get(key, 0) + 1
        result = [
            {
                "stats": {"count": str(n)} if count else {},
                "groupby_fields": [{"field": g, "value": v} for g, v in zip(group_by, key, strict=True)],
            }
            for key, n in sorted(groups.items())
        ]
        return json_response({"result": result})

    # ------------------------------------------------------------------ Application Service API

    def app_service_call(
        self, action: str, request: Request, user: UserSpec, args: Mapping[str, Any]
    ) -> Response:
        # servicenow-notes.md §11: this API answers 401 (not 403) to a user without
        # app_service_admin, and its error objects carry "details" (plural).
        try:
            if not user.roles & APP_SERVICE_ROLES:
                raise AppServiceError(
                    401,
                    "User Not Authorized",
                    "The Application Service API requires the app_service_admin role",
                )
            body = self._read_json(request) if request.method in ("POST", "PUT") else None
            with self.store.lock:
                status, answer = self.app_service.call(action, request.args, body, args.get("sys_id"))
        except ApiError as exc:
            return app_service_error(exc.status, exc.message, exc.detail or "")
        except AppServiceError as exc:
            return app_service_error(exc.status, exc.message, exc.detail)
        return json_response(answer, status)

    # ------------------------------------------------------------------ OAuth

    def oauth(self, request: Request) -> Response:
        try:
            if request.mimetype != "application/x-www-form-urlencoded":
                raise OAuthError("not a form")
            answer = self.auth.grant({k: v for k, v in request.form.items()})
        except OAuthError:
            # ServiceNow answers every token failure alike, whatever the cause (notes §8).
            return json_response({"error_description": "access_denied", "error": "server_error"}, 401)
        return json_response(answer)

    # ------------------------------------------------------------------ admin (no auth)

    def counters_snapshot(self, over_http: bool = False) -> dict[str, Any]:
        # Requests being served, not counting the admin request that asks (over_http).
        in_flight = self.engine.requests_in_flight() - (1 if over_http else 0)
        return {
            **self.counters.snapshot(),
            "sessions": self.sessions.snapshot(),
            "requests_in_flight": in_flight,
        }

    def admin(self, action: str, request: Request) -> Response:
        if action == "counters":
            return json_response(self.counters_snapshot(over_http=True))
        if action == "data":
            wanted = [t for t in request.args.get("tables", "").split(",") if t]
            return json_response(self.store.dump(wanted or None))
        try:
            body = json.loads(request.get_data() or b"{}") if request.method == "POST" else {}
        except ValueError:
            return json_response({"error": "body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return json_response({"error": "body must be a JSON object"}, 400)
        if action == "oauth":
            self.auth.set_lifetimes(body.get("access_token_lifetime_s"), body.get("refresh_token_lifetime_s"))
            return json_response(
                {
                    "access_token_lifetime_s": self.auth.access_lifetime_s,
                    "refresh_token_lifetime_s": self.auth.refresh_lifetime_s,
                }
            )
        if request.method == "DELETE":
            self.faults.clear()
            self.engine.release_held()
        elif request.method == "POST":
            try:
                self.set_faults(**body)
            except FaultError as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(self.faults.config())


def _int_arg(args: Any, name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"Invalid value for {name}", f"'{raw}' is not a number") from exc
    return max(0, value)
