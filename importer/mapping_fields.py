"""The field parsers every mapping kind shares: plain values (as YAML gives them) -> typed
values, each problem collected as ``mappings/x.yaml: key.path: what is wrong``. Pure (no I/O).

``importer.mapping`` (``kind: import_set``) and ``importer.appservice_mapping``
(``kind: app_service``) both build on these, so a mapping's ``csv:``, ``excel:`` and ``json:``
sections, and its text, flag and choice values, are read the same way whatever its kind.
"""

from __future__ import annotations

import codecs
import difflib
from collections.abc import Iterable
from typing import Any

from importer.readers.options import CsvOptions, ExcelOptions, JsonOptions

_CSV_KEYS = ("delimiter", "encoding", "quotechar")
_EXCEL_KEYS = ("sheet", "header_row")
_JSON_KEYS = ("records",)


class Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def check_keys(problems: Problems, where: str, data: dict[Any, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            label = f"{where}.{key}" if where else str(key)
            problems.add(
                label, f"unknown key{did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
            )


def shown(value: object, limit: int = 60) -> str:
    """A value for a message, never longer than ``limit``: an alias-built structure stays small."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def as_text(problems: Problems, where: str, value: object) -> str | None:
    if isinstance(value, str):
        return value
    hint = " (put it in quotes so it is kept exactly as written)" if isinstance(value, int | float) else ""
    problems.add(where, f"must be text, got {type_name(value)}{hint}")
    return None


def as_flag(problems: Problems, where: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    problems.add(where, f"must be true or false, got {shown(value)}")
    return False


def as_choice(problems: Problems, where: str, value: object, choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and value in choices:
        return value
    problems.add(
        where,
        f"must be one of {', '.join(choices)}; got {shown(value)}{did_you_mean(str(value)[:100], choices)}",
    )
    return choices[0]


def as_text_list(problems: Problems, where: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        problems.add(where, f"must be a list of text (or one text), got {type_name(value)}")
        return ()
    result = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            result.append(item.strip())
        else:
            problems.add(f"{where}[{index}]", f"must be non-empty text, got {shown(item)}")
    return tuple(result)


def as_section(problems: Problems, where: str, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(where, f"must be a mapping like {{{allowed[0]}: ...}}, got {type_name(value)}")
        return {}
    check_keys(problems, where, value, allowed)
    return value


def parse_csv(problems: Problems, value: object) -> CsvOptions:
    data = as_section(problems, "csv", value, _CSV_KEYS)
    options: dict[str, Any] = {}
    for key in ("delimiter", "quotechar"):
        if key in data:
            char = as_text(problems, f"csv.{key}", data[key])
            if char in ("\\t", "tab"):
                char = "\t"  # '\t' in single quotes is a backslash and a t in YAML
            if char is not None and len(char) != 1:
                problems.add(f"csv.{key}", f"must be one character, got {char!r}")
            elif char is not None:
                options[key] = char
    if "encoding" in data:
        encoding = as_text(problems, "csv.encoding", data["encoding"])
        if encoding is not None:
            try:
                codecs.lookup(encoding)
                options["encoding"] = encoding
            except LookupError:
                problems.add("csv.encoding", f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)")
    return CsvOptions(**options)


def parse_excel(problems: Problems, value: object) -> ExcelOptions:
    data = as_section(problems, "excel", value, _EXCEL_KEYS)
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
            problems.add("excel.sheet", f"must be a sheet name or a 0-based index, got {shown(sheet)}")
    if "header_row" in data:
        row = data["header_row"]
        if isinstance(row, int) and not isinstance(row, bool) and row >= 1:
            options["header_row"] = row
        else:
            problems.add("excel.header_row", f"must be a row number from 1, got {shown(row)}")
    return ExcelOptions(**options)


def parse_json(problems: Problems, value: object) -> JsonOptions:
    data = as_section(problems, "json", value, _JSON_KEYS)
    if "records" not in data or data["records"] is None:
        return JsonOptions()
    path = as_text(problems, "json.records", data["records"])
    if path is not None and (not path.strip() or any(not part for part in path.strip().split("."))):
        problems.add("json.records", f"must be a dotted path like data.employees, got {path!r}")
        return JsonOptions()
    return JsonOptions(records=path.strip() if path else None)


def parse_reading_options(problems: Problems, data: dict[str, Any]) -> dict[str, Any]:
    """A mapping's ``csv:``, ``excel:`` and ``json:`` sections, as ``Mapping`` keyword arguments."""
    return {
        "csv": parse_csv(problems, data.get("csv")),
        "excel": parse_excel(problems, data.get("excel")),
        "json": parse_json(problems, data.get("json")),
    }
