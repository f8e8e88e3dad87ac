"""`importer verify FILE_ID`: read back what a finished file's rows became and compare it with
what they sent.

Import set files: each row's sent values go through the transform maps' field maps as the
instance describes them (``sys_dictionary`` label -> staging column, ``sys_transform_entry``
column -> target field; or the mapping's ``verify: fields:`` where the field map is not
readable) and are compared with the target records, read through the Table API many at a time
(``sys_idIN`` of up to 1,000 sys_ids, only the fields concerned, paged). The traps it is there
for: a field the transform map drops, and a value truncated by a short staging column (then
the staging row says so; a staging row already removed by the instance's cleanup is reported
as such).

App service files: each service through ``find_service`` (environment, version, business
relationships) and each row's CI relation through ``getContent``.

A difference is ``{"source_row", "target_table", "target_sys_id", "field", "sent", "found",
"note"}``; no difference, no entry.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from importer import inbox
from importer.errors import AuthError, UsageError
from importer.ledger import FileState, Ledger, RowState
from importer.mapping import Mapping
from importer.servicenow import InstanceClient

log = logging.getLogger("importer.verify")

# Records per Table API page; sys_ids per sys_idIN query (kept short: see Verifier._read).
READ_CHUNK = 1000
BY_ID_CHUNK = 100
# Records a file touched are those updated since it was taken, less this margin for clock skew.
CLOCK_MARGIN = timedelta(minutes=15)
VERIFY_COLUMNS = ("source_row", "target_table", "target_sys_id", "field", "sent", "found", "note")
_CHANGED = (RowState.INSERTED, RowState.UPDATED)


@dataclass(frozen=True)
class Difference:
    source_row: int
    target_table: str
    target_sys_id: str
    field: str
    sent: str
    found: str | None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyResult:
    file_id: int
    records: int = 0  # target records read
    fields: int = 0  # field values compared
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.ok:
            return f"verify file {self.file_id}: {self.records} records, {self.fields} values: all match"
        rows = len({d.source_row for d in self.differences})
        return (
            f"verify file {self.file_id}: {self.records} records, {self.fields} values: "
            f"{len(self.differences)} differ on {rows} rows"
        )


def _value(record: dict[str, Any], name: str) -> tuple[str, str]:
    """(value, display value) of a Table API field read with sysparm_display_value=all."""
    raw = record.get(name, "")
    if isinstance(raw, dict):
        return str(raw.get("value") or ""), str(raw.get("display_value") or "")
    text = "" if raw is None else str(raw)
    return text, text


def _chunks(items: list[str], size: int = READ_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Verifier:
    def __init__(self, ledger: Ledger, client: InstanceClient, mappings: dict[str, Mapping]) -> None:
        self.ledger = ledger
        self.client = client
        self.mappings = mappings
        self._field_maps_read = True  # False: the instance's field maps were not readable

    def verify_file(self, file_id: int) -> VerifyResult:
        record = self.ledger.get_file(file_id)
        if record is None:
            raise UsageError(f"no file {file_id} in the ledger; `importer status` lists the files")
        if record.state not in (FileState.DONE, FileState.DONE_WITH_ERRORS):
            raise UsageError(
                f"file {file_id} ({record.name}) is {record.state}: only a finished file can be verified"
            )
        if not record.mapping or record.mapping not in self.mappings:
            raise UsageError(f"file {file_id} was imported with mapping {record.mapping!r}, which is gone")
        mapping = self.mappings[record.mapping]
        path = Path(record.path)
        if not path.is_file():
            raise UsageError(
                f"file {file_id} ({record.name}) is no longer at {path}; it may have been pruned"
            )
        from importer.pipeline import translated_rows

        sent = {
            row.number: row.record
            for row in translated_rows(path, mapping, record.name)
            if row.record is not None
        }
        entries = [e for e in self.ledger.report(file_id) if e["state"] in _CHANGED and e["target_sys_id"]]
        result = VerifyResult(file_id)
        if mapping.kind == "app_service":
            from importer.appservice import verify_services

            verify_services(self.client, sent, entries, result)
        else:
            self._verify_import_set(mapping, sent, entries, result, record.created_at)
        log.info("file=%s %s", file_id, result.summary())
        return result

    # -- import sets ---------------------------------------------------------------------------

    def _verify_import_set(
        self,
        mapping: Mapping,
        sent: dict[int, dict[str, str]],
        entries: list[dict[str, Any]],
        result: VerifyResult,
        taken_at: datetime,
    ) -> None:
        staging = mapping.staging_table
        columns, lengths = self._staging_columns(mapping)
        field_maps = self._field_maps(mapping, columns)

        def targets_of(entry: dict[str, Any]) -> dict[str, list[str]]:
            if entry["transform_map"] in field_maps:
                return field_maps[entry["transform_map"]]
            return next(iter(field_maps.values())) if len(field_maps) == 1 else {}

        wanted: dict[str, set[str]] = {}
        for entry in entries:
            targets = targets_of(entry)
            wanted.setdefault(entry["target_table"], set()).update(f for fs in targets.values() for f in fs)
        since = (taken_at - CLOCK_MARGIN).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        records = {
            table: self._read(
                table,
                [e["target_sys_id"] for e in entries if e["target_table"] == table],
                fields,
                f"sys_updated_on>={since}",
            )
            for table, fields in wanted.items()
        }
        result.records = sum(len(found) for found in records.values())
        # (difference, staging row sys_id, staging column, import set)
        suspicious: list[tuple[Difference, str, str, str]] = []
        for entry in entries:
            values = sent.get(entry["source_row"])
            if values is None:
                continue
            table, sys_id = entry["target_table"], entry["target_sys_id"]
            target = records.get(table, {}).get(sys_id)
            targets = targets_of(entry)
            for key, value in values.items():
                if not value:
                    continue  # an empty value leaves the field as it was (copy empty fields is off)
                column = columns.get(key, key)
                fields = targets.get(column) or targets.get(key)
                if not fields and not self._field_maps_read:
                    continue  # only the mapping's verify: fields: are known; this key is not one
                if not fields:
                    result.differences.append(
                        Difference(
                            entry["source_row"], table, sys_id, "", value, None,
                            f"{key!r} ({column}) has no field map in transform map "
                            f"{entry['transform_map'] or '?'}: the value is dropped",
                        )
                    )  # fmt: skip
                    continue
                for name in fields:
                    result.fields += 1
                    if target is None:
                        found, shown = None, None
                    else:
                        found, shown = _value(target, name)
                    if found is not None and value in (found, shown):
                        continue
                    difference = Difference(
                        entry["source_row"], table, sys_id, name, value, shown if shown else found,
                        "target record not found" if target is None else "",
                    )  # fmt: skip
                    if target is not None and entry["staging_sys_id"]:
                        suspicious.append((difference, entry["staging_sys_id"], column, entry["import_set"]))
                    else:
                        result.differences.append(difference)
        result.differences.extend(self._explain(staging, suspicious, lengths))
        result.differences.sort(key=lambda d: (d.source_row, d.target_table, d.field))

    def _staging_columns(self, mapping: Mapping) -> tuple[dict[str, str], dict[str, int]]:
        """Mapping key -> staging column, and each column's length (sys_dictionary)."""
        by_label = mapping.key_by == "label"
        columns: dict[str, str] = {}
        lengths: dict[str, int] = {}
        try:
            dictionary = list(
                self.client.query(
                    "sys_dictionary",
                    f"name={mapping.staging_table}^elementISNOTEMPTY",
                    fields=["element", "column_label", "max_length"],
                )
            )
        except AuthError as exc:
            if not mapping.verify_fields:
                raise self._unreadable(mapping, "sys_dictionary", exc) from exc
            log.warning("sys_dictionary not readable (%s): using verify: fields: of the mapping", exc)
            dictionary = []
        for entry in dictionary:
            element = str(entry.get("element") or "")
            key = str(entry.get("column_label") or "") if by_label else element
            columns.setdefault(key, element)
            try:
                lengths[element] = int(str(entry.get("max_length") or "0"))
            except ValueError:
                pass
        return columns, lengths

    def _field_maps(self, mapping: Mapping, columns: dict[str, str]) -> dict[str, dict[str, list[str]]]:
        """Transform map name -> staging column -> target fields. ``verify: fields:`` in the
        mapping (label -> target field) stands in where sys_transform_entry is not readable."""
        maps: dict[str, dict[str, list[str]]] = {}
        try:
            names = {
                str(m.get("sys_id") or ""): str(m.get("name") or "")
                for m in self.client.query(
                    "sys_transform_map", f"source_table={mapping.staging_table}", fields=["sys_id", "name"]
                )
            }
            for entry in self.client.query(
                "sys_transform_entry",
                f"source_table={mapping.staging_table}",
                fields=["map", "source_field", "target_field"],
            ):
                name = names.get(str(entry.get("map") or ""), "")
                targets = maps.setdefault(name, {})
                targets.setdefault(str(entry.get("source_field") or ""), []).append(
                    str(entry.get("target_field") or "")
                )
        except AuthError as exc:
            if not mapping.verify_fields:
                raise self._unreadable(mapping, "sys_transform_entry", exc) from exc
            log.warning("sys_transform_entry not readable (%s): using verify: fields: of the mapping", exc)
        self._field_maps_read = bool(maps)
        if mapping.verify_fields:
            given = {columns.get(k, k): [v] for k, v in mapping.verify_fields.items()}
            for targets in maps.values() or [maps.setdefault("", {})]:
                targets.update(given)
        return maps

    @staticmethod
    def _unreadable(mapping: Mapping, table: str, exc: Exception) -> UsageError:
        return UsageError(
            f"cannot read {table} for {mapping.staging_table} ({exc}); give the user read access to "
            f"sys_dictionary and sys_transform_entry, or list the fields in {mapping.source} as "
            'verify: {fields: {"<label>": <target field>}}'
        )

    def _read(
        self, table: str, sys_ids: Iterable[str], fields: Iterable[str], query: str | None
    ) -> dict[str, dict[str, Any]]:
        """The records with these sys_ids. ``query`` selects a superset of them, read in pages of
        1,000 (the records a file touched: updated since it was taken; the staging rows of its
        import sets). Long ``sys_idIN`` lists are avoided: the instance echoes the query in every
        Link header, and a 1,000-id list makes header lines no HTTP client accepts. Records the
        query misses (updated again since, or a clock skew) are asked for by sys_id, 100 at a time."""
        wanted = set(sys_ids)
        columns = ["sys_id", *sorted(set(fields))]
        found: dict[str, dict[str, Any]] = {}
        if query:
            for record in self.client.query(
                table, query, fields=columns, page_size=READ_CHUNK, display_value="all"
            ):
                sys_id = _value(record, "sys_id")[0]
                if sys_id in wanted:
                    found[sys_id] = record
        for chunk in _chunks(sorted(wanted - set(found)), BY_ID_CHUNK):
            for record in self.client.query(
                table,
                "sys_idIN" + ",".join(chunk),
                fields=columns,
                page_size=BY_ID_CHUNK,
                display_value="all",
            ):
                found[_value(record, "sys_id")[0]] = record
        return found

    def _explain(
        self, staging: str, suspicious: list[tuple[Difference, str, str, str]], lengths: dict[str, int]
    ) -> list[Difference]:
        """Look at the staging rows of the values that differ: a truncation shows there."""
        if not suspicious:
            return []
        columns = sorted({column for _, _, column, _ in suspicious})
        sets = sorted({s for *_, s in suspicious if s})
        query = f"sys_import_setIN{','.join(sets)}" if 0 < len(sets) <= BY_ID_CHUNK else None
        try:
            rows: dict[str, dict[str, Any]] | None = self._read(
                staging, [s for _, s, _, _ in suspicious], columns, query
            )
        except AuthError as exc:
            log.warning("staging table %s not readable (%s): differences not explained", staging, exc)
            rows = None
        explained = []
        for difference, staging_id, column, _ in suspicious:
            row = rows.get(staging_id) if rows is not None else None
            note = ""
            if rows is None:
                note = f"staging table {staging} not readable: where the value changed cannot be told"
            elif row is None:
                note = (
                    "staging record gone (the instance's import set cleanup removes rows after 7 days): "
                    "where the value changed cannot be told"
                )
            else:
                staged = _value(row, column)[0]
                limit = lengths.get(column, 0)
                if staged != difference.sent and difference.sent.startswith(staged) and staged:
                    note = f"truncated to {len(staged)} characters by staging column {column}"
                    if limit:
                        note += f" (max_length {limit})"
                elif staged == difference.sent:
                    note = "staged as sent; the transform map changed it (script, choice action or reference)"
            explained.append(Difference(**{**asdict(difference), "note": note}))
        return explained


def write_verify_csv(path: Path, result: VerifyResult) -> Path:
    """The differences beside the file's report (safe to open in Excel)."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=VERIFY_COLUMNS)
        writer.writeheader()
        for difference in result.differences:
            writer.writerow({k: inbox.excel_safe(v) for k, v in difference.as_json().items()})
    temporary.replace(path)
    return path


def verify_path(reports: Path, file_id: int, name: str) -> Path:
    return reports / f"{file_id}-{inbox.safe_name(name)}.verify.csv"
