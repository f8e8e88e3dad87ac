"""Mapping files (``mappings/<name>.yaml``) and row translation: pure functions over plain data.

``parse_mapping`` validates one mapping's data (every problem at once, each
``mappings/x.yaml: columns.Emp ID.to: ...``); ``load_mapping(s)`` only add reading the YAML.
``find_mapping`` picks the mapping of a dropped file, ``check_headers`` refuses a file whose
headers cannot satisfy it, and ``translate_row`` turns one source row into the record sent to the
staging table (or the reason the row is invalid).
"""

from __future__ import annotations

import codecs
import difflib
import fnmatch
import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, Literal

import regex
import yaml

from importer.errors import ConfigError, InputFileError
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
_CSV_KEYS = ("delimiter", "encoding", "quotechar")
_EXCEL_KEYS = ("sheet", "header_row")
_JSON_KEYS = ("records",)
MAX_BATCH_ROWS = 10_000
# One pattern against one cell may take this long (``[limits] pattern_timeout_s`` in the daemon).
PATTERN_TIMEOUT_S = 0.25
# Control characters a text field must not carry: C0 and C1 controls, DEL; tab, LF and CR are text.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A group holding a quantifier, itself quantified: (a+)+, (\w+\s?)*, (x{2,})+ ... backtracks exponentially.
_NESTED_QUANTIFIER = re.compile(
    r"\((?:[^()\\]|\\.)*?(?:[+*]|\{\d*,\d*\})(?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,\d*\})"
)
# YAML: a mapping file bigger than this, or using more aliases, is refused unread (no alias bomb).
MAX_MAPPING_BYTES = 1024 * 1024
MAX_YAML_ALIASES = 20


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


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _check_keys(problems: _Problems, where: str, data: dict[Any, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            label = f"{where}.{key}" if where else str(key)
            problems.add(
                label, f"unknown key{_did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
            )


def _shown(value: object, limit: int = 60) -> str:
    """A value for a message, never longer than ``limit``: an alias-built structure stays small."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _text(problems: _Problems, where: str, value: object) -> str | None:
    if isinstance(value, str):
        return value
    hint = " (put it in quotes so it is kept exactly as written)" if isinstance(value, int | float) else ""
    problems.add(where, f"must be text, got {_type_name(value)}{hint}")
    return None


def _flag(problems: _Problems, where: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    problems.add(where, f"must be true or false, got {_shown(value)}")
    return False


def _choice(problems: _Problems, where: str, value: object, choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and value in choices:
        return value
    problems.add(
        where,
        f"must be one of {', '.join(choices)}; got {_shown(value)}{_did_you_mean(str(value)[:100], choices)}",
    )
    return choices[0]


def _text_list(problems: _Problems, where: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        problems.add(where, f"must be a list of text (or one text), got {_type_name(value)}")
        return ()
    result = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            result.append(item.strip())
        else:
            problems.add(f"{where}[{index}]", f"must be non-empty text, got {_shown(item)}")
    return tuple(result)


def _section(problems: _Problems, where: str, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(where, f"must be a mapping like {{{allowed[0]}: ...}}, got {_type_name(value)}")
        return {}
    _check_keys(problems, where, value, allowed)
    return value


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


def _parse_column(problems: _Problems, header: object, spec: object) -> ColumnSpec | None:
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
        problems.add(where, f"must be a target label or a mapping like {{to: ...}}, got {_type_name(spec)}")
        return None
    _check_keys(problems, where, spec, _COLUMN_KEYS)
    to = None
    if "to" not in spec:
        problems.add(f"{where}.to", "field required (the staging label or column name to send it as)")
    else:
        to = _text(problems, f"{where}.to", spec["to"])
        if to is not None and not to.strip():
            problems.add(f"{where}.to", "must not be empty")
            to = None
    flags = {
        key: _flag(problems, f"{where}.{key}", spec[key])
        for key in ("required", "strip", "lower")
        if key in spec
    }
    pattern = None
    if "pattern" in spec:
        text = _text(problems, f"{where}.pattern", spec["pattern"])
        if text is not None:
            try:
                pattern = regex.compile(text)
            except (regex.error, re.error) as exc:
                problems.add(f"{where}.pattern", f"invalid regular expression {text!r}: {exc}")
    date = None
    if "date" in spec:
        date = _text(problems, f"{where}.date", spec["date"])
        if date is not None and (date_problem := _check_date_format(date)):
            problems.add(f"{where}.date", date_problem)
            date = None
    default = _text(problems, f"{where}.default", spec["default"]) if "default" in spec else None
    if to is None:
        return None
    return ColumnSpec(source=source, to=to.strip(), pattern=pattern, date=date, default=default, **flags)


def _parse_csv(problems: _Problems, value: object) -> CsvOptions:
    data = _section(problems, "csv", value, _CSV_KEYS)
    options: dict[str, Any] = {}
    for key in ("delimiter", "quotechar"):
        if key in data:
            char = _text(problems, f"csv.{key}", data[key])
            if char in ("\\t", "tab"):
                char = "\t"  # '\t' in single quotes is a backslash and a t in YAML
            if char is not None and len(char) != 1:
                problems.add(f"csv.{key}", f"must be one character, got {char!r}")
            elif char is not None:
                options[key] = char
    if "encoding" in data:
        encoding = _text(problems, "csv.encoding", data["encoding"])
        if encoding is not None:
            try:
                codecs.lookup(encoding)
                options["encoding"] = encoding
            except LookupError:
                problems.add("csv.encoding", f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)")
    return CsvOptions(**options)


def _parse_excel(problems: _Problems, value: object) -> ExcelOptions:
    data = _section(problems, "excel", value, _EXCEL_KEYS)
    options: dict[str, Any] = {}
    if "sheet" in data:
        sheet = data["sheet"]
        if (isinstance(sheet, str) and sheet.strip()) or (
            isinstance(sheet, int) and not isinstance(sheet, bool)
        ):
            if isinstance(sheet, int) and sheet < 0:
                problems.add("excel.sheet", f"a sheet index counts from 0, got {sheet}")
            else:
                options["sheet"] = sheet
        else:
            problems.add("excel.sheet", f"must be a sheet name or a 0-based index, got {_shown(sheet)}")
    if "header_row" in data:
        row = data["header_row"]
        if isinstance(row, int) and not isinstance(row, bool) and row >= 1:
            options["header_row"] = row
        else:
            problems.add("excel.header_row", f"must be a row number from 1, got {_shown(row)}")
    return ExcelOptions(**options)


def _parse_json(problems: _Problems, value: object) -> JsonOptions:
    data = _section(problems, "json", value, _JSON_KEYS)
    if "records" not in data or data["records"] is None:
        return JsonOptions()
    path = _text(problems, "json.records", data["records"])
    if path is not None and (not path.strip() or any(not part for part in path.strip().split("."))):
        problems.add("json.records", f"must be a dotted path like data.employees, got {path!r}")
        return JsonOptions()
    return JsonOptions(records=path.strip() if path else None)


def parse_verify(problems: _Problems, value: object) -> dict[str, Any]:
    """``verify: true`` | ``verify: {after_each_file: true, fields: {label: target field}}``."""
    if isinstance(value, bool):
        return {"verify": value}
    section = _section(problems, "verify", value, ("after_each_file", "fields"))
    options: dict[str, Any] = {
        "verify": _flag(problems, "verify.after_each_file", section.get("after_each_file", False))
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
    problems = _Problems(source)
    if data is None:
        raise ConfigError(f"{source}: the mapping file is empty; it needs at least staging_table and columns")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: must be a mapping of keys (staging_table: ..., columns: ...), got {_type_name(data)}"
        )
    kind = data.get("kind", "import_set")
    if kind == "app_service":
        from importer.appservice_mapping import parse_app_service_mapping

        return parse_app_service_mapping(name, data, source)
    _check_keys(problems, "", data, _TOP_KEYS)
    if kind != "import_set":
        problems.add("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")

    staging_table = ""
    if "staging_table" not in data:
        problems.add("staging_table", "field required (the Import Set staging table, e.g. u_hr_user_import)")
    else:
        staging_table = _text(problems, "staging_table", data["staging_table"]) or ""
        if staging_table and not _TABLE_NAME.match(staging_table):
            hint = (
                f"; did you mean {staging_table.lower()!r}?"
                if _TABLE_NAME.match(staging_table.lower())
                else ""
            )
            problems.add("staging_table", f"{staging_table!r} is not a table name (a-z, 0-9, _){hint}")

    match = _text_list(problems, "match", data["match"]) if data.get("match") is not None else ()
    for glob in match:
        if "/" in glob or "\\" in glob:
            problems.add("match", f"{glob!r}: globs match the file name only, not a folder")
    after = _text_list(problems, "after", data["after"]) if data.get("after") is not None else ()

    options: dict[str, Any] = {}
    if "key_by" in data:
        options["key_by"] = _choice(problems, "key_by", data["key_by"], ("label", "column"))
    if "on_invalid_row" in data:
        options["on_invalid_row"] = _choice(
            problems, "on_invalid_row", data["on_invalid_row"], ("skip", "reject_file")
        )
    if "unmapped" in data:
        options["unmapped"] = _choice(problems, "unmapped", data["unmapped"], ("ignore", "error"))
    if "verify" in data:
        options.update(parse_verify(problems, data["verify"]))
    if "control_chars" in data:
        options["control_chars"] = _choice(
            problems, "control_chars", data["control_chars"], ("reject", "strip")
        )
    if "batch_rows" in data:
        rows = data["batch_rows"]
        if isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows <= MAX_BATCH_ROWS:
            options["batch_rows"] = rows
        else:
            problems.add(
                "batch_rows", f"must be a whole number from 1 to {MAX_BATCH_ROWS:_}, got {_shown(rows)}"
            )

    columns: list[ColumnSpec] = []
    raw_columns = data.get("columns")
    if not raw_columns:
        problems.add("columns", 'field required: at least one "source header": "staging label" line')
    elif not isinstance(raw_columns, dict):
        problems.add(
            "columns", f"must be a mapping of source header -> label or spec, got {_type_name(raw_columns)}"
        )
    else:
        for header, spec in raw_columns.items():
            column = _parse_column(problems, header, spec)
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
            "constants", f"must be a mapping of staging label -> text, got {_type_name(raw_constants)}"
        )
    elif raw_constants:
        for key, value in raw_constants.items():
            where = f"constants.{key}"
            if not isinstance(key, str) or not key.strip():
                problems.add(where, "the staging label must be non-empty text (put it in quotes)")
                continue
            text = _text(problems, where, value)
            if text is None:
                continue
            if key.strip() in seen_targets:
                problems.add(
                    where, f"{key.strip()!r} is also the target of column {seen_targets[key.strip()]!r}"
                )
                continue
            constants[key.strip()] = text

    csv = _parse_csv(problems, data.get("csv"))
    excel = _parse_excel(problems, data.get("excel"))
    json_options = _parse_json(problems, data.get("json"))

    if problems.items:
        raise ConfigError(problems.items[0], problems=problems.items, mapping=name)
    return Mapping(
        name=name,
        source=source,
        staging_table=staging_table,
        match=match,
        after=after,
        csv=csv,
        excel=excel,
        json=json_options,
        columns=tuple(columns),
        constants=constants,
        **options,
    )


# --- reading the files (the only I/O here) --------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a header listed twice would otherwise vanish)
    and more than a few aliases: k aliases can build a structure of k**(k/levels) nodes (the
    "billion laughs"), and a mapping file needs none."""

    _aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out instead",
                    event.start_mark,
                )
        return super().compose_node(parent, index)


def _construct_mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping_without_duplicates,
)


