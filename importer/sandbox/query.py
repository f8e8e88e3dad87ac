"""Encoded queries (``sysparm_query``) and Table API record rendering (notes §6)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .store import Record, Store, Table

_CONDITION = re.compile(
    r"^(?P<field>[a-z0-9_.]+?)"
    r"(?P<op>ISNOTEMPTY|ISEMPTY|STARTSWITH|ENDSWITH|NOT LIKE|NOT IN|LIKE|IN|!=|>=|<=|=|>|<)"
    r"(?P<value>.*)$",
    re.DOTALL,
)

Predicate = Callable[[Record], bool]


@dataclass
class Query:
    groups: list[list[Predicate]] = field(default_factory=list)  # AND of (OR of predicates)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    # Per group: (field, values) when the group is one "=" or "IN" condition, else None; lets
    # select() start from the table's index instead of reading every record.
    exact: list[tuple[str, frozenset[str]] | None] = field(default_factory=list)

    def matches(self, record: Record) -> bool:
        return all(any(p(record) for p in group) for group in self.groups)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _compare(op: str, left: str, right: str) -> bool:
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]
    return {">=": left >= right, "<=": left <= right, ">": left > right, "<": left < right}[op]


def _predicate(name: str, op: str, value: str) -> Predicate:
    if op == "=":
        return lambda r: r.get(name, "") == value
    if op == "!=":
        return lambda r: r.get(name, "") != value
    if op in ("IN", "NOT IN"):
        options = set(value.split(","))
        if op == "IN":
            return lambda r: r.get(name, "") in options
        return lambda r: r.get(name, "") not in options
    if op == "STARTSWITH":
        return lambda r: r.get(name, "").startswith(value)
    if op == "ENDSWITH":
        return lambda r: r.get(name, "").endswith(value)
    if op == "LIKE":
        return lambda r: value in r.get(name, "")
    if op == "NOT LIKE":
        return lambda r: value not in r.get(name, "")
    if op == "ISEMPTY":
        return lambda r: not r.get(name, "")
    if op == "ISNOTEMPTY":
        return lambda r: bool(r.get(name, ""))
    return lambda r: _compare(op, r.get(name, ""), value)


def parse_query(text: str, table: Table) -> Query:
    """Parse an encoded query. Parts naming an unknown field are ignored (ServiceNow's default)."""
    query = Query()
    if not text:
        return query
    for part in text.split("^"):
        if not part:
            continue
        if part.startswith("ORDERBYDESC"):
            if part[11:] in table.fields:
                query.order.append((part[11:], True))
            continue
        if part.startswith("ORDERBY"):
            if part[7:] in table.fields:
                query.order.append((part[7:], False))
            continue
        is_or = part.startswith("OR") and query.groups
        condition = part[2:] if part.startswith("OR") else part
        if condition.startswith("NQ"):
            continue  # new-query blocks are not supported: ignored like any invalid part
        match = _CONDITION.match(condition)
        if match is None or match["field"] not in table.fields:
            continue
        predicate = _predicate(match["field"], match["op"], match["value"])
        if is_or:
            query.groups[-1].append(predicate)
            query.exact[-1] = None
        else:
            query.groups.append([predicate])
            op, value = match["op"], match["value"]
            values = frozenset(value.split(",")) if op == "IN" else frozenset([value]) if op == "=" else None
            query.exact.append((match["field"], values) if values is not None else None)
    return query


_INDEXED_FIELDS = frozenset({"sys_id", "sys_import_set"})


def select(table: Table, query: Query) -> list[Record]:
    records: Iterable[Record] = table.records.values()
    # Only fields a record never changes after it is stored: the indexes see every insert, but
    # the transform engine writes staging and target fields in place.
    narrowing = next((e for e in query.exact if e is not None and e[0] in _INDEXED_FIELDS), None)
    if narrowing is not None:
        records = table.candidates(*narrowing)  # a superset of the matches, in the same order
    selected = [r for r in records if query.matches(r)] if query.groups else list(records)
    if query.order:
        for name, descending in reversed(query.order):
            selected.sort(key=lambda r: _sort_key(r.get(name, "")), reverse=descending)
    else:
        # No ORDERBY: ServiceNow promises no order. The sandbox orders by sys_id (stable across pages,
        # unrelated to insertion order): hardest on a client that forgets to order.
        selected.sort(key=lambda r: r["sys_id"])
    return selected


def _sort_key(value: str) -> tuple[int, float, str]:
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


@dataclass(frozen=True)
class RenderOptions:
    base_url: str
    fields: tuple[str, ...] | None
    display_value: str  # "false" | "true" | "all"
    exclude_reference_link: bool


def reference_target(store: Store, table: Table, name: str, record: Record) -> Table | None:
    spec = table.fields.get(name)
    if spec is None:
        return None
    if spec.reference:
        return store.tables.get(spec.reference)
    if spec.reference_table_field:
        return store.tables.get(record.get(spec.reference_table_field, ""))
    if spec.reference_any:
        found = store.find(record.get(name, ""))
        return found[0] if found else None
    return None


def is_reference(table: Table, name: str) -> bool:
    spec = table.fields.get(name)
    return spec is not None and bool(spec.reference or spec.reference_table_field or spec.reference_any)


def render(store: Store, table: Table, record: Record, options: RenderOptions) -> dict[str, Any]:
    names = options.fields if options.fields is not None else tuple(table.fields)
    out: dict[str, Any] = {}
    for name in names:
        if name not in table.fields:
            continue  # unknown names in sysparm_fields are ignored
        value = record.get(name, "")
        if not is_reference(table, name):
            if options.display_value == "all":
                out[name] = {"display_value": value, "value": value}
            else:
                out[name] = value
            continue
        if not value:
            out[name] = {"display_value": "", "value": ""} if options.display_value == "all" else ""
            continue
        ref_table = reference_target(store, table, name, record)
        ref_record = ref_table.records.get(value) if ref_table else None
        display = ref_table.display_value(ref_record) if ref_table and ref_record else ""
        link = f"{options.base_url}api/now/table/{ref_table.name if ref_table else 'sys_metadata'}/{value}"
        if options.display_value == "true":
            shown: dict[str, str] = {"display_value": display}
            if not options.exclude_reference_link:
                shown["link"] = link
                out[name] = shown
            else:
                out[name] = display
        elif options.display_value == "all":
            shown = {"display_value": display, "value": value}
            if not options.exclude_reference_link:
                shown["link"] = link
            out[name] = shown
        elif options.exclude_reference_link:
            out[name] = value
        else:
            out[name] = {"link": link, "value": value}
    return out
