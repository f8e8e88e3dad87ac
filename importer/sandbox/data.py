"""The sandbox data file: YAML (or a dict of the same shape) -> a typed, validated model.

Every problem in the file is reported at once, each as ``key.path: what is wrong``.
The format is documented in docs/sandbox.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MAX_CONTENT_LENGTH = 10 * 1024 * 1024
DEFAULT_ACCESS_LIFETIME_S = 1800.0
DEFAULT_REFRESH_LIFETIME_S = 100 * 86400.0
DEFAULT_MAX_LENGTH = 40
MAX_ROW_BYTES = 8126  # a larger staging row is skipped and logged (SND r_MaximumRowSize.md)
DEFAULT_KEEPALIVE_IDLE_S = 5.0


class SandboxDataError(ValueError):
    """The data file is not valid; ``problems`` lists every error found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + f"\n{source}: ".join(problems))


@dataclass(frozen=True)
class UserSpec:
    user_name: str
    password: str
    roles: frozenset[str]


@dataclass(frozen=True)
class ClientSpec:
    client_id: str
    client_secret: str
    application_user: str | None  # set: the client may use the client_credentials grant


@dataclass(frozen=True)
class FieldSpec:
    name: str
    reference: str | None = None  # referenced table name
    reference_any: bool = False  # a sys_id of any table (document_id-like)
    computed: str | None = None  # "{first_name} {last_name}"
    reference_table_field: str | None = None  # the referenced table is named by this field of the record


@dataclass
class TableSpec:
    name: str
    display: str
    fields: dict[str, FieldSpec]
    records: list[dict[str, Any]]
    read_roles: frozenset[str] | None = None


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    label: str
    max_length: int = DEFAULT_MAX_LENGTH
    mandatory: bool = False


@dataclass(frozen=True)
class FieldMapSpec:
    source: str
    target: str
    coalesce: bool = False
    required: bool = False
    pattern: str | None = None
    pattern_message: str | None = None
    reference_field: str | None = None
    # A value not found creates the record unless the field map says ignore or reject (§11).
    choice_action: str = "create"  # create | ignore | reject


@dataclass
class TransformMapSpec:
    name: str
    order: int
    target: str
    field_maps: list[FieldMapSpec]
    active: bool = True
    copy_empty_fields: bool = False
    create_on_empty_coalesce: bool = False


@dataclass
class StagingSpec:
    name: str
    columns: dict[str, ColumnSpec]
    column_mapping: str = "label"  # label | name
    mode: str = "asynchronous"  # for insertMultiple: asynchronous | synchronous
    transform_maps: list[TransformMapSpec] = field(default_factory=list)


@dataclass
class DataSpec:
    seed: int | None = None
    max_content_length_bytes: int = DEFAULT_MAX_CONTENT_LENGTH
    async_transform_delay_ms: float = 50.0
    client_credentials_grant: bool = True
    max_row_bytes: int = MAX_ROW_BYTES
    keepalive_idle_s: float = DEFAULT_KEEPALIVE_IDLE_S
    users: dict[str, UserSpec] = field(default_factory=dict)
    access_token_lifetime_s: float = DEFAULT_ACCESS_LIFETIME_S
    refresh_token_lifetime_s: float = DEFAULT_REFRESH_LIFETIME_S
    clients: dict[str, ClientSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    staging_tables: dict[str, StagingSpec] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)


def load_data(data: str | Path | dict[str, Any] | None) -> DataSpec:
    """Read the default data set, a YAML file or a dict, and validate it."""
    if data is None:
        text = resources.files("importer.sandbox").joinpath("data/default.yaml").read_text("utf-8")
        return parse_data(yaml.safe_load(text), source="default.yaml")
    if isinstance(data, dict):
        return parse_data(data, source="<data>")
    path = Path(data)
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SandboxDataError(str(path), [f"cannot read: {exc}"]) from exc
    return parse_data(raw, source=str(path))


