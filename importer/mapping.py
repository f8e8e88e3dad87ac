"""The mapping model and row translation: pure functions over plain data (no YAML, no files).

``parse_mapping`` validates one mapping's data as YAML gives it (every problem at once, each
``mappings/x.yaml: columns.Emp ID.to: ...``); reading the files, and choosing the mapping of a
dropped file, is ``importer.mapping_files``. ``check_headers`` refuses a file whose headers cannot
satisfy a mapping, and ``translate_row`` turns one source row into the record sent to the staging
table (or the reason the row is invalid).
"""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import regex

from importer.errors import ConfigError, InputFileError
from importer.mapping_fields import (
    Problems,
    as_choice,
    as_flag,
    as_section,
    as_text,
    as_text_list,
    check_keys,
    parse_reading_options,
    shown,
    type_name,
)
from importer.readers.base import SourceRow
from importer.readers.options import CsvOptions, ExcelOptions, JsonOptions

_TABLE_NAME = re.compile(r"^[a-z0-9_]+$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# The directives datetime.strptime understands; anything else is a typo in the mapping.
_STRPTIME_DIRECTIVES = set("aAwdbBmyYHIpMSfzZjUWcxXGuV%")
_TIME_DIRECTIVES = set("HMSIpcX")

_TOP_KEYS = (
    "kind", "staging_table", "match", "key_by", "after", "batch_rows", "on_invalid_row",
    "unmapped", "csv", "excel", "json", "columns", "constants", "verify", "control_chars",
)  # fmt: skip
KINDS = ("import_set", "app_service")
_COLUMN_KEYS = ("to", "required", "strip", "lower", "pattern", "date", "default")
MAX_BATCH_ROWS = 10_000
# One pattern against one cell may take this long (``[limits] pattern_timeout_s`` in the daemon).
PATTERN_TIMEOUT_S = 0.25
# Control characters a text field must not carry: C0 and C1 controls, DEL; tab, LF and CR are text.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A group holding a quantifier, itself quantified: (a+)+, (\w+\s?)*, (x{2,})+ ... backtracks exponentially.
_NESTED_QUANTIFIER = re.compile(
    r"\((?:[^()\\]|\\.)*?(?:[+*]|\{\d*,\d*\})(?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,\d*\})"
)


@dataclass(frozen=True)
class ColumnSpec:
    source: str  # the header in the dropped file (dotted for nested JSON)
    to: str  # the staging table's field label (key_by: label) or column name (key_by: column)
    required: bool = False
    strip: bool = False
    lower: bool = False
    pattern: Any = None  # a compiled ``regex`` pattern (matched under a time bound)
    date: str | None = None  # strptime format; the value is sent as yyyy-MM-dd[ HH:mm:ss]
    default: str | None = None  # used when the cell is empty


@dataclass(frozen=True, slots=True)
class _ColumnPlan:
    """One column, precomputed so translate_row does no per-row setup."""

    source: str
    to: str
    required: bool
    strip: bool
    lower: bool
    search: Any  # bound re.Pattern.search or None
    pattern_text: str
    date: str | None
    date_has_time: bool
    default: str | None


@dataclass(frozen=True)
class Mapping:
    name: str
    source: str  # the mapping file, as text for messages
    staging_table: str
    match: tuple[str, ...] = ()
    key_by: Literal["label", "column"] = "label"
    after: tuple[str, ...] = ()
    batch_rows: int = 500
    on_invalid_row: Literal["skip", "reject_file"] = "skip"
    unmapped: Literal["ignore", "error"] = "ignore"
    control_chars: Literal["reject", "strip"] = "reject"
    csv: CsvOptions = field(default_factory=CsvOptions)
    excel: ExcelOptions = field(default_factory=ExcelOptions)
    json: JsonOptions = field(default_factory=JsonOptions)
    columns: tuple[ColumnSpec, ...] = ()
    constants: dict[str, str] = field(default_factory=dict, hash=False)
    # import_set: rows go to staging_table; app_service: to the Application Service API
    # (importer/appservice_mapping.py; staging_table is then cmdb_ci_service_auto).
    kind: Literal["import_set", "app_service"] = "import_set"
    verify: bool = False  # `importer verify` after each file
    # verify: {fields: {label: target field}}: where sys_transform_entry is not readable
    verify_fields: dict[str, str] = field(default_factory=dict, hash=False)
    _plan: tuple[_ColumnPlan, ...] = field(init=False, repr=False, compare=False, hash=False)
    _sources: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)
    _globs: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        plan = tuple(
            _ColumnPlan(
                source=c.source,
                to=c.to,
                required=c.required,
                strip=c.strip,
                lower=c.lower,
                search=c.pattern.search if c.pattern is not None else None,
                pattern_text=c.pattern.pattern if c.pattern is not None else "",
                date=c.date,
                date_has_time=c.date is not None and _has_time_directive(c.date),
                default=c.default,
            )
            for c in self.columns
        )
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_sources", frozenset(c.source for c in self.columns))
        globs = tuple(re.compile(fnmatch.translate(g.lower())) for g in self.match)
        object.__setattr__(self, "_globs", globs)

    @property
    def targets(self) -> list[str]:
        """Every staging key this mapping sends: the columns' ``to`` and the constants' keys."""
        return [c.to for c in self.columns] + list(self.constants)

    def matches_name(self, file_name: str) -> bool:
        """Whether a file name matches one of the ``match`` globs (case-insensitive)."""
        lowered = file_name.lower()
        return any(glob.match(lowered) for glob in self._globs)


