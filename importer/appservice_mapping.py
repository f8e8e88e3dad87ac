"""``kind: app_service`` mappings: parsing, and rows -> the services they describe. Pure (no I/O).

A row names one service (``name``) and, optionally, one CI relation (``parent_ci`` -> ``ci``).
Rows with the same name are one service; its single-valued fields (number, environment,
version, cmdb_group) may be left empty on some rows but must not differ between them, or every
row of that service is invalid with the conflict named. List fields (business apps, offerings)
are ``;``-separated and add up across the service's rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from importer.mapping import ColumnSpec, Mapping, TranslatedRow, build_mapping, parse_column
from importer.mapping_fields import Problems, as_choice, as_text_list, check_keys, type_name

SERVICE_TABLE = "cmdb_ci_service_auto"
SINGLE_FIELDS = ("number", "environment", "version", "cmdb_group")
LIST_FIELDS = ("business_app", "business_service_offering", "technical_service_offering")
ROW_FIELDS = ("parent_ci", "ci", "ci_class")
SERVICE_FIELDS = ("name", *SINGLE_FIELDS, *LIST_FIELDS, *ROW_FIELDS)
_TOP_KEYS = ("kind", "match", "unmapped", "csv", "excel", "json", "columns", "verify")
# The API's limits (basic_details): longer values are refused by the instance, so refuse them first.
MAX_LENGTHS = {"name": 255, "environment": 40, "version": 40}


def parse_app_service_mapping(name: str, data: dict[str, Any], source: str) -> Mapping:
    """Validate a ``kind: app_service`` mapping; raises ConfigError listing every problem."""
    problems = Problems(source)
    check_keys(problems, "", data, _TOP_KEYS)
    match = as_text_list(problems, "match", data["match"]) if data.get("match") is not None else ()
    options: dict[str, Any] = {}
    if "unmapped" in data:
        options["unmapped"] = as_choice(problems, "unmapped", data["unmapped"], ("ignore", "error"))
    if "verify" in data:
        if isinstance(data["verify"], bool):
            options["verify"] = data["verify"]
        else:
            problems.add("verify", f"must be true or false, got {type_name(data['verify'])}")
    columns: list[ColumnSpec] = []
    raw_columns = data.get("columns")
    if not isinstance(raw_columns, dict) or not raw_columns:
        problems.add("columns", 'field required: "source header": service field, at least one to name')
    else:
        for header, spec in raw_columns.items():
            column = parse_column(problems, header, spec)
            if column is None:
                continue
            if column.to not in SERVICE_FIELDS:
                problems.add(
                    f"columns.{column.source}",
                    f"{column.to!r} is not a service field; use one of {', '.join(SERVICE_FIELDS)}",
                )
                continue
            if column.to == "name" and not column.required:
                column = ColumnSpec(**{**column.__dict__, "required": True})
            columns.append(column)
    targets = [c.to for c in columns]
    for target in sorted({t for t in targets if targets.count(t) > 1}):
        problems.add("columns", f"more than one column is mapped to {target!r}")
    if columns and "name" not in targets:
        problems.add("columns", "no column is mapped to name (the service's name, required)")
    if "ci_class" in targets and "ci" not in targets:
        problems.add("columns", "ci_class is mapped but ci is not: the class is the CI's")
    if "parent_ci" in targets and "ci" not in targets:
        problems.add("columns", "parent_ci is mapped but ci is not: a relation needs its child CI")
    return build_mapping(
        problems,
        data,
        name=name,
        source=source,
        staging_table=SERVICE_TABLE,
        kind="app_service",
        match=match,
        columns=tuple(columns),
        **options,
    )


# --- rows -> services --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRow:
    """What one source row asks of its service."""

    number: int  # the source row
    lists: dict[str, tuple[str, ...]]  # business_app / offerings: names or sys_ids
    parent_ci: str = ""  # empty: the CI is an entry point of the service
    ci: str = ""  # empty: the row adds no CI relation
    ci_class: str = ""


@dataclass
class ServicePlan:
    name: str
    number: str = ""
    environment: str = ""
    version: str = ""
    cmdb_group: str = ""
    rows: list[ServiceRow] = field(default_factory=list)

    @property
    def source_rows(self) -> list[int]:
        return [row.number for row in self.rows]


@dataclass
class Plan:
    services: list[ServicePlan]
    invalid: list[tuple[int, str]]  # (source row, why)


def split_list(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in value.split(";") if part.strip()))


def plan_services(rows: Iterable[TranslatedRow]) -> Plan:
    """Group translated rows into services, in the order their names first appear."""
    invalid: list[tuple[int, str]] = []
    services: dict[str, ServicePlan] = {}
    values: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for row in rows:
        if row.problem is not None or row.record is None:
            invalid.append((row.number, row.problem or "invalid row"))
            continue
        record = row.record
        name = record.get("name", "").strip()
        too_long = [
            f"{key} is longer than {limit} characters ({len(record.get(key, ''))})"
            for key, limit in MAX_LENGTHS.items()
            if len(record.get(key, "")) > limit
        ]
        if too_long:
            invalid.append((row.number, "; ".join(too_long)))
            continue
        service = services.setdefault(name, ServicePlan(name=name))
        seen = values.setdefault(name, {})
        for key in SINGLE_FIELDS:
            value = record.get(key, "").strip()
            if value:
                seen.setdefault(key, []).append((row.number, value))
        service.rows.append(
            ServiceRow(
                number=row.number,
                lists={key: split_list(record.get(key, "")) for key in LIST_FIELDS},
                parent_ci=record.get("parent_ci", "").strip(),
                ci=record.get("ci", "").strip(),
                ci_class=record.get("ci_class", "").strip(),
            )
        )
    planned = []
    for name, service in services.items():
        conflicts = []
        for key, found in values[name].items():
            first_row, first = found[0]
            other = next(((n, v) for n, v in found if v != first), None)
            if other is not None:
                conflicts.append(f"{key} is {first!r} on row {first_row} but {other[1]!r} on row {other[0]}")
            else:
                setattr(service, key, first)
        if conflicts:
            message = f"service {name!r} has conflicting values: {'; '.join(conflicts)}"
            invalid.extend((row.number, message) for row in service.rows)
            continue
        planned.append(service)
    invalid.sort()
    return Plan(planned, invalid)