class _Checker:
    """Collects problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def listing(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        return value

    def unknown_keys(self, raw: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in raw:
            if key not in allowed:
                self.problems.append(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")

    def text(self, raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if value is None:
            self.problems.append(f"{where}.{key}: required")
            return ""
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.problems.append(f"{where}.{key}: expected text")
            return ""
        return str(value)

    def number(self, raw: dict[str, Any], key: str, where: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.problems.append(f"{where}.{key}: expected a number >= 0")
            return default
        return float(value)

    def flag(self, raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(f"{where}.{key}: expected true or false")
            return default
        return value

    def choice(self, raw: dict[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
        value = raw.get(key, choices[0])
        if value not in choices:
            self.problems.append(f"{where}.{key}: expected one of {', '.join(choices)}, got {value!r}")
            return choices[0]
        return str(value)


def parse_data(raw: Any, source: str) -> DataSpec:
    check = _Checker()
    top = check.mapping(raw, "(top)")
    check.unknown_keys(top, {"instance", "users", "oauth", "tables", "staging_tables", "faults"}, "(top)")
    spec = DataSpec()

    instance = check.mapping(top.get("instance"), "instance")
    check.unknown_keys(
        instance,
        {
            "seed",
            "max_content_length_bytes",
            "async_transform_delay_ms",
            "client_credentials_grant",
            "max_row_bytes",
            "keepalive_idle_s",
        },
        "instance",
    )
    seed = instance.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        check.problems.append("instance.seed: expected an integer or null")
        seed = None
    spec.seed = seed
    spec.max_content_length_bytes = int(
        check.number(instance, "max_content_length_bytes", "instance", DEFAULT_MAX_CONTENT_LENGTH)
    )
    spec.async_transform_delay_ms = check.number(instance, "async_transform_delay_ms", "instance", 50.0)
    spec.client_credentials_grant = check.flag(instance, "client_credentials_grant", "instance", True)
    spec.max_row_bytes = int(check.number(instance, "max_row_bytes", "instance", MAX_ROW_BYTES))
    spec.keepalive_idle_s = check.number(instance, "keepalive_idle_s", "instance", DEFAULT_KEEPALIVE_IDLE_S)
    if spec.keepalive_idle_s <= 0:
        check.problems.append("instance.keepalive_idle_s: expected a number > 0")
        spec.keepalive_idle_s = DEFAULT_KEEPALIVE_IDLE_S

    for i, raw_user in enumerate(check.listing(top.get("users"), "users")):
        where = f"users[{i}]"
        user = check.mapping(raw_user, where)
        check.unknown_keys(user, {"user_name", "password", "roles"}, where)
        roles = [str(r) for r in check.listing(user.get("roles"), f"{where}.roles")]
        name = check.text(user, "user_name", where)
        spec.users[name] = UserSpec(name, check.text(user, "password", where), frozenset(roles))

    oauth = check.mapping(top.get("oauth"), "oauth")
    check.unknown_keys(oauth, {"access_token_lifetime_s", "refresh_token_lifetime_s", "clients"}, "oauth")
    spec.access_token_lifetime_s = check.number(
        oauth, "access_token_lifetime_s", "oauth", DEFAULT_ACCESS_LIFETIME_S
    )
    spec.refresh_token_lifetime_s = check.number(
        oauth, "refresh_token_lifetime_s", "oauth", DEFAULT_REFRESH_LIFETIME_S
    )
    for i, raw_client in enumerate(check.listing(oauth.get("clients"), "oauth.clients")):
        where = f"oauth.clients[{i}]"
        client = check.mapping(raw_client, where)
        check.unknown_keys(client, {"client_id", "client_secret", "application_user"}, where)
        app_user = client.get("application_user")
        if app_user is not None and app_user not in spec.users:
            check.problems.append(f"{where}.application_user: no user {app_user!r}")
        cid = check.text(client, "client_id", where)
        spec.clients[cid] = ClientSpec(cid, check.text(client, "client_secret", where), app_user)

    for name, raw_table in check.mapping(top.get("tables"), "tables").items():
        spec.tables[name] = _parse_table(check, str(name), raw_table)
    for name, raw_staging in check.mapping(top.get("staging_tables"), "staging_tables").items():
        spec.staging_tables[name] = _parse_staging(check, str(name), raw_staging)

    _cross_check(check, spec)
    spec.faults = dict(check.mapping(top.get("faults"), "faults"))
    if check.problems:
        raise SandboxDataError(source, check.problems)
    return spec


def _parse_table(check: _Checker, name: str, raw: Any) -> TableSpec:
    where = f"tables.{name}"
    table = check.mapping(raw, where)
    check.unknown_keys(table, {"display", "fields", "records", "read_roles"}, where)
    fields: dict[str, FieldSpec] = {}
    raw_fields = table.get("fields")
    if isinstance(raw_fields, list):
        raw_fields = {str(f): {} for f in raw_fields}
    for fname, raw_field in check.mapping(raw_fields, f"{where}.fields").items():
        fwhere = f"{where}.fields.{fname}"
        fdef = check.mapping(raw_field, fwhere)
        check.unknown_keys(fdef, {"reference", "reference_any", "computed"}, fwhere)
        fields[str(fname)] = FieldSpec(
            name=str(fname),
            reference=fdef.get("reference"),
            reference_any=check.flag(fdef, "reference_any", fwhere, False),
            computed=fdef.get("computed"),
        )
    display = check.text(table, "display", where, default="name")
    if display not in fields:
        check.problems.append(f"{where}.display: {display!r} is not one of the table's fields")
    records = [
        check.mapping(r, f"{where}.records[{i}]")
        for i, r in enumerate(check.listing(table.get("records"), f"{where}.records"))
    ]
    roles = table.get("read_roles")
    read_roles = frozenset(str(r) for r in check.listing(roles, f"{where}.read_roles")) if roles else None
    return TableSpec(name, display, fields, records, read_roles)


def _parse_staging(check: _Checker, name: str, raw: Any) -> StagingSpec:
    where = f"staging_tables.{name}"
    staging = check.mapping(raw, where)
    check.unknown_keys(staging, {"columns", "column_mapping", "mode", "transform_maps"}, where)
    columns: dict[str, ColumnSpec] = {}
    for cname, raw_col in check.mapping(staging.get("columns"), f"{where}.columns").items():
        cwhere = f"{where}.columns.{cname}"
        col = check.mapping(raw_col, cwhere)
        check.unknown_keys(col, {"label", "max_length", "mandatory"}, cwhere)
        if not str(cname).startswith("u_"):
            check.problems.append(f"{cwhere}: staging column names start with 'u_'")
        columns[str(cname)] = ColumnSpec(
            name=str(cname),
            label=check.text(col, "label", cwhere),
            max_length=max(1, int(check.number(col, "max_length", cwhere, DEFAULT_MAX_LENGTH))),
            mandatory=check.flag(col, "mandatory", cwhere, False),
        )
    maps = []
    for i, raw_map in enumerate(check.listing(staging.get("transform_maps"), f"{where}.transform_maps")):
        maps.append(_parse_map(check, f"{where}.transform_maps[{i}]", raw_map, columns))
    maps.sort(key=lambda m: m.order)
    return StagingSpec(
        name=name,
        columns=columns,
        column_mapping=check.choice(staging, "column_mapping", where, ("label", "name")),
        mode=check.choice(staging, "mode", where, ("asynchronous", "synchronous")),
        transform_maps=maps,
    )


def _parse_map(check: _Checker, where: str, raw: Any, columns: dict[str, ColumnSpec]) -> TransformMapSpec:
    tmap = check.mapping(raw, where)
    check.unknown_keys(
        tmap,
        {"name", "order", "target", "field_maps", "active", "copy_empty_fields", "create_on_empty_coalesce"},
        where,
    )
    field_maps = []
    for i, raw_fm in enumerate(check.listing(tmap.get("field_maps"), f"{where}.field_maps")):
        fwhere = f"{where}.field_maps[{i}]"
        fm = check.mapping(raw_fm, fwhere)
        check.unknown_keys(
            fm,
            {
                "source",
                "target",
                "coalesce",
                "required",
                "pattern",
                "pattern_message",
                "reference_field",
                "choice_action",
            },
            fwhere,
        )
        source = check.text(fm, "source", fwhere)
        if source and source not in columns:
            check.problems.append(f"{fwhere}.source: {source!r} is not a column of the staging table")
        pattern = fm.get("pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                check.problems.append(f"{fwhere}.pattern: invalid regular expression: {exc}")
                pattern = None
        field_maps.append(
            FieldMapSpec(
                source=source,
                target=check.text(fm, "target", fwhere),
                coalesce=check.flag(fm, "coalesce", fwhere, False),
                required=check.flag(fm, "required", fwhere, False),
                pattern=pattern,
                pattern_message=fm.get("pattern_message"),
                reference_field=fm.get("reference_field"),
                choice_action=check.choice(fm, "choice_action", fwhere, ("create", "ignore", "reject")),
            )
        )
    order = tmap.get("order", 100)
    if isinstance(order, bool) or not isinstance(order, int):
        check.problems.append(f"{where}.order: expected an integer")
        order = 100
    return TransformMapSpec(
        name=check.text(tmap, "name", where),
        order=order,
        target=check.text(tmap, "target", where),
        field_maps=field_maps,
        active=check.flag(tmap, "active", where, True),
        copy_empty_fields=check.flag(tmap, "copy_empty_fields", where, False),
        create_on_empty_coalesce=check.flag(tmap, "create_on_empty_coalesce", where, False),
    )


def _cross_check(check: _Checker, spec: DataSpec) -> None:
    for table in spec.tables.values():
        for fspec in table.fields.values():
            if fspec.reference and fspec.reference not in spec.tables:
                check.problems.append(
                    f"tables.{table.name}.fields.{fspec.name}.reference: no table {fspec.reference!r}"
                )
    for staging in spec.staging_tables.values():
        if staging.name in spec.tables:
            check.problems.append(f"staging_tables.{staging.name}: also defined under tables")
        for i, tmap in enumerate(staging.transform_maps):
            where = f"staging_tables.{staging.name}.transform_maps[{i}]"
            target = spec.tables.get(tmap.target)
            if target is None:
                check.problems.append(f"{where}.target: no table {tmap.target!r} under tables")
                continue
            for fm in tmap.field_maps:
                tfield = target.fields.get(fm.target)
                if tfield is None:
                    check.problems.append(
                        f"{where}: target field {fm.target!r} is not a field of {tmap.target}"
                    )
                elif fm.reference_field and tfield.reference:
                    ref_table = spec.tables.get(tfield.reference)
                    if ref_table and fm.reference_field not in ref_table.fields:
                        check.problems.append(
                            f"{where}: reference_field {fm.reference_field!r} "
                            f"is not a field of {tfield.reference}"
                        )