def _read_yaml(path: Path) -> object:
    try:
        size = path.stat().st_size
        if size > MAX_MAPPING_BYTES:
            raise ConfigError(
                f"{path}: the mapping file is {size:,} bytes; a mapping is at most {MAX_MAPPING_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the mapping file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the mapping file is not UTF-8 text ({exc.reason})") from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {reason}") from exc


def load_mapping(path: Path) -> Mapping:
    """Read and validate one mapping file; its name is the file's stem."""
    return parse_mapping(path.stem, _read_yaml(path), str(path))


def load_mappings(folder: Path) -> dict[str, Mapping]:
    """Every ``*.yaml``/``*.yml`` in ``folder``; problems across all files are raised together."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ConfigError(
            f"mappings folder {str(folder)!r} {what} "
            "(set paths.mappings in importer.toml or IMPORTER_PATHS__MAPPINGS)"
        )
    problems: list[str] = []
    mappings: dict[str, Mapping] = {}
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".")
    )
    for path in files:
        if path.stem in mappings:
            problems.append(
                f"{path}: a mapping named {path.stem!r} is already defined by {mappings[path.stem].source}"
            )
            continue
        try:
            mappings[path.stem] = load_mapping(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_check_after(mappings))
    if problems:
        raise ConfigError(problems[0], problems=problems, path=str(folder))
    return mappings


def _check_after(mappings: dict[str, Mapping]) -> list[str]:
    problems = []
    for mapping in mappings.values():
        for name in mapping.after:
            if name not in mappings:
                known = ", ".join(sorted(mappings)) or "none"
                problems.append(
                    f"{mapping.source}: after: no mapping named {name!r}"
                    f"{_did_you_mean(name, mappings)} (mappings: {known})"
                )
    # Depth-first search; a node met again while still on the path closes a cycle.
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        path.append(name)
        for following in mappings[name].after:
            if following not in mappings:
                continue
            if state.get(following) == 1:
                cycle = [*path[path.index(following) :], following]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    problems.append(
                        f"{mappings[following].source}: after: the mappings wait for each other in a cycle: "
                        + " -> ".join(cycle)
                    )
            elif following not in state:
                visit(following, path)
        path.pop()
        state[name] = 2

    for name in sorted(mappings):
        if name not in state:
            visit(name, [])
    return problems


# --- choosing the mapping of a dropped file ------------------------------------------------------


def find_mapping(
    mappings: dict[str, Mapping], relative_path: PurePath, explicit: str | None = None
) -> Mapping:
    """The mapping for a file at ``relative_path`` (relative to the inbox).

    ``explicit`` (``--mapping NAME``) wins; a file under ``<name>/`` belongs to that mapping;
    otherwise the file name is matched against every mapping's ``match`` globs, case-insensitively.
    """
    if explicit is not None:
        if explicit in mappings:
            return mappings[explicit]
        known = ", ".join(sorted(mappings)) or "none are defined"
        raise ConfigError(
            f"no mapping named {explicit!r}{_did_you_mean(explicit, mappings)} (mappings: {known})"
        )
    parts = relative_path.parts
    if len(parts) > 1:
        if parts[0] in mappings:
            return mappings[parts[0]]
        folded = [m for n, m in mappings.items() if n.casefold() == parts[0].casefold()]
        if len(folded) == 1:
            return folded[0]
    name = relative_path.name
    matched = [m for m in mappings.values() if m.matches_name(name)]
    if len(matched) == 1:
        return matched[0]
    if matched:
        names = ", ".join(f"{m.name} ({', '.join(repr(g) for g in m.match)})" for m in matched)
        raise InputFileError(
            f"more than one mapping matches {name!r}: {names}; narrow their match: globs "
            f"or drop the file into inbox/<mapping>/",
            file=str(relative_path),
        )
    if not mappings:
        raise InputFileError(f"no mapping matches {name!r}: no mappings are defined", file=str(relative_path))
    tried = "; ".join(
        f"{m.name}: {', '.join(repr(g) for g in m.match) if m.match else '(no globs)'}"
        for m in sorted(mappings.values(), key=lambda m: m.name)
    )
    raise InputFileError(
        f"no mapping matches {name!r}: tried {tried}; add it to a mapping's match: "
        f"or drop it into inbox/<mapping>/",
        file=str(relative_path),
    )


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
