"""A ``kind: app_service`` file end to end: rows -> services -> the Application Service API -> ledger.

Per service (rows grouped by importer/appservice_mapping.py): the names it gives are resolved to
sys_ids through the Table API; ``find_service``; ``register_service`` when it does not exist
(its rows ``inserted``), ``service_details`` when a field or business relationship differs
(``updated``), nothing otherwise (``ignored``, "No field values changed"); CI relations through
``populate_service`` (``cmdb_group_based``) and ``create`` (``service_relations``); then
``getContent`` must show every relation asked for, else the rows are ``error``.

Relations are only ever added: ``create`` replaces a service's entry points, so it is sent every
relation the service already has plus the new ones. A file therefore never removes a CI from a
service (a re-run of only the failed rows must not take away what the other rows added).

Each service is a ledger batch, opened (``posting``) before the first request that may change
anything and completed with one result per row. A crash leaves the batch ``posting``: on resume
the service is looked up (``find_service``) before anything is registered again, and a service
created since that batch was opened counts as registered by it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from importer.appservice_mapping import LIST_FIELDS, SERVICE_TABLE, ServicePlan, ServiceRow, plan_services
from importer.errors import AmbiguousResponse, AuthError, InstanceError, TransientError
from importer.ledger import BatchState, Ledger, RowResult, RowState
from importer.mapping import TranslatedRow
from importer.servicenow import InstanceClient
from importer.servicenow.appservice import AppServiceClient, FoundService

if TYPE_CHECKING:
    from importer.verify import VerifyResult

log = logging.getLogger("importer.appservice")

QUERY_CHUNK = 100
# Where each kind of name is looked up, and the field holding the name.
LOOKUPS = {
    "ci": ("cmdb_ci", "name", "CI"),
    "business_app": ("cmdb_ci_business_app", "name", "business app"),
    "business_service_offering": ("service_offering", "name", "business service offering"),
    "technical_service_offering": ("service_offering", "name", "technical service offering"),
    "cmdb_group": ("cmdb_group", "group_name", "CMDB group"),
}
GROUP_MEMBERS = "cmdb_group_contains_ci"


@dataclass(frozen=True)
class _Match:
    sys_id: str
    ci_class: str


class Resolver:
    """Names (or sys_ids) -> sys_ids through the Table API, many per request."""

    def __init__(self, client: InstanceClient) -> None:
        self.client = client
        self._found: dict[tuple[str, str], list[_Match]] = {}  # (table, value) -> matches

    def load(self, table: str, name_field: str, values: Iterable[str]) -> None:
        wanted = sorted({v for v in values if v and (table, v) not in self._found})
        for value in wanted:
            self._found[(table, value)] = []
        fields = ["sys_id", name_field] + (["sys_class_name"] if table == "cmdb_ci" else [])
        # IN lists are comma-separated: a name holding a comma (or ^) is asked for alone.
        plain = [v for v in wanted if "," not in v and "^" not in v]
        queries = [
            f"{name_field}IN{','.join(chunk)}^ORsys_idIN{','.join(chunk)}"
            for chunk in (plain[i : i + QUERY_CHUNK] for i in range(0, len(plain), QUERY_CHUNK))
        ]
        queries += [f"{name_field}={v}" for v in wanted if v not in plain and "^" not in v]
        for query in queries:
            for record in self.client.query(table, query, fields=fields):
                match = _Match(str(record.get("sys_id") or ""), str(record.get("sys_class_name") or ""))
                for key in (str(record.get(name_field) or ""), match.sys_id):
                    if (table, key) in self._found and match not in self._found[(table, key)]:
                        self._found[(table, key)].append(match)

    def resolve(
        self, kind: str, value: str, ci_class: str = "", prefer: Iterable[str] = ()
    ) -> tuple[str | None, str | None]:
        """(sys_id, None) or (None, why it cannot be found). ``prefer``: sys_ids that settle a
        name shared by several records (a parent CI is the one the service's rows already hold)."""
        table, _, what = LOOKUPS[kind]
        matches = self._found.get((table, value), [])
        if ci_class:
            matches = [m for m in matches if m.ci_class == ci_class]
        preferred = set(prefer)
        if len(matches) > 1 and any(m.sys_id in preferred for m in matches):
            matches = [m for m in matches if m.sys_id in preferred]
        if len(matches) == 1:
            return matches[0].sys_id, None
        of_class = f" of class {ci_class!r}" if ci_class else ""
        if not matches:
            return None, f"{what} {value!r}{of_class} not found in {table}"
        classes = ", ".join(sorted({m.ci_class for m in matches if m.ci_class}))
        hint = f" ({classes}): give its class in the ci_class column" if classes else ""
        return None, f"{what} {value!r} matches {len(matches)} records in {table}{hint}"


@dataclass
class _Resolved:
    """One service's references as sys_ids, and the rows that named something not found."""

    lists: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in LIST_FIELDS})
    relations: list[tuple[str, str]] = field(default_factory=list)  # (parent or "", child)
    group_id: str = ""
    good: list[ServiceRow] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # source row -> why