@dataclass(frozen=True, slots=True)
class TranslatedRow:
    number: int
    record: dict[str, str] | None  # exactly one of record / problem is set
    problem: str | None


# --- parsing and validation (pure) ---------------------------------------------------------------


def _has_time_directive(fmt: str) -> bool:
    return any(d in _TIME_DIRECTIVES for d in re.findall(r"%(.)", fmt.replace("%%", "")))


def _check_date_format(fmt: str) -> str | None:
    """The problem with a strptime format, or None if it is usable."""
    directives = re.findall(r"%(.?)", fmt)
    unknown = [d for d in directives if d not in _STRPTIME_DIRECTIVES]
    if unknown:
        bad = "%" + unknown[0] if unknown[0] else "a lone % at the end"
        return f'{bad!r} is not a strptime directive in {fmt!r} (e.g. "%d/%m/%Y")'
    if not [d for d in directives if d != "%"]:
        return f'{fmt!r} has no strptime directive; write the format like "%d/%m/%Y"'
    return None


def parse_column(problems: Problems, header: object, spec: object) -> ColumnSpec | None:
    """One ``columns:`` entry (``"Emp ID": label`` or ``{to: ..., required: ...}``), or None if invalid."""
    if not isinstance(header, str) or not header.strip():
        problems.add(
            f"columns.{header}",
            'the source header must be non-empty text (put it in quotes, e.g. "2024": ...)',
        )
        return None
    source = header.strip()
    where = f"columns.{source}"
    if isinstance(spec, str):
        if not spec.strip():
            problems.add(where, "the target label is empty")
            return None
        return ColumnSpec(source=source, to=spec.strip())
    if not isinstance(spec, dict):
        problems.add(where, f"must be a target label or a mapping like {{to: ...}}, got {type_name(spec)}")
        return None
    check_keys(problems, where, spec, _COLUMN_KEYS)
    to = None
    if "to" not in spec:
        problems.add(f"{where}.to", "field required (the staging label or column name to send it as)")
    else:
        to = as_text(problems, f"{where}.to", spec["to"])
        if to is not None and not to.strip():
            problems.add(f"{where}.to", "must not be empty")
            to = None
    flags = {
        key: as_flag(problems, f"{where}.{key}", spec[key])
        for key in ("required", "strip", "lower")
        if key in spec
    }
    pattern = None
    if "pattern" in spec:
        text = as_text(problems, f"{where}.pattern", spec["pattern"])
        if text is not None:
            try:
                pattern = regex.compile(text)
            except (regex.error, re.error) as exc:
                problems.add(f"{where}.pattern", f"invalid regular expression {text!r}: {exc}")
    date = None
    if "date" in spec:
        date = as_text(problems, f"{where}.date", spec["date"])
        if date is not None and (date_problem := _check_date_format(date)):
            problems.add(f"{where}.date", date_problem)
            date = None
    default = as_text(problems, f"{where}.default", spec["default"]) if "default" in spec else None
    if to is None:
        return None
    return ColumnSpec(source=source, to=to.strip(), pattern=pattern, date=date, default=default, **flags)


