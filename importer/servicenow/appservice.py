"""The Application Service API (servicenow-application-service-api.txt) over an ``InstanceClient``.

Every request goes through the client's session, authentication, retry policy and response
classifier (transport.send, retry.call_with_retries, responses.classify): nothing here decides
on its own what an HTTP status means, except what is particular to this API:

- a user without the ``app_service_admin`` role gets **401**, not 403 (servicenow-notes.md §11),
  so a 401 says which role is missing as well as which credentials;
- a 2xx is a success only when its body is what the endpoint promises (responses.validated_body:
  no ``error`` / ``"status": "failure"``, not a 202): a read is retried, a registration is
  ambiguous (the caller looks the service up before registering again).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from importer.errors import AmbiguousResponse, AuthError, InstanceError

from .client import InstanceClient
from .responses import Call, Promise, classify, error_body, has_result_object, is_object, validated_body
from .retry import call_with_retries

# Every endpoint of the API, in one place. The csdm/app_service/* endpoints are deprecated since
# Rome in favour of /sg_services/app_service/* (KB0867184) and still answer; when an instance stops
# answering them, this table is the one thing to change.
PATHS = {
    "find_service": "cmdb/csdm/app_service/find_service",
    "register_service": "cmdb/csdm/app_service/register_service",
    "service_details": "cmdb/csdm/app_service/{sys_id}/service_details",
    "populate_service": "cmdb/csdm/app_service/{sys_id}/populate_service",
    "create": "cmdb/app_service/create",
    "get_content": "cmdb/app_service/{sys_id}/getContent",
}
SERVICE_TABLE = "cmdb_ci_service_auto"
RELATIONSHIP_KINDS = ("business_app", "business_service_offering", "technical_service_offering")
ROLE = "app_service_admin"


@dataclass(frozen=True)
class FoundService:
    sys_id: str
    name: str
    number: str
    environment: str
    version: str
    relationships: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceContent:
    """getContent: the service's CI relations as (parent sys_id or "" for an entry point, child sys_id)."""

    name: str
    relations: frozenset[tuple[str, str]]
    items: dict[str, tuple[str, str]]  # CI sys_id -> (class, name)


