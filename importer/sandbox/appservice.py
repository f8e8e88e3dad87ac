"""Application Service API (servicenow-application-service-api.txt) over the CMDB tables of the data file.

Mapped services live in cmdb_ci_service_discovered (getContent, create); CSDM application services in
cmdb_ci_service_auto (find_service, register_service, populate_service, service_details). On an
instance the mapped class extends the application service class, so a service registered through
register_service is also the service ``create`` (by name) and getContent (by sys_id) work on: the
sandbox looks a service up in both tables. Relations are cmdb_rel_ci records (parent, child, type);
CMDB group members are cmdb_group_contains_ci records (group, configuration_item). CIs carry their
class in ``sys_class_name`` (one cmdb_ci table, as on an instance). Callers hold the store lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from werkzeug.wrappers import Response

from .store import Record, Store, Table, new_sys_id, now_text

DISCOVERED = "cmdb_ci_service_discovered"
AUTO = "cmdb_ci_service_auto"
RELATIONS = "cmdb_rel_ci"
REL_TYPE = "Depends on::Used by"
GROUP_MEMBERS = "cmdb_group_contains_ci"
RELATIONSHIP_KINDS = ("business_app", "business_service_offering", "technical_service_offering")


def app_service_error(status: int, message: str, details: str) -> Response:
    """The Application Service API's error envelope: ``details``, not the Table API's ``detail``."""
    body = {"error": {"message": message, "details": details}, "status": "failure"}
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")


class AppServiceError(Exception):
    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class AppService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._number = 2000

    def call(self, action: str, args: Mapping[str, str], body: Any, sys_id: str | None) -> tuple[int, Any]:
        for name in (DISCOVERED, AUTO, RELATIONS):
            if name not in self.store.tables:
                raise AppServiceError(
                    500, "Application Service API unavailable", f"the data file defines no {name} table"
                )
        if body is not None and not isinstance(body, dict):
            raise AppServiceError(400, "Invalid request body", "expected a JSON object")
        if action == "get_content":
            return 200, self.get_content(sys_id or "", args.get("mode", "shallow"))
        if action == "create":
            return 200, self.create(body or {})
        if action == "find_service":
            return 200, self.find_service(args.get("name"), args.get("number"))
        if action == "register_service":
            return 201, self.register_service(body or {})
        if action == "populate_service":
            return 200, self.populate_service(sys_id or "", body or {})
        return 200, self.service_details(sys_id or "", body or {})

    # ------------------------------------------------------------------ helpers

    def _table(self, name: str) -> Table:
        return self.store.tables[name]

    def _insert(self, table: Table, values: dict[str, str]) -> str:
        stamp = now_text()
        record = dict.fromkeys(table.fields, "")
        record.update(values)
        record.update(
            sys_id=new_sys_id(),
            sys_created_on=stamp,
            sys_updated_on=stamp,
            sys_created_by="admin",
            sys_updated_by="admin",
            sys_mod_count="0",
        )
        self.store.insert(table, record)
        return record["sys_id"]

    def _ci(self, sys_id: str) -> tuple[Table, Record]:
        found = self.store.find(sys_id)
        if found is None or not found[0].name.startswith("cmdb_ci"):
            raise AppServiceError(400, "Invalid CI", f"No configuration item with sys_id '{sys_id}'")
        return found

    def _relate(self, parent: str, child: str) -> None:
        rels = self._table(RELATIONS)
        for rel in rels.records.values():
            if rel["parent"] == parent and rel["child"] == child:
                return
        self._insert(rels, {"parent": parent, "child": child, "type": REL_TYPE})

    def _children(self, parent: str) -> list[str]:
        return [r["child"] for r in self._table(RELATIONS).records.values() if r["parent"] == parent]

    # ------------------------------------------------------------------ mapped services

    def get_content(self, sys_id: str, mode: str) -> dict[str, Any]:
        service = self._table(DISCOVERED).records.get(sys_id) or self._table(AUTO).records.get(sys_id)
        if service is None:
            raise AppServiceError(
                400, "Invalid service", f"No mapped application service with sys_id '{sys_id}'"
            )
        full = mode.lower() == "full"
        pairs: list[dict[str, str]] = []
        seen: list[str] = []
        queue = [("", child) for child in self._children(sys_id)]
        while queue:
            parent, child = queue.pop(0)
            pairs.append({"parent": parent, "child": child})
            if child in seen:
                continue
            seen.append(child)
            queue.extend((child, grandchild) for grandchild in self._children(child))
        items = []
        for ci_id in seen:
            found = self.store.find(ci_id)
            if found is None:
                continue
            table, record = found
            values = dict(record) if full else {"sys_id": ci_id, "name": table.display_value(record)}
            items.append({"className": record.get("sys_class_name") or table.name, "values": values})
        relations = (
            [{"parent": p["parent"] or sys_id, "child": p["child"], "type": REL_TYPE} for p in pairs]
            if full
            else []
        )
        return {
            "service": {
                "name": service["name"],
                "url": f"/api/now/table/{DISCOVERED}/{sys_id}",
                "service_relations": pairs,
            },
            "cmdb": {"relations": relations, "items": items},
        }

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise AppServiceError(400, "Missing name", "The request needs the service's name")
        relations = body.get("service_relations") or []
        if not isinstance(relations, list) or not all(isinstance(r, dict) for r in relations):
            raise AppServiceError(
                400, "Invalid service_relations", "expected a list of {parent, child} objects"
            )
        for rel in relations:
            self._ci(str(rel.get("child", "")))
            if rel.get("parent"):
                self._ci(str(rel["parent"]))
        services = self._table(DISCOVERED)
        sys_id = services.lookup(("name",), (name,))
        if sys_id is None and self._table(AUTO).lookup(("name",), (name,)) is not None:
            # A registered application service: the mapped class extends it, same record.
            services = self._table(AUTO)
            sys_id = services.lookup(("name",), (name,))
        extra = {k: str(v) for k, v in body.items() if k in services.fields and k not in ("sys_id", "name")}
        if sys_id is None:
            sys_id = self._insert(services, {"name": name, **extra})
        else:
            services.update(sys_id, {**extra, "sys_updated_on": now_text()})
            # Updating a service replaces its entry points.
            rels = self._table(RELATIONS)
            for rel_id in [k for k, r in rels.records.items() if r["parent"] == sys_id]:
                self.store.delete(rels, rel_id)
        cis = set()
        for rel in relations:
            child = str(rel["child"])
            self._relate(str(rel.get("parent") or sys_id), child)
            cis.add(child)
        return {
            "result": {
                "url": f"/api/now/table/{services.name}/{sys_id}",
                "getContentUrl": f"/api/now/cmdb/app_service/{sys_id}/getContent",
                "info": f"{len(cis)} CIs added to service",
            }
        }

    # ------------------------------------------------------------------ CSDM application services

    def _relationships(self, service_id: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {kind: [] for kind in RELATIONSHIP_KINDS}
        for rel in self._table(RELATIONS).records.values():
            if rel["child"] != service_id:
                continue
            found = self.store.find(rel["parent"])
            if found is None:
                continue
            table, record = found
            if table.name == "cmdb_ci_business_app":
                out["business_app"].append(rel["parent"])
            elif record.get("service_classification", "").lower().startswith("technical"):
                out["technical_service_offering"].append(rel["parent"])
            else:
                out["business_service_offering"].append(rel["parent"])
        return out

    def find_service(self, name: str | None, number: str | None) -> dict[str, Any]:
        if not name and not number:
            raise AppServiceError(400, "Missing parameter", "Pass the service's name or number")
        services = self._table(AUTO)
        found = []
        for record in services.records.values():
            if (name and record["name"] != name) or (number and record["number"] != number):
                continue
            found.append(
                {
                    "name": record["name"],
                    "number": record["number"],
                    "sys_id": record["sys_id"],
                    "environment": record.get("environment", ""),
                    "version": record.get("version", ""),
                    "relationships": self._relationships(record["sys_id"]),
                }
            )
        return {"result": {"services": found}}

    def _add_relationships(self, service_id: str, relationships: Any) -> None:
        if relationships is None:
            return
        if not isinstance(relationships, dict):
            raise AppServiceError(400, "Invalid relationships", "expected an object of sys_id lists")
        for kind, ids in relationships.items():
            if kind not in RELATIONSHIP_KINDS or not isinstance(ids, list):
                raise AppServiceError(400, "Invalid relationships", f"unknown relationship kind '{kind}'")
            for parent in ids:
                if self.store.find(str(parent)) is None:
                    raise AppServiceError(400, "Invalid relationships", f"No record with sys_id '{parent}'")
        for ids in relationships.values():
            for parent in ids:
                self._relate(str(parent), service_id)

    def _basic_details(self, body: dict[str, Any], required: bool) -> dict[str, str]:
        details = body.get("basic_details")
        if details is None and not required:
            return {}
        if not isinstance(details, dict) or (required and not details.get("name")):
            raise AppServiceError(400, "Missing basic_details.name", "basic_details.name is required")
        out = {}
        for key, limit in (("name", 255), ("environment", 40), ("version", 40)):
            if key in details:
                value = str(details[key])
                if len(value) > limit:
                    raise AppServiceError(400, f"Invalid {key}", f"{key} is longer than {limit} characters")
                out[key] = value
        return out

    def _unique_name(self, name: str, except_id: str = "") -> None:
        for record in self._table(AUTO).records.values():
            if record["name"].lower() == name.lower() and record["sys_id"] != except_id:
                raise AppServiceError(400, "Duplicate name", f"An application service named '{name}' exists")

    def register_service(self, body: dict[str, Any]) -> dict[str, Any]:
        details = self._basic_details(body, required=True)
        self._unique_name(details["name"])
        relationships = body.get("relationships")
        self._number += 1
        number = f"SNSVC{self._number:07d}"
        sys_id = self._insert(self._table(AUTO), {**details, "number": number})
        try:
            self._add_relationships(sys_id, relationships)
        except AppServiceError:
            self.store.delete(self._table(AUTO), sys_id)
            raise
        return {"result": {"service_sys_id": sys_id, "number": number}}

    def _service(self, sys_id: str) -> Record:
        record = self._table(AUTO).records.get(sys_id)
        if record is None:
            raise AppServiceError(404, "No Record found", f"No application service with sys_id '{sys_id}'")
        return record

    def populate_service(self, sys_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._service(sys_id)
        method = body.get("population_method")
        if not isinstance(method, dict):
            raise AppServiceError(400, "Missing population_method", "population_method is required")
        kind = method.get("type")
        if kind == "cmdb_group_based":
            groups = self.store.tables.get("cmdb_group")
            group_id = str(method.get("group_id", ""))
            group = groups.records.get(group_id) if groups else None
            if group is None:
                raise AppServiceError(400, "Invalid group_id", f"No CMDB group '{method.get('group_id')}'")
            members = self.store.tables.get(GROUP_MEMBERS)
            for member in list(members.records.values()) if members else []:
                if member.get("group") == group_id:
                    ci_id = member.get("configuration_item", "")
                    self._ci(ci_id)
                    self._relate(sys_id, ci_id)
            return {"result": {}}
        if kind in ("discovery", "tag_list"):
            # The sandbox has no Service Mapping plugin: these types fail as on an instance without it.
            raise AppServiceError(
                400,
                "Service Mapping is not active",
                f"population type '{kind}' needs the com.snc.service-mapping plugin",
            )
        raise AppServiceError(
            400, "Invalid population_method.type", "type must be cmdb_group_based, discovery or tag_list"
        )

    def service_details(self, sys_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._service(sys_id)
        details = self._basic_details(body, required=False)
        if "name" in details:
            self._unique_name(details["name"], except_id=sys_id)
        self._add_relationships(sys_id, body.get("relationships"))
        if details:
            self._table(AUTO).update(sys_id, {**details, "sys_updated_on": now_text()})
        return {"result": {}}