def parse_verify(problems: Problems, value: object) -> dict[str, Any]:
    """``verify: true`` | ``verify: {after_each_file: true, fields: {label: target field}}``."""
    if isinstance(value, bool):
        return {"verify": value}
    section = as_section(problems, "verify", value, ("after_each_file", "fields"))
    options: dict[str, Any] = {
        "verify": as_flag(problems, "verify.after_each_file", section.get("after_each_file", False))
    }
    fields = section.get("fields")
    if fields is not None:
        if not isinstance(fields, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in fields.items()
        ):
            problems.add("verify.fields", "must map each staging label to the target field holding it")
        else:
            options["verify_fields"] = dict(fields)
    return options


def parse_mapping(name: str, data: object, source: str) -> Mapping:
    """Validate one mapping's data (as YAML gives it). Raises ConfigError listing every problem."""
    problems = Problems(source)
    if data is None:
        raise ConfigError(f"{source}: the mapping file is empty; it needs at least staging_table and columns")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: must be a mapping of keys (staging_table: ..., columns: ...), got {type_name(data)}"
        )
    kind = data.get("kind", "import_set")
    if kind == "app_service":
        from importer.appservice_mapping import parse_app_service_mapping

        return parse_app_service_mapping(name, data, source)
    check_keys(problems, "", data, _TOP_KEYS)
    if kind != "import_set":
        problems.add("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")

    staging_table = ""
    if "staging_table" not in data:
        problems.add("staging_table", "field required (the Import Set staging table, e.g. u_hr_user_import)")
    else:
        staging_table = as_text(problems, "staging_table", data["staging_table"]) or ""
        if staging_table and not _TABLE_NAME.match(staging_table):
            hint = (
                f"; did you mean {staging_table.lower()!r}?"
                if _TABLE_NAME.match(staging_table.lower())
                else ""
            )
            problems.add("staging_table", f"{staging_table!r} is not a table name (a-z, 0-9, _){hint}")

    match = as_text_list(problems, "match", data["match"]) if data.get("match") is not None else ()
    for glob in match:
        if "/" in glob or "\\" in glob:
            problems.add("match", f"{glob!r}: globs match the file name only, not a folder")
    after = as_text_list(problems, "after", data["after"]) if data.get("after") is not None else ()

    options: dict[str, Any] = {}
    if "key_by" in data:
        options["key_by"] = as_choice(problems, "key_by", data["key_by"], ("label", "column"))
    if "on_invalid_row" in data:
        options["on_invalid_row"] = as_choice(
            problems, "on_invalid_row", data["on_invalid_row"], ("skip", "reject_file")
        )
    if "unmapped" in data:
        options["unmapped"] = as_choice(problems, "unmapped", data["unmapped"], ("ignore", "error"))
    if "verify" in data:
        options.update(parse_verify(problems, data["verify"]))
    if "control_chars" in data:
        options["control_chars"] = as_choice(
            problems, "control_chars", data["control_chars"], ("reject", "strip")
        )
    if "batch_rows" in data:
        rows = data["batch_rows"]
        if isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows <= MAX_BATCH_ROWS:
            options["batch_rows"] = rows
        else:
            problems.add(
                "batch_rows", f"must be a whole number from 1 to {MAX_BATCH_ROWS:_}, got {shown(rows)}"
            )

    columns: list[ColumnSpec] = []
    raw_columns = data.get("columns")
    if not raw_columns:
        problems.add("columns", 'field required: at least one "source header": "staging label" line')
    elif not isinstance(raw_columns, dict):
        problems.add(
            "columns", f"must be a mapping of source header -> label or spec, got {type_name(raw_columns)}"
        )
    else:
        for header, spec in raw_columns.items():
            column = parse_column(problems, header, spec)
            if column is not None:
                columns.append(column)
    seen_targets: dict[str, str] = {}
    for column in columns:
        if column.to in seen_targets:
            problems.add(
                f"columns.{column.source}.to",
                f"{column.to!r} is also the target of column {seen_targets[column.to]!r}; "
                "each staging field can be sent only once",
            )
        seen_targets.setdefault(column.to, column.source)

    constants: dict[str, str] = {}
    raw_constants = data.get("constants")
    if raw_constants is not None and not isinstance(raw_constants, dict):
        problems.add(
            "constants", f"must be a mapping of staging label -> text, got {type_name(raw_constants)}"
        )
    elif raw_constants:
        for key, value in raw_constants.items():
            where = f"constants.{key}"
            if not isinstance(key, str) or not key.strip():
                problems.add(where, "the staging label must be non-empty text (put it in quotes)")
                continue
            text = as_text(problems, where, value)
            if text is None:
                continue
            if key.strip() in seen_targets:
                problems.add(
                    where, f"{key.strip()!r} is also the target of column {seen_targets[key.strip()]!r}"
                )
                continue
            constants[key.strip()] = text

    return build_mapping(
        problems,
        data,
        name=name,
        source=source,
        staging_table=staging_table,
        match=match,
        after=after,
        columns=tuple(columns),
        constants=constants,
        **options,
    )