class _ServiceFailed(Exception):
    """The service's rows end as error with this message (the instance refused or did not confirm)."""


class ServiceImporter:
    def __init__(self, ledger: Ledger, client: InstanceClient, stop_event: threading.Event) -> None:
        self.ledger = ledger
        self.client = client
        self.api = AppServiceClient(client)
        self.stop_event = stop_event

    def import_rows(self, file_id: int, rows: Iterable[TranslatedRow]) -> bool:
        """Send every service of these rows; True when all were done (False: stopped first).

        Batches a crash left ``posting`` are settled first: their rows are planned again, and a
        service created since the batch was opened is taken as registered by it.
        """
        since: dict[int, datetime] = {}
        for batch in self.ledger.batches(file_id, [BatchState.POSTING]):
            if batch.posting_started_at is not None:
                since[batch.first_source_row] = batch.posting_started_at
            self.ledger.abandon_batch(batch.id, "interrupted; the service is looked up and sent again")
            log.info(
                "file=%s service of row %s was interrupted; it is looked up before anything is sent again",
                file_id,
                batch.first_source_row,
            )
        rows = list(rows)
        plan = plan_services(rows)
        self.ledger.record_invalid_rows(file_id, plan.invalid)
        resolver = Resolver(self.client)
        self._load_names(resolver, plan.services)
        for service in plan.services:
            if self.stop_event.is_set():
                log.info("file=%s stopped before every service was sent; the rest is sent on resume", file_id)
                return False
            started = next((since[n] for n in service.source_rows if n in since), None)
            self._send_service(file_id, service, resolver, started)
        return True

    # -- names -------------------------------------------------------------------------------

    @staticmethod
    def _load_names(resolver: Resolver, services: Sequence[ServicePlan]) -> None:
        wanted: dict[str, set[str]] = {kind: set() for kind in LOOKUPS}
        for service in services:
            if service.cmdb_group:
                wanted["cmdb_group"].add(service.cmdb_group)
            for row in service.rows:
                wanted["ci"].update(v for v in (row.ci, row.parent_ci) if v)
                for kind in LIST_FIELDS:
                    wanted[kind].update(row.lists.get(kind, ()))
        by_table: dict[tuple[str, str], set[str]] = {}
        for kind, values in wanted.items():
            table, name_field, _ = LOOKUPS[kind]
            by_table.setdefault((table, name_field), set()).update(values)
        for (table, name_field), values in by_table.items():
            resolver.load(table, name_field, values)

    @staticmethod
    def _resolve(service: ServicePlan, resolver: Resolver) -> _Resolved:
        resolved = _Resolved()
        group_problem = None
        if service.cmdb_group:
            group_id, group_problem = resolver.resolve("cmdb_group", service.cmdb_group)
            resolved.group_id = group_id or ""
        children = {
            sys_id
            for row in service.rows
            if row.ci and (sys_id := resolver.resolve("ci", row.ci, row.ci_class)[0])
        }
        for row in service.rows:
            problems = [group_problem] if group_problem else []
            lists: dict[str, set[str]] = {}
            for kind in LIST_FIELDS:
                for value in row.lists.get(kind, ()):
                    sys_id, problem = resolver.resolve(kind, value)
                    if problem:
                        problems.append(problem)
                    elif sys_id:
                        lists.setdefault(kind, set()).add(sys_id)
            relation = None
            if row.ci:
                child, problem = resolver.resolve("ci", row.ci, row.ci_class)
                parent, parent_problem = (
                    resolver.resolve("ci", row.parent_ci, prefer=children) if row.parent_ci else ("", None)
                )
                problems += [p for p in (problem, parent_problem) if p]
                if child is not None and parent is not None:
                    relation = (parent, child)
            if problems:
                resolved.errors[row.number] = "; ".join(problems)
                continue
            resolved.good.append(row)
            for kind, ids in lists.items():
                resolved.lists[kind].update(ids)
            if relation is not None and relation not in resolved.relations:
                resolved.relations.append(relation)
        return resolved

    # -- one service -------------------------------------------------------------------------

    def _send_service(
        self, file_id: int, service: ServicePlan, resolver: Resolver, started: datetime | None
    ) -> None:
        resolved = self._resolve(service, resolver)
        index = {number: i for i, number in enumerate(service.source_rows)}
        batch_id = self.ledger.open_batch(
            file_id, service.source_rows, body_bytes=0, run_after=None, multi_import_set_id=None
        )
        state, sys_id, message = RowState.ERROR, "", ""
        if resolved.good:
            try:
                state, sys_id, message = self._sync(service, resolved, started)
            except (TransientError, AuthError):
                raise  # the batch stays posting: the file is resumed, the service looked up again
            except _ServiceFailed as exc:
                state, message = RowState.ERROR, str(exc)
            except InstanceError as exc:  # the instance refused this service (400: a bad value)
                state, message = RowState.ERROR, str(exc)
        outcomes = [
            RowResult(
                batch_index=index[row.number],
                state=state,
                target_table=SERVICE_TABLE,
                target_sys_id=sys_id or None,
                display_value=service.name,
                message=message or None,
            )
            for row in resolved.good
        ]
        outcomes += [
            RowResult(
                batch_index=index[number],
                state=RowState.ERROR,
                target_table=SERVICE_TABLE,
                target_sys_id=sys_id or None,
                display_value=service.name,
                message=problem,
            )
            for number, problem in resolved.errors.items()
        ]
        self.ledger.record_row_results(batch_id, outcomes, sent_directly=True)
        log.info("file=%s service=%r state=%s rows=%s", file_id, service.name, state, len(outcomes))

    def _find(self, service: ServicePlan) -> FoundService | None:
        if service.number:
            found = self.api.find_service(number=service.number)
            found = [s for s in found if s.number == service.number]
            if not found:
                raise _ServiceFailed(f"no application service with number {service.number!r}")
        else:
            found = [s for s in self.api.find_service(name=service.name) if s.name == service.name]
        return found[0] if found else None

    def _sync(
        self, service: ServicePlan, resolved: _Resolved, started: datetime | None
    ) -> tuple[RowState, str, str]:
        """Make the instance hold the service as planned; (row state, service sys_id, message)."""
        existing = self._find(service)
        registered = False
        changes: list[str] = []
        if existing is None:
            sys_id = self._register(service, resolved)
            registered = True
        else:
            sys_id = existing.sys_id
            registered = started is not None and self._created_since(sys_id, started)
            details = {
                key: value
                for key, value, was in (
                    ("name", service.name, existing.name),
                    ("environment", service.environment, existing.environment),
                    ("version", service.version, existing.version),
                )
                if value and value != was
            }
            missing = {
                kind: ids - existing.relationships.get(kind, frozenset())
                for kind, ids in resolved.lists.items()
            }
            missing = {kind: ids for kind, ids in missing.items() if ids}
            if details or missing:
                self.api.service_details(sys_id, details=details, relationships=missing)
                changes += list(details) + list(missing)
        if resolved.relations or resolved.group_id:
            changes += self._relate(service, resolved, sys_id)
        if registered:
            return RowState.INSERTED, sys_id, f"registered application service {service.name!r}"
        if changes:
            return RowState.UPDATED, sys_id, "changed: " + ", ".join(dict.fromkeys(changes))
        return RowState.IGNORED, sys_id, "No field values changed"

    def _register(self, service: ServicePlan, resolved: _Resolved) -> str:
        try:
            sys_id, _number = self.api.register_service(
                name=service.name,
                environment=service.environment or None,
                version=service.version or None,
                relationships=resolved.lists,
            )
            return sys_id
        except AmbiguousResponse as exc:
            # The answer was lost: it may be registered. Look before registering again.
            log.warning("register_service %r: %s; looking the service up", service.name, exc)
            found = [s for s in self.api.find_service(name=service.name) if s.name == service.name]
            if found:
                return found[0].sys_id
            raise

    def _created_since(self, sys_id: str, started: datetime) -> bool:
        record = self.client.get_record(SERVICE_TABLE, sys_id, fields=["sys_created_on"]) or {}
        created = str(record.get("sys_created_on") or "")
        try:
            at = datetime.strptime(created, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            return False
        return at >= started.astimezone(UTC) - timedelta(seconds=2)

    def _relate(self, service: ServicePlan, resolved: _Resolved, sys_id: str) -> list[str]:
        """CI relations: from the CMDB group, then the rows' own; every one confirmed by getContent."""
        before = self.api.get_content(sys_id)
        content = before
        members: list[str] = []
        if resolved.group_id:
            self.api.populate_from_group(sys_id, resolved.group_id)
            members = [
                str(m.get("configuration_item") or "")
                for m in self.client.query(
                    GROUP_MEMBERS, f"group={resolved.group_id}", fields=["configuration_item"]
                )
            ]
            content = self.api.get_content(sys_id)
        wanted = resolved.relations
        if any(pair not in content.relations for pair in wanted):
            self.api.create(service.name, [*content.relations, *wanted])
        after = self.api.get_content(sys_id)
        unconfirmed = [pair for pair in wanted if pair not in after.relations]
        unconfirmed_members = [ci for ci in members if ci and ci not in after.items]
        if unconfirmed or unconfirmed_members:
            shown = [f"{p or '(entry point)'} -> {c}" for p, c in unconfirmed]
            shown += [f"CMDB group member {ci}" for ci in unconfirmed_members]
            raise _ServiceFailed(
                "getContent does not show " + ", ".join(shown) + f" in service {service.name!r} after "
                "the update; check the service's relations on the instance and re-run the failed rows"
            )
        changed = []
        if after.relations != before.relations or set(after.items) != set(before.items):
            changed.append("CI relations")
        return changed


def verify_services(
    client: InstanceClient,
    sent: dict[int, dict[str, str]],
    entries: list[dict[str, Any]],
    result: VerifyResult,
) -> None:
    """`importer verify` of an app service file: each service as find_service shows it, each
    row's CI relation as getContent shows it."""
    from importer.verify import Difference

    api = AppServiceClient(client)
    rows = [
        TranslatedRow(e["source_row"], sent[e["source_row"]], None)
        for e in entries
        if e["source_row"] in sent
    ]
    plan = plan_services(rows)
    resolver = Resolver(client)
    ServiceImporter._load_names(resolver, plan.services)
    target = {e["source_row"]: e["target_sys_id"] for e in entries}
    for service in plan.services:
        sys_id = next((target[n] for n in service.source_rows if target.get(n)), "")
        first = service.source_rows[0]
        found = next((s for s in api.find_service(name=service.name) if s.sys_id == sys_id), None)
        result.records += 1

        def differ(
            row: int, name: str, wanted: str, got: str | None, note: str = "", sys_id: str = sys_id
        ) -> None:
            result.differences.append(Difference(row, SERVICE_TABLE, sys_id, name, wanted, got, note))

        if found is None:
            differ(first, "name", service.name, None, "find_service does not find this service")
            continue
        for name in ("environment", "version"):
            wanted = getattr(service, name)
            if wanted:
                result.fields += 1
                if wanted != getattr(found, name):
                    differ(first, name, wanted, getattr(found, name))
        resolved = ServiceImporter._resolve(service, resolver)
        for row in service.rows:
            for kind in LIST_FIELDS:
                for value in row.lists.get(kind, ()):
                    result.fields += 1
                    ref, problem = resolver.resolve(kind, value)
                    if ref is None or ref not in found.relationships.get(kind, frozenset()):
                        differ(row.number, kind, value, None, problem or "not related to the service")
        if resolved.relations:
            content = api.get_content(sys_id)
            wanted_by_row = {
                row.number: (resolver.resolve("ci", row.parent_ci)[0] or "" if row.parent_ci else "",
                             resolver.resolve("ci", row.ci, row.ci_class)[0])
                for row in service.rows
                if row.ci
            }  # fmt: skip
            for number, pair in wanted_by_row.items():
                result.fields += 1
                if pair not in content.relations:
                    row = next(r for r in service.rows if r.number == number)
                    shown = f"{row.parent_ci or '(entry point)'} -> {row.ci}"
                    differ(number, "relation", shown, None, "getContent does not show this relation")
    result.differences.sort(key=lambda d: (d.source_row, d.field))
