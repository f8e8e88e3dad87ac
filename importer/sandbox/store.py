"""The sandbox's in-memory database: tables of string-valued records, with coalesce indexes.

Every value is a string, as the Table API shows it. One re-entrant lock guards the whole store;
request threads and the transform worker take it for short stretches.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from typing import Any

from .data import DataSpec, FieldSpec, StagingSpec, TableSpec

Record = dict[str, str]

SYSTEM_FIELDS = (
    "sys_id",
    "sys_created_on",
    "sys_updated_on",
    "sys_created_by",
    "sys_updated_by",
    "sys_mod_count",
)

# Who may read a table through the Table and Aggregate APIs. Sandbox choice (ServiceNow uses ACLs):
# sys_* and staging tables need admin or import_admin; target tables also allow itil;
# CMDB tables also allow app_service_admin.
SYSTEM_READ_ROLES = frozenset({"admin", "import_admin"})
TARGET_READ_ROLES = frozenset({"admin", "import_admin", "itil"})
CMDB_READ_ROLES = frozenset({"admin", "import_admin", "itil", "app_service_admin"})


_sys_id_bits = random.Random().getrandbits  # not seeded: sys_ids look like ServiceNow's, random hex


def new_sys_id() -> str:
    return f"{_sys_id_bits(128):032x}"


def now_text(at: float | None = None) -> str:
    """ServiceNow's stored date-time format, UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if at is None else at))


def _ref(table: str) -> FieldSpec:
    return FieldSpec(name="", reference=table)


def _plain(*names: str) -> dict[str, FieldSpec]:
    return {n: FieldSpec(name=n) for n in names}