def build_mapping(problems: Problems, data: dict[str, Any], **fields: Any) -> Mapping:
    """The ``Mapping`` of any kind once its own keys are parsed: adds the reading options
    (``csv:``, ``excel:``, ``json:``), then raises every problem found at once, or builds it."""
    reading = parse_reading_options(problems, data)
    if problems.items:
        raise ConfigError(problems.items[0], problems=problems.items, mapping=fields["name"])
    return Mapping(**fields, **reading)


# --- checking a file's headers --------------------------------------------------------------------


def _quote_list(items: Iterable[str], limit: int = 30) -> str:
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_headers(mapping: Mapping, headers: list[str] | None) -> None:
    """Refuse a file whose headers lack a required column (or, with ``unmapped: error``, carry
    columns the mapping does not name). ``headers=None`` (JSON): checked per row instead."""
    if headers is None:
        return
    present = {h.strip() for h in headers}
    folded: dict[str, str] = {}
    for header in headers:
        folded.setdefault(header.strip().casefold(), header.strip())
    missing = [c.source for c in mapping.columns if c.required and c.source.strip() not in present]
    if missing:
        hints = [
            f"for {m!r} did you mean {folded[m.strip().casefold()]!r}?"
            for m in missing
            if m.strip().casefold() in folded
        ]
        what = (
            f"required column {missing[0]!r} is missing"
            if len(missing) == 1
            else f"required columns {_quote_list(missing)} are missing"
        )
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise InputFileError(
            f"{what}{hint}; the file's headers are: {_quote_list(h.strip() for h in headers) or '(none)'} "
            f"(mapping {mapping.name}: {mapping.source})",
            mapping=mapping.name,
        )
    if mapping.unmapped == "error":
        named = {c.source.strip() for c in mapping.columns}
        extra = [h.strip() for h in headers if h.strip() and h.strip() not in named]
        if extra:
            raise InputFileError(
                f"the file has columns that mapping {mapping.name} does not name: {_quote_list(extra)}; "
                f"add them to columns: in {mapping.source} or set unmapped: ignore",
                mapping=mapping.name,
            )


# --- translating one row ------------------------------------------------------------------------


def _short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


@functools.lru_cache(maxsize=4096)  # strptime is the slowest step per row, and dates repeat
def _to_iso(value: str, fmt: str, has_time: bool) -> str | None:
    """The date as yyyy-MM-dd[ HH:mm:ss], or None if it does not parse."""
    if _ISO_DATE.match(value) or _ISO_DATETIME.match(value):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return None
        return value
    try:
        parsed = datetime.strptime(value, fmt)
    except ValueError:
        return None
    day = f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d}"
    return f"{day} {parsed.hour:02d}:{parsed.minute:02d}:{parsed.second:02d}" if has_time else day


