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

from importer.readers._source import RowSource
from importer.readers.base import SourceRow
from importer.readers.options import JsonOptions

try:  # the C backend is ~10x faster; the pure-Python one is always there
    import ijson.backends.yajl2_c as ijson_backend
except ImportError:  # pragma: no cover - depends on the platform's wheel
    ijson_backend = ijson  # whichever backend ijson found

# Explaining an invalid file means parsing it once more with the standard library, which
# holds it in memory; beyond this size the parser's own message is given instead.
EXPLAIN_MAX_BYTES = 256 * 1024 * 1024


class JsonSource(RowSource):
    kind = "json"

    def __init__(self, path: Path, options: JsonOptions) -> None:
        self.path = path
        self.headers: list[str] | None = None
        self.records_path = (options.records or "").strip(".")
        self._check_records_path()
        try:
            self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        _skip_bom(self._file)
        prefix = f"{self.records_path}.item" if self.records_path else "item"
        self._records = ijson_backend.items(self._file, prefix)

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[SourceRow]:
        number = 0
        while True:
            try:
                record = next(self._records)
            except StopIteration:
                return
            except ijson.JSONError as exc:
                raise self._invalid(exc) from exc
            number += 1
            if isinstance(record, dict):
                yield SourceRow(number, flatten(record))
            else:
                kind = _json_kind(record)
                yield SourceRow(number, {}, f"record {number} is {kind}, not an object")

    # -- opening ---------------------------------------------------------------------------

    def _check_records_path(self) -> None:
        """Refuse now if the records path is missing or not an array, not after zero rows.

        Parses only up to the start of the array (usually the first bytes of the file); the
        whole file only when the path is not there at all.
        """
        path = self.records_path
        ancestors = [""] + [".".join(path.split(".")[: i + 1]) for i in range(path.count("."))]
        keys: dict[str, list[str]] = {a: [] for a in ancestors} if path else {}
        found: str | None = None
        try:
            with open(self.path, "rb") as f:
                _skip_bom(f)
                if not f.read(1):
                    raise self.refuse("the file is empty: expected a JSON array of records.")
                f.seek(0)
                _skip_bom(f)
                for prefix, event, value in ijson_backend.parse(f):
                    if prefix == path and event != "map_key":
                        found = event
                        break
                    if event == "map_key" and prefix in keys and len(keys[prefix]) < 20:
                        keys[prefix].append(value)
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        except ijson.JSONError as exc:
            raise self._invalid(exc) from exc
        where = f'records path "{path}"' if path else "the top level"
        if found == "start_array":
            return
        if found is None:
            deepest = max((a for a in keys if keys[a]), key=len, default="")
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
            "string": "a string",
        }.get(found, found)
        hint = (
            "set json: {records: <dotted path>} in the mapping to the array of records"
            if not path
            else "point json: {records: ...} in the mapping at the array of records"
        )
        raise self.refuse(f"{where} is {kind}, not an array of records: {hint}.")

    def _invalid(self, exc: Exception) -> Exception:
        return self.refuse(
            f"is not valid JSON: {explain_invalid_json(self.path, exc)}. Fix the file and drop it again."
        )


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