def _named(fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
    return {
        name: FieldSpec(name, f.reference, f.reference_any, f.computed, f.reference_table_field)
        for name, f in fields.items()
    }


SYS_TABLES: dict[str, tuple[str, dict[str, FieldSpec]]] = {
    "sys_import_set": (
        "number",
        {
            **_plain(
                "number",
                "state",
                "mode",
                "table_name",
                "data_source",
                "load_completed",
                "load_run_time",
                "short_description",
            ),
            # Sandbox addition: the multi import set this set belongs to.
            "multi_import_set": _ref("sys_multi_import_set"),
        },
    ),
    "sys_multi_import_set": ("sys_id", _plain("state", "short_description")),
    "sys_import_set_run": (
        "transform_map",
        {
            "set": _ref("sys_import_set"),
            "transform_map": _ref("sys_transform_map"),
            **_plain(
                "state",
                "started",
                "completed",
                "run_time",
                "total",
                "inserts",
                "updates",
                "processed",
                "ignored",
                "skipped",
                "errors",
            ),
        },
    ),
    "sys_import_set_row_error": (
        "error_message",
        {
            **_plain("error_code", "error_message"),
            "row": FieldSpec(name="", reference_any=True),
            "transform_map": _ref("sys_transform_map"),
            "import_set": _ref("sys_import_set"),
        },
    ),
    "sys_transform_map": ("name", _plain("name", "source_table", "target_table", "order", "active")),
    "sys_transform_entry": (
        "target_field",
        {
            "map": _ref("sys_transform_map"),
            **_plain("source_table", "source_field", "target_table", "target_field", "coalesce"),
        },
    ),
    "sys_dictionary": (
        "element",
        _plain(
            "name",
            "element",
            "column_label",
            "internal_type",
            "max_length",
            "mandatory",
            "reference",
            "active",
        ),
    ),
}

STAGING_SYSTEM_FIELDS: dict[str, FieldSpec] = {
    "sys_import_set": _ref("sys_import_set"),
    "import_set_run": _ref("sys_import_set_run"),
    "sys_transform_map": _ref("sys_transform_map"),
    "sys_target_sys_id": FieldSpec(name="", reference_table_field="sys_target_table"),
    "sys_row_error": _ref("sys_import_set_row_error"),
    **_plain(
        "sys_import_row", "sys_import_state", "sys_import_state_comment", "sys_target_table", "sys_class_name"
    ),
}


class Table:
    """One table: records by sys_id (insertion order), field specs, and lazily built lookup indexes."""

    def __init__(
        self,
        name: str,
        kind: str,
        display: str,
        fields: dict[str, FieldSpec],
        read_roles: frozenset[str],
    ) -> None:
        self.name = name
        self.kind = kind  # system | staging | target
        self.display = display
        self.fields = _named({**_plain(*SYSTEM_FIELDS), **fields})
        self.read_roles = read_roles
        self.records: dict[str, Record] = {}
        self._sequence: dict[str, int] = {}  # sys_id -> insertion number (the order of records)
        self._inserted = 0
        # (field, ...) -> (lower-cased values, ...) -> sys_ids in insertion order
        self._indexes: dict[tuple[str, ...], dict[tuple[str, ...], list[str]]] = {}
        self.computed = [(f.name, f.computed) for f in self.fields.values() if f.computed]

    def display_value(self, record: Record) -> str:
        return record.get(self.display, "")

    def insert(self, record: Record) -> None:
        self.records[record["sys_id"]] = record
        self._sequence[record["sys_id"]] = self._inserted
        self._inserted += 1
        for fields, index in self._indexes.items():
            key = tuple(record.get(f, "").lower() for f in fields)
            index.setdefault(key, []).append(record["sys_id"])

    def added(self, sys_ids: list[str]) -> None:
        """Records put into ``records`` directly (the insertMultiple hot path): indexed as insert does."""
        for sys_id in sys_ids:
            self._sequence[sys_id] = self._inserted
            self._inserted += 1
        for fields, index in self._indexes.items():
            for sys_id in sys_ids:
                record = self.records[sys_id]
                index.setdefault(tuple(record.get(f, "").lower() for f in fields), []).append(sys_id)

    def update(self, sys_id: str, changes: Record) -> None:
        record = self.records[sys_id]
        for fields, index in self._indexes.items():
            if any(f in changes for f in fields):
                old = tuple(record.get(f, "").lower() for f in fields)
                new = tuple(changes.get(f, record.get(f, "")).lower() for f in fields)
                if old != new:
                    ids = index.get(old)
                    if ids:
                        ids.remove(sys_id)
                        if not ids:
                            del index[old]
                    index.setdefault(new, []).append(sys_id)
        record.update(changes)

    def _index(self, fields: tuple[str, ...]) -> dict[tuple[str, ...], list[str]]:
        index = self._indexes.get(fields)
        if index is None:
            index = {}
            for sys_id, record in self.records.items():
                index.setdefault(tuple(record.get(f, "").lower() for f in fields), []).append(sys_id)
            self._indexes[fields] = index
        return index

    def lookup(self, fields: tuple[str, ...], key: tuple[str, ...]) -> str | None:
        """The first record whose fields equal key, case-insensitively (ServiceNow's coalesce default)."""
        ids = self._index(fields).get(tuple(k.lower() for k in key))
        return ids[0] if ids else None

    def candidates(self, name: str, values: frozenset[str]) -> list[Record]:
        """Records whose field ``name`` may equal one of ``values`` (compared case-insensitively:
        a superset, which the query's own predicates then filter), in insertion order — so a
        query on one import set of a large staging table does not read every row."""
        index = self._index((name,))
        ids = [i for key in {(v.lower(),) for v in values} for i in index.get(key, ())]
        ids.sort(key=lambda sys_id: self._sequence.get(sys_id, -1))  # (an update moves an id in its list)
        return [self.records[i] for i in ids if i in self.records]

    def apply_computed(self, record: Record) -> None:
        for name, template in self.computed:
            record[name] = " ".join(_format(template, record).split())


def _format(template: str | None, record: Record) -> str:
    try:
        return (template or "").format_map(_Missing(record))
    except (ValueError, IndexError):
        return template or ""


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


class Store:
    """All tables, plus the bookkeeping the transform engine and the APIs share."""

    def __init__(self, spec: DataSpec) -> None:
        self.lock = threading.RLock()
        self.spec = spec
        self.tables: dict[str, Table] = {}
        self.table_of_sys_id: dict[str, str] = {}
        self.staging: dict[str, StagingSpec] = dict(spec.staging_tables)
        self._number = 10000
        for name, (display, fields) in SYS_TABLES.items():
            self.tables[name] = Table(name, "system", display, fields, SYSTEM_READ_ROLES)
        for tspec in spec.tables.values():
            self._add_target(tspec)
        for sspec in spec.staging_tables.values():
            fields = {**STAGING_SYSTEM_FIELDS, **_plain(*sspec.columns)}
            self.tables[sspec.name] = Table(
                sspec.name, "staging", "sys_import_row", fields, SYSTEM_READ_ROLES
            )
        for tspec in spec.tables.values():
            self._seed_records(tspec)
        self._describe_schema()

    def _add_target(self, tspec: TableSpec) -> None:
        roles = tspec.read_roles or (CMDB_READ_ROLES if tspec.name.startswith("cmdb") else TARGET_READ_ROLES)
        if tspec.name in self.tables:
            # A data file may redefine a sys_* table name only as a target, never the import machinery.
            raise ValueError(f"tables.{tspec.name}: reserved table name")
        self.tables[tspec.name] = Table(tspec.name, "target", tspec.display, tspec.fields, roles)

    def _seed_records(self, tspec: TableSpec) -> None:
        table = self.tables[tspec.name]
        stamp = now_text()
        for raw in tspec.records:
            record = {f: "" for f in table.fields}
            record.update(
                sys_created_on=stamp,
                sys_updated_on=stamp,
                sys_created_by="admin",
                sys_updated_by="admin",
                sys_mod_count="0",
            )
            for key, value in raw.items():
                record[str(key)] = "" if value is None else str(value)
            record["sys_id"] = record["sys_id"] or new_sys_id()
            for fspec in table.fields.values():
                value = record.get(fspec.name, "")
                if fspec.reference and value:
                    # Seed data may name a referenced record by its display value.
                    ref = self.tables[fspec.reference]
                    if value not in ref.records:
                        record[fspec.name] = ref.lookup((ref.display,), (value,)) or value
            table.apply_computed(record)
            self.insert(table, record)

    def _describe_schema(self) -> None:
        """sys_dictionary, sys_transform_map and sys_transform_entry describe the loaded data file."""
        dictionary = self.tables["sys_dictionary"]
        for table in self.tables.values():
            if table.kind == "system":
                continue
            # ServiceNow keeps a "collection" entry (element empty) per table: hence the usual
            # elementISNOTEMPTY in column queries.
            self._system_insert(
                dictionary,
                name=table.name,
                element="",
                column_label=table.name,
                internal_type="collection",
                max_length="40",
                mandatory="false",
                reference="",
                active="true",
            )
            if table.kind == "staging":
                for col in self.staging[table.name].columns.values():
                    self._system_insert(
                        dictionary,
                        name=table.name,
                        element=col.name,
                        column_label=col.label,
                        internal_type="string",
                        max_length=str(col.max_length),
                        mandatory=str(col.mandatory).lower(),
                        reference="",
                        active="true",
                    )
            else:
                for fspec in table.fields.values():
                    if fspec.name in SYSTEM_FIELDS:
                        continue
                    self._system_insert(
                        dictionary,
                        name=table.name,
                        element=fspec.name,
                        column_label=fspec.name.replace("_", " ").title(),
                        internal_type="reference" if fspec.reference else "string",
                        max_length="255",
                        mandatory="false",
                        reference=fspec.reference or "",
                        active="true",
                    )
        # Inherited import set row columns sit under the parent table's name.
        for name in STAGING_SYSTEM_FIELDS:
            self._system_insert(
                dictionary,
                name="sys_import_set_row",
                element=name,
                column_label=name.replace("_", " ").title(),
                internal_type="string",
                max_length="40",
                mandatory="false",
                reference="",
                active="true",
            )
        self.map_ids: dict[tuple[str, str], str] = {}
        for sspec in self.staging.values():
            for tmap in sspec.transform_maps:
                map_id = self._system_insert(
                    self.tables["sys_transform_map"],
                    name=tmap.name,
                    source_table=sspec.name,
                    target_table=tmap.target,
                    order=str(tmap.order),
                    active=str(tmap.active).lower(),
                )
                self.map_ids[(sspec.name, tmap.name)] = map_id
                for fm in tmap.field_maps:
                    self._system_insert(
                        self.tables["sys_transform_entry"],
                        map=map_id,
                        source_table=sspec.name,
                        source_field=fm.source,
                        target_table=tmap.target,
                        target_field=fm.target,
                        coalesce=str(fm.coalesce).lower(),
                    )

    def _system_insert(self, table: Table, /, **values: str) -> str:
        stamp = now_text()
        record = {f: "" for f in table.fields}
        record.update(values)
        record.update(
            sys_id=new_sys_id(),
            sys_created_on=stamp,
            sys_updated_on=stamp,
            sys_created_by="system",
            sys_updated_by="system",
            sys_mod_count="0",
        )
        self.insert(table, record)
        return record["sys_id"]

    def system_insert(self, table_name: str, /, **values: str) -> str:
        return self._system_insert(self.tables[table_name], **values)

    def insert(self, table: Table, record: Record) -> None:
        table.insert(record)
        self.table_of_sys_id[record["sys_id"]] = table.name

    def delete(self, table: Table, sys_id: str) -> None:
        table.records.pop(sys_id, None)
        table._indexes.clear()
        self.table_of_sys_id.pop(sys_id, None)

    def next_import_set_number(self) -> str:
        self._number += 1
        return f"ISET{self._number:07d}"

    def find(self, sys_id: str) -> tuple[Table, Record] | None:
        name = self.table_of_sys_id.get(sys_id)
        if name is None:
            return None
        table = self.tables[name]
        record = table.records.get(sys_id)
        return (table, record) if record is not None else None

    def dump(self, tables: Iterable[str] | None = None) -> dict[str, Any]:
        with self.lock:
            names = list(tables) if tables else list(self.tables)
            return {n: list(self.tables[n].records.values()) for n in names if n in self.tables}