def pattern_warnings(mapping: Mapping) -> list[str]:
    """Patterns that can backtrack exponentially (a quantified group holding a quantifier): they
    are matched under a time bound, but a row that hits it is invalid, so say so up front."""
    return [
        f"{mapping.source}: columns.{c.source}.pattern {c.pattern.pattern!r} nests quantifiers "
        "(like (a+)+); it can take exponential time on some values and such rows end invalid "
        "(pattern timeout). Write it without the nested repetition, e.g. ^a+$ for ^(a+)+$"
        for c in mapping.columns
        if c.pattern is not None and _NESTED_QUANTIFIER.search(c.pattern.pattern)
    ]


def _control_char_problem(source: str, value: str, found: re.Match[str]) -> str:
    char = found.group()
    name = unicodedata.name(char, "") or {"\x00": "NUL"}.get(char, "control character")
    return (
        f"{source!r} holds a control character (U+{ord(char):04X} {name}) at position "
        f"{found.start() + 1}; remove it from the file, or set control_chars: strip in the mapping"
    )


def translate_row(
    mapping: Mapping, row: SourceRow, *, pattern_timeout_s: float = PATTERN_TIMEOUT_S
) -> TranslatedRow:
    """One source row -> the record sent to the staging table, or the reason it is invalid."""
    if row.problem is not None:
        return TranslatedRow(row.number, None, row.problem)
    values = row.values
    record: dict[str, str] = {}
    problems: list[str] = []
    for col in mapping._plan:
        value = values.get(col.source)
        if value is None:
            if col.required and col.default is None:
                problems.append(f"{col.source!r} is required but missing")
                continue
            value = ""
        if (control := _CONTROL_CHARS.search(value)) is not None:
            if mapping.control_chars == "reject":
                problems.append(_control_char_problem(col.source, value, control))
                continue
            value = _CONTROL_CHARS.sub("", value)
        if col.strip:
            value = value.strip()
        if not value and col.default is not None:
            value = col.default
        if col.lower:
            value = value.lower()
        if not value:
            if col.required:
                problems.append(f"{col.source!r} is required but empty")
            record[col.to] = ""
            continue
        if col.search is not None:
            try:
                matched = col.search(value, timeout=pattern_timeout_s)
            except TimeoutError:
                problems.append(
                    f"{col.source!r}: pattern {col.pattern_text} took more than {pattern_timeout_s:g} s "
                    f"on value {_short(value)!r} ([limits] pattern_timeout_s); simplify the pattern "
                    "(nested quantifiers like (a+)+ backtrack without end)"
                )
                continue
            if matched is None:
                problems.append(
                    f"{col.source!r} value {_short(value)!r} does not match pattern {col.pattern_text}"
                )
                continue
        if col.date is not None:
            iso = _to_iso(value, col.date, col.date_has_time)
            if iso is None:
                problems.append(
                    f"{col.source!r} value {_short(value)!r} is not a date in the format {col.date}"
                )
                continue
            value = iso
        record[col.to] = value
    if mapping.unmapped == "error" and not mapping._sources.issuperset(values):
        extra = [key for key in values if key.strip() and key.strip() not in mapping._sources]
        if extra:
            problems.append(
                f"fields not named by mapping {mapping.name} (unmapped: error): {_quote_list(extra)}"
            )
    if problems:
        return TranslatedRow(row.number, None, "; ".join(problems))
    record.update(mapping.constants)
    return TranslatedRow(row.number, record, None)


def chain_groups(mappings: dict[str, Mapping]) -> dict[str, str]:
    """Mapping name -> group: mappings sharing a staging table or linked by ``after:`` must post
    their files one at a time, in arrival order, or run_after chains could cross."""
    parent = {name: name for name in mappings}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    by_table: dict[str, str] = {}
    for name, mapping in mappings.items():
        if mapping.staging_table in by_table:
            union(name, by_table[mapping.staging_table])
        by_table[mapping.staging_table] = name
        for other in mapping.after:
            if other in parent:
                union(name, other)
    return {name: find(name) for name in mappings}