class AppServiceClient:
    def __init__(self, client: InstanceClient) -> None:
        self._client = client

    # -- CSDM application services ---------------------------------------------------------

    def find_service(self, *, name: str | None = None, number: str | None = None) -> list[FoundService]:
        params = {key: value for key, value in (("name", name), ("number", number)) if value}
        data = self._request("GET", "find_service", params=params, promise=_lists_services)
        services = _result(data).get("services")
        if not isinstance(services, list):
            raise self._unexpected("find_service", data)
        return [_found(s) for s in services if isinstance(s, dict)]

    def register_service(
        self,
        *,
        name: str,
        environment: str | None,
        version: str | None,
        relationships: Mapping[str, Iterable[str]],
    ) -> tuple[str, str]:
        """Register a new application service; (sys_id, number). Not idempotent: a lost answer
        raises AmbiguousResponse, and the caller must find_service before registering again."""
        details = {"name": name}
        details.update({k: v for k, v in (("environment", environment), ("version", version)) if v})
        body = {"basic_details": details, "relationships": _relationship_lists(relationships)}
        data = self._request(
            "POST", "register_service", body=body, idempotent=False, promise=has_result_object
        )
        result = _result(data)
        sys_id = result.get("service_sys_id")
        if not isinstance(sys_id, str) or not sys_id:
            raise AmbiguousResponse(
                f"{self._client.settings.base_url} answered register_service for {name!r} without a "
                "service_sys_id: the service may have been registered. It is looked up before "
                "registering again.",
                instance=self._client.settings.base_url,
                action="register_service",
            )
        return sys_id, str(result.get("number") or "")

    def service_details(
        self, sys_id: str, *, details: Mapping[str, str], relationships: Mapping[str, Iterable[str]]
    ) -> None:
        body: dict[str, Any] = {"relationships": _relationship_lists(relationships)}
        if details:
            body["basic_details"] = dict(details)
        self._request("PUT", "service_details", sys_id=sys_id, body=body)

    def populate_from_group(self, sys_id: str, group_id: str) -> None:
        body = {"population_method": {"type": "cmdb_group_based", "group_id": group_id}}
        self._request("PUT", "populate_service", sys_id=sys_id, body=body)

    # -- manually created services ---------------------------------------------------------

    def create(self, name: str, relations: Iterable[tuple[str, str]]) -> None:
        """Create or update the service ``name`` with these CI relations. On an update the instance
        replaces the service's entry points: pass every relation the service must keep."""
        body = {
            "name": name,
            "service_relations": [{"parent": p, "child": c} for p, c in sorted(set(relations))],
        }
        self._request("POST", "create", body=body)

    def get_content(self, sys_id: str) -> ServiceContent:
        data = self._request("GET", "get_content", sys_id=sys_id, params={"mode": "shallow"})
        service = data.get("service") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(data.get("result"), dict) and service is None:
            data = data["result"]
            service = data.get("service")
        if isinstance(service, list):  # the reference text documents a list, its example an object
            service = service[0] if service else {}
        if not isinstance(service, dict):
            raise self._unexpected("getContent", data)
        pairs = frozenset(
            (str(r.get("parent") or ""), str(r.get("child") or ""))
            for r in service.get("service_relations") or []
            if isinstance(r, dict)
        )
        cmdb = data.get("cmdb") or {}
        if isinstance(cmdb, list):
            cmdb = cmdb[0] if cmdb else {}
        items = {}
        for item in cmdb.get("items") or [] if isinstance(cmdb, dict) else []:
            values = item.get("values") if isinstance(item, dict) else None
            if isinstance(values, dict) and values.get("sys_id"):
                kind, name = str(item.get("className") or ""), str(values.get("name") or "")
                items[str(values["sys_id"])] = (kind, name)
        return ServiceContent(str(service.get("name") or ""), pairs, items)

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        endpoint: str,
        *,
        sys_id: str = "",
        params: Mapping[str, str] | None = None,
        body: Any = None,
        idempotent: bool = True,
        promise: Promise = is_object,
    ) -> Any:
        client = self._client
        path = PATHS[endpoint].format(sys_id=quote(sys_id, safe=""))
        url = f"{client.settings.base_url}/api/now/{path}"
        call = Call(
            instance=client.settings.base_url,
            endpoint="table",
            action=endpoint,
            table=SERVICE_TABLE,
            user=client._user,
            auth=client.settings.auth,
            idempotent=idempotent,
        )
        data = None if body is None else _encode(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}

        def attempt() -> Any:
            response = client._send_authenticated(
                method, url, call, params=params, body=data, headers=headers
            )
            try:
                classify(response, call)
            except AuthError as exc:
                if response.status_code == 401:
                    raise self._role_refused(call, response) from exc
                raise
            return validated_body(response, call, promise)

        return call_with_retries(
            attempt,
            policy=client._policy,
            what=f"Application Service API {endpoint} on {client.settings.base_url}",
            stop_event=client._stop_event,
            on_retry=client._on_retry,
        )

    def _role_refused(self, call: Call, response: requests.Response) -> AuthError:
        who = f"user '{call.user}'" if call.user else "the OAuth application user"
        return AuthError(
            f"ServiceNow refused {call.action} ({error_body(response).summary(401)}): the Application "
            f"Service API answers 401 when {who} lacks the {ROLE} role; give it {ROLE} (or check "
            "[instance] username and password).",
            status=401,
            instance=call.instance,
            action=call.action,
        )

    def _unexpected(self, action: str, data: Any) -> InstanceError:
        return InstanceError(
            f"{self._client.settings.base_url} answered {action} with an unexpected body: {str(data)[:200]}",
            instance=self._client.settings.base_url,
            action=action,
        )


def _lists_services(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(_result(data).get("services"), list)


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _result(data: Any) -> dict[str, Any]:
    result = data.get("result") if isinstance(data, dict) else None
    return result if isinstance(result, dict) else {}


def _relationship_lists(relationships: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    return {kind: sorted(set(ids)) for kind, ids in relationships.items() if kind in RELATIONSHIP_KINDS}


def _found(service: dict[str, Any]) -> FoundService:
    relationships = service.get("relationships") or {}
    return FoundService(
        sys_id=str(service.get("sys_id") or ""),
        name=str(service.get("name") or ""),
        number=str(service.get("number") or ""),
        environment=str(service.get("environment") or ""),
        version=str(service.get("version") or ""),
        relationships={
            kind: frozenset(str(i) for i in relationships.get(kind) or [] if i) for kind in RELATIONSHIP_KINDS
        }
        if isinstance(relationships, dict)
        else {},
    )
