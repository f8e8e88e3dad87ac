"""JSON files: an array of objects, streamed with ijson, each record flattened to text.

- ``records`` is a dotted path to the array (``data.employees``); by default the file itself
  is the array. Row numbers are 1-based positions in that array.
- Nested objects become dotted names (``address.city``). An array inside a record becomes its
  compact JSON text (``["a","b"]``): the import sends strings, and this keeps every element.
- Numbers are kept as written: ijson reads them as ``int``/``Decimal`` (never float), so
  ``1.50`` stays ``1.50`` and ``42`` stays ``42``. A number written with an exponent is sent
  in plain digits (``1e3`` -> ``1000``): the exponent form is not kept by the parser.
- ``true``/``false`` -> ``"true"``/``"false"``, ``null`` -> ``""``, strings as they are.
- A record missing a field simply lacks that key; an empty object yields no fields.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import ijson

from importer.readers._source import RowSource, oversize_cell_problem
from importer.readers.base import SourceRow
from importer.readers.options import JsonOptions, ReadLimits

try:  # the C backend is ~10x faster; the pure-Python one is always there
    import ijson.backends.yajl2_c as ijson_backend
except ImportError:  # pragma: no cover - depends on the platform's wheel
    ijson_backend = ijson  # whichever backend ijson found

# Explaining an invalid file means parsing it once more with the standard library, which
# holds it in memory; beyond this size the parser's own message is given instead.
EXPLAIN_MAX_BYTES = 16 * 1024 * 1024


class JsonSource(RowSource):
    kind = "json"

    def __init__(self, path: Path, options: JsonOptions, limits: ReadLimits = ReadLimits()) -> None:  # noqa: B008
        self.path = path
        self.headers: list[str] | None = None
        self.records_path = (options.records or "").strip(".")
        self._limits = limits
        try:
            self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        try:
            _skip_bom(self._file)
            if not self._file.read(1):
                raise self.refuse("the file is empty: expected a JSON array of records.")
            self._file.seek(0)
            _skip_bom(self._file)
            # basic_parse: events without ijson's prefixes, whose strings grow with the nesting
            # depth (a file of 100,000 "[" took 20 GB that way); the path is tracked here instead.
            self._events = ijson_backend.basic_parse(self._file)
            self._find_records_array()
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[SourceRow]:
        number = 0
        try:
            for event, value in self._events:
                if event == "end_array":
                    return  # the end of the records array; what follows is not read
                number += 1
                record, problem = self._build(event, value, number)
                if problem is not None:
                    yield SourceRow(number, {}, problem)
                elif isinstance(record, dict):
                    values = flatten(record)
                    too_long = oversize_cell_problem(values, self._limits.max_cell_chars)
                    yield SourceRow(number, {} if too_long else values, too_long)
                else:
                    yield SourceRow(number, {}, f"record {number} is {_json_kind(record)}, not an object")
        except ijson.JSONError as exc:
            raise self._invalid(exc) from exc
        except ValueError as exc:
            raise self._number_too_long(exc, f"record {number + 1}") from exc

    # -- opening ---------------------------------------------------------------------------

    def _find_records_array(self) -> None:
        """Walk the events up to the start of the records array (usually the first bytes of the
        file; the whole file only when the path is not there). Refuse now, not after zero rows,
        if it is missing or not an array."""
        wanted = self.records_path.split(".") if self.records_path else []
        keys: dict[str, list[str]] = {}
        path: list[str] = []  # the keys leading to the current value (only while on the way)
        pending_key: str | None = None
        skip = 0  # depth inside a container off the way, skipped without building
        found: str | None = None
        try:
            for event, value in self._events:
                if skip:
                    if event in ("start_map", "start_array"):
                        skip += 1
                    elif event in ("end_map", "end_array"):
                        skip -= 1
                    continue
                if event == "map_key":
                    prefix = ".".join(path)
                    seen_keys = keys.setdefault(prefix, [])
                    if len(seen_keys) < 20:
                        seen_keys.append(value)
                    pending_key = value
                    continue
                here = [*path, pending_key] if pending_key is not None else path
                if here == wanted:
                    found = event
                    break
                if event == "start_map" and wanted[: len(here)] == here:
                    path = here
                    pending_key = None
                    continue
                if event == "end_map":
                    if path:
                        path = path[:-1]
                    pending_key = None
                    continue
                if event in ("start_map", "start_array"):
                    skip = 1
                pending_key = None
        except ijson.JSONError as exc:
            raise self._invalid(exc) from exc
        except ValueError as exc:
            raise self._number_too_long(exc, "the start of the file") from exc
        where = f'records path "{self.records_path}"' if self.records_path else "the top level"
        if found == "start_array":
            return
        if found is None:
            deepest = max((a for a in keys if keys[a]), key=len, default="")  # keys are only met on the way
            inside = f'"{deepest}"' if deepest else "the top level"
            listed = ", ".join(keys.get(deepest, [])) or "none"
            raise self.refuse(
                f"has no {where}: the keys in {inside} are {listed}. "
                "Fix json: {records: ...} in the mapping."
            )
        kind = {
            "start_map": "an object",
            "null": "null",
            "boolean": "a boolean",
            "number": "a number",
            "integer": "a number",
            "double": "a number",
            "string": "a string",
        }.get(found, found)
        hint = (
            "set json: {records: <dotted path>} in the mapping to the array of records"
            if not self.records_path
            else "point json: {records: ...} in the mapping at the array of records"
        )
        raise self.refuse(f"{where} is {kind}, not an array of records: {hint}.")

    # -- one record ------------------------------------------------------------------------

    def _build(self, event: str, value: Any, number: int) -> tuple[Any, str | None]:
        """The record starting with this event, built without recursion and never deeper than
        ``max_json_depth``; or the reason the record is invalid (its events are consumed)."""
        limits = self._limits
        if event not in ("start_map", "start_array"):
            return value, self._number_problem(value, number, "")
        root: Any = {} if event == "start_map" else []
        stack: list[Any] = [root]
        names: list[str] = [""]  # dotted name of each open container, for messages
        key: str | None = None
        problem: str | None = None
        for event, value in self._events:
            if event == "map_key":
                key = value
                container = stack[-1]
                if key in container and problem is None:
                    problem = f"record {number} has the key {_dotted(names[-1], key)!r} twice; keep one"
                continue
            if event in ("end_map", "end_array"):
                stack.pop()
                names.pop()
                if not stack:
                    return root, problem
                key = None
                continue
            container = stack[-1]
            name = _dotted(names[-1], key if isinstance(container, dict) else "item")
            if event in ("start_map", "start_array"):
                if len(stack) >= limits.max_json_depth:
                    self._skip_rest(len(stack) + 1)
                    return None, (
                        f"record {number} nests objects/arrays more than {limits.max_json_depth} deep "
                        f"(at {name!r}; [limits] max_json_depth): flatten the record"
                    )
                child: Any = {} if event == "start_map" else []
                _attach(container, key, child)
                stack.append(child)
                names.append(name)
                key = None
                continue
            if problem is None:
                problem = self._number_problem(value, number, name)
            _attach(container, key, value)
            key = None
        raise self.refuse(
            f"is not valid JSON: record {number} is never closed. Fix the file and drop it again."
        )

    def _skip_rest(self, depth: int) -> None:
        for event, _value in self._events:
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth == 0:
                    return

    def _number_problem(self, value: Any, number: int, name: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            return None
        digits = _plain_digits(value)
        if digits <= self._limits.max_number_digits:
            return None
        shown = str(value) if len(str(value)) <= 30 else str(value)[:27] + "..."
        field = f" in {name!r}" if name else ""
        return (
            f"record {number}: the number {shown}{field} has {digits:,} digits written out, more than "
            f"{self._limits.max_number_digits} ([limits] max_number_digits): send it as a string (in quotes)"
        )

    def _number_too_long(self, exc: ValueError, where: str) -> Exception:
        """The parser converts a buffer's numbers as it reads it: an integer of more than 4,300
        digits is refused by Python itself (a guard against quadratic conversions)."""
        return self.refuse(
            f"{where} or near it holds a number too long to read ({str(exc).split(';')[0]}); "
            f"numbers may have at most {self._limits.max_number_digits} digits ([limits] "
            "max_number_digits): send such values as strings (in quotes)."
        )

    def _invalid(self, exc: Exception) -> Exception:
        return self.refuse(
            f"is not valid JSON: {explain_invalid_json(self.path, exc)}. Fix the file and drop it again."
        )


def _dotted(prefix: str, key: str | None) -> str:
    key = "" if key is None else str(key)
    return f"{prefix}.{key}" if prefix else key


def _attach(container: Any, key: str | None, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        container.append(value)


def _plain_digits(value: int | Decimal) -> int:
    """How many digits the number has written out without an exponent (1e3 -> 4)."""
    if isinstance(value, int):
        return len(str(abs(value)))
    if not value.is_finite():
        return 0
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    count = len(digits)
    return count + exponent if exponent >= 0 else max(count, -exponent + 1)


def flatten(record: dict[str, Any], prefix: str = "", into: dict[str, str] | None = None) -> dict[str, str]:
    values: dict[str, str] = {} if into is None else into
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flatten(value, f"{name}.", values)
        else:
            values[name] = scalar_text(value)
    return values


def scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        # "f" keeps the digits as written (1.50, 0.0000001); str() would give 1E-7.
        return format(value, "f")
    if isinstance(value, list):
        return compact_json(value)
    return str(value)


def compact_json(value: Any) -> str:
    """JSON text of an array, numbers as written (json.dumps cannot write a Decimal)."""
    if isinstance(value, list):
        return "[" + ",".join(compact_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{compact_json(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    return scalar_text(value)


def explain_invalid_json(path: Path, exc: Exception) -> str:
    """Where and why a file is not JSON, as "line L column C: what".

    yajl's messages carry no position, so the file is parsed again by the standard library,
    which gives one; only on this error path, and only for files of a sane size.
    """
    fallback = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        if path.stat().st_size > EXPLAIN_MAX_BYTES:
            return fallback
        data = path.read_bytes()
    except OSError:
        return fallback
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"byte 0x{data[err.start]:02x} on line {line} (byte {err.start}) is not UTF-8, as JSON must be"
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"line {err.lineno} column {err.colno}: {err.msg}"
    except (ValueError, RecursionError):
        return fallback
    return fallback  # the standard library accepts it (NaN, Infinity): yajl's reason stands


def _skip_bom(f: IO[bytes]) -> None:
    if f.read(3) != codecs.BOM_UTF8:
        f.seek(0)


def _json_kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else type(value).__name__
