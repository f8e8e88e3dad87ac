"""Loading rows into staging tables and transforming them into target tables.

Follows ServiceNow's Import Set behaviour (docs/sandbox.md, servicenow-notes §1-§5). Where the
facts are silent the sandbox does what is hardest on a client, and says so in a comment.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import le
from typing import Any

from .counters import Counters
from .data import FieldMapSpec, StagingSpec, TransformMapSpec
from .store import Record, Store, Table, new_sys_id, now_text

NO_CHANGE = "No field values changed"
_STR_ONLY = frozenset({str})
QUIET_S = 0.002  # the worker transforms once no HTTP connection has been open for this long
BUSY_POLL_S = 0.02  # seldom enough not to steal the interpreter lock from requests


class RowError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def mangle(value: Any) -> str:
    """What ServiceNow stores for a non-string JSON value: nested JSON gets ':' turned into '='."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        # Java's JSON optString gives "null": hardest on a client that sends nulls.
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", "="), ensure_ascii=False)
    return str(value)


@dataclass
class _FieldMap:
    spec: FieldMapSpec
    source: str
    target: str
    regex: re.Pattern[str] | None
    ref_table: Table | None
    ref_field: str


@dataclass
class _Map:
    spec: TransformMapSpec
    sys_id: str
    target: Table
    field_maps: list[_FieldMap]
    coalesce_targets: tuple[str, ...]
    coalesce_sources: tuple[str, ...]


@dataclass
class _Staging:
    spec: StagingSpec
    table: Table
    columns_by_key: dict[str, tuple[str, int]]  # request key -> (column name, max_length)
    columns_by_label_or_name: dict[str, tuple[str, int]]  # the single POST's keys
    empty_row: Record
    maps: list[_Map]


@dataclass
class Job:
    """One import set waiting for, or in, its transform."""

    set_id: str
    staging: _Staging
    row_ids: list[str]
    run_after: str | None
    ready_at: float
    map_index: int = 0
    row_index: int = 0
    run_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    # How the set ends (faults, servicenow-notes §11): "processed", "cancelled" (its transform
    # history Cancelled), "error" (an onComplete script set error = true); held: never transformed.
    fate: str = "processed"
    held: bool = False


@dataclass
class LoadResult:
    import_set_id: str
    multi_import_set_id: str
    row_ids: list[str]


class TransformEngine:
    """Loads posted records into staging and runs transform maps, inline or in a worker thread."""

    def __init__(self, store: Store, counters: Counters, seed: int | None, delay_s: float) -> None:
        self.store = store
        self.counters = counters
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.cond = threading.Condition(store.lock)
        self.jobs: list[Job] = []
        self.row_results: dict[str, list[dict[str, str]]] = {}
        self._open_sync_sets: dict[str, str] = {}
        self._sync_runs: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_lock = threading.Lock()
        self._connections = 0  # HTTP requests being answered: the worker gives way to them
        self._on_the_wire = 0  # of those, the ones spending their network latency (not the instance's time)
        self._quiet_since = 0.0
        self.staging = {name: self._compile(spec) for name, spec in store.staging.items()}

    def _compile(self, spec: StagingSpec) -> _Staging:
        table = self.store.tables[spec.name]
        by_key = {
            (c.label if spec.column_mapping == "label" else c.name): (c.name, c.max_length)
            for c in spec.columns.values()
        }
        empty = {f: "" for f in table.fields}
        empty["sys_class_name"] = spec.name
        maps = []
        for tspec in spec.transform_maps:
            if not tspec.active:
                continue
            target = self.store.tables[tspec.target]
            fms = []
            for fm in tspec.field_maps:
                tfield = target.fields[fm.target]
                ref_table = self.store.tables[tfield.reference] if tfield.reference else None
                fms.append(
                    _FieldMap(
                        spec=fm,
                        source=fm.source,
                        target=fm.target,
                        regex=re.compile(fm.pattern) if fm.pattern else None,
                        ref_table=ref_table,
                        ref_field=fm.reference_field or (ref_table.display if ref_table else ""),
                    )
                )
            coalesce = [fm for fm in fms if fm.spec.coalesce]
            maps.append(
                _Map(
                    spec=tspec,
                    sys_id=self.store.map_ids[(spec.name, tspec.name)],
                    target=target,
                    field_maps=fms,
                    coalesce_targets=tuple(fm.target for fm in coalesce),
                    coalesce_sources=tuple(fm.source for fm in coalesce),
                )
            )
        either = {c.name: (c.name, c.max_length) for c in spec.columns.values()}
        either.update({c.label: (c.name, c.max_length) for c in spec.columns.values()})
        return _Staging(
            spec=spec,
            table=table,
            columns_by_key=by_key,
            columns_by_label_or_name=either,
            empty_row=empty,
            maps=maps,
        )

    # ------------------------------------------------------------------ worker lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="sandbox-transform", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while any(not job.held for job in self.jobs):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
            return True

    def _next_tick(self) -> float:
        """When a new async set may start: the end of the next scheduling period (so at least one
        period away). Like ServiceNow's scheduled transform job, every set loaded within one period
        becomes runnable at the same moment."""
        now = time.monotonic()
        if self.delay_s <= 0:
            return now
        return (math.floor(now / self.delay_s) + 2) * self.delay_s

    def request_started(self) -> None:
        with self._busy_lock:
            self._connections += 1

    def request_finished(self) -> None:
        with self._busy_lock:
            self._connections -= 1
            self._quiet_since = time.monotonic()

    @contextlib.contextmanager
    def on_the_wire(self) -> Iterator[None]:
        """A request's network latency: it is still in flight, but the instance's workers do not
        give way to it (on an instance the network delays the answer, not the transforms)."""
        with self._busy_lock:
            self._on_the_wire += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._on_the_wire -= 1
                self._quiet_since = time.monotonic()

    def requests_in_flight(self) -> int:
        """HTTP requests being served now (one reading this over HTTP counts itself)."""
        with self._busy_lock:
            return self._connections

    def _api_busy(self) -> bool:
        with self._busy_lock:
            serving = self._connections - self._on_the_wire
            return serving > 0 or time.monotonic() - self._quiet_since < QUIET_S

    def _work(self) -> None:
        while not self._stop.is_set():
            if self._api_busy():
                # API requests come first (one interpreter lock serves both): transforms run in the
                # gaps between requests and lag behind loads, as on a busy instance.
                self._stop.wait(BUSY_POLL_S)
                continue
            with self.cond:
                job, wait_s = self._pick_job()
                if job is None:
                    self.cond.wait(wait_s)
                    continue
                self._transform_chunk(job, self.rng.randint(20, 120))
                if job not in self.jobs:
                    self.cond.notify_all()

    def _pick_job(self) -> tuple[Job | None, float]:
        now = time.monotonic()
        runnable = []
        next_ready = now + 0.5
        sets = self.store.tables["sys_import_set"].records
        for job in self.jobs:
            if job.held:
                continue
            if job.ready_at > now:
                next_ready = min(next_ready, job.ready_at)
                continue
            if job.run_after is not None:
                after = sets.get(job.run_after)
                # A run_after naming no import set waits forever (sandbox choice: the hardest case; the
                # client must not wait without a deadline). One that ended (processed, cancelled or
                # error) has completed: the next set runs (sandbox choice; not documented).
                if after is None or after["state"] not in ("processed", "cancelled", "error"):
                    continue
            runnable.append(job)
        if not runnable:
            return None, max(0.005, next_ready - now)
        # Import sets without run_after transform in a deliberately varying order, interleaved in
        # chunks, as concurrent scheduled transforms do on a real instance.
        return self.rng.choice(runnable), 0.0

    # ------------------------------------------------------------------ loading

    def load(
        self,
        staging_name: str,
        records: list[Any],
        user: str,
        multi_import_set_id: str | None,
        run_after: str | None,
        fate: str = "processed",
        held: bool = False,
    ) -> LoadResult:
        """insertMultiple: a new import set, its rows stored, then queued (or transformed inline)."""
        staging = self.staging[staging_name]
        with self.cond:
            stamp = now_text()
            sets = self.store.tables["sys_import_set"]
            if (
                not multi_import_set_id
                or multi_import_set_id not in self.store.tables["sys_multi_import_set"].records
            ):
                # An unknown multi_import_set_id gets a new multi import set (sandbox choice: the
                # response then names a different id than the one sent).
                multi_import_set_id = self.store.system_insert("sys_multi_import_set", state="loaded")
            synchronous = staging.spec.mode == "synchronous"
            set_id = self.store.system_insert(
                "sys_import_set",
                number=self.store.next_import_set_number(),
                state="loading",
                mode=staging.spec.mode,
                table_name=staging_name,
                data_source="",
                short_description=f"REST insertMultiple into {staging_name} by {user}",
                multi_import_set=multi_import_set_id,
            )
            started = time.monotonic()
            row_ids = self._store_rows(staging, set_id, records, user, stamp, first_row=0)
            sets.update(
                set_id,
                {
                    "state": "loaded",
                    "load_completed": now_text(),
                    "load_run_time": _run_time(time.monotonic() - started),
                },
            )
            job = Job(
                set_id=set_id,
                staging=staging,
                row_ids=row_ids,
                run_after=None if synchronous else run_after,
                ready_at=self._next_tick(),
                fate=fate,
                held=held and not synchronous,
            )
            if not staging.maps:
                # No transform map: ServiceNow leaves the set "loaded"; there is nothing to wait for.
                return LoadResult(set_id, multi_import_set_id, row_ids)
            if synchronous:
                while job.map_index < len(staging.maps):
                    self._transform_chunk(job, len(row_ids) + 1)
            else:
                self.jobs.append(job)
                self.cond.notify_all()
            return LoadResult(set_id, multi_import_set_id, row_ids)

    def _store_rows(
        self,
        staging: _Staging,
        set_id: str,
        records: list[Any],
        user: str,
        stamp: str,
        first_row: int,
        columns: dict[str, tuple[str, int]] | None = None,
    ) -> list[str]:
        # The hot path of insertMultiple. Records of one request nearly always share their keys: the
        # key -> column plan is made once per key tuple, and a record whose values are all short
        # strings is stored with C-level operations only.
        columns = staging.columns_by_key if columns is None else columns
        template = dict(staging.empty_row)
        template.update(
            sys_import_set=set_id,
            sys_import_state="pending",
            sys_created_on=stamp,
            sys_updated_on=stamp,
            sys_created_by=user,
            sys_updated_by=user,
            sys_mod_count="0",
        )
        table_of = self.store.table_of_sys_id
        rows = staging.table.records
        name = staging.table.name
        plans: dict[tuple[str, ...], tuple[list[str], list[int]] | None] = {}
        dropped = mangled = 0
        row_ids = []
        max_row = self.store.spec.max_row_bytes
        not_stored = 0
        for n, raw in enumerate(records, start=first_row):
            row = template.copy()
            if type(raw) is dict and _row_too_large(raw, max_row):
                # Skipped and logged (notes §7): the set holds fewer rows than were posted, and the
                # row numbers keep the gap (sandbox choice: the row counter advances on each record).
                not_stored += 1
                continue
            if type(raw) is dict:
                keys = tuple(raw)
                if keys in plans:
                    plan = plans[keys]
                else:
                    found = [columns.get(k) for k in keys]
                    known = [c for c in found if c is not None]
                    plan = ([c[0] for c in known], [c[1] for c in known]) if len(known) == len(keys) else None
                    plans[keys] = plan
                values = list(raw.values())
                if (
                    plan is not None
                    and set(map(type, values)) <= _STR_ONLY
                    and all(map(le, map(len, values), plan[1]))
                ):
                    row.update(zip(plan[0], values, strict=True))
                else:
                    d, m = self._store_values(columns, raw, row)
                    dropped += d
                    mangled += m
            else:
                # A record that is not an object stores an empty row (sandbox choice).
                mangled += 1
            sys_id = new_sys_id()
            row["sys_id"] = sys_id
            row["sys_import_row"] = str(n)
            rows[sys_id] = row
            table_of[sys_id] = name
            row_ids.append(sys_id)
        staging.table.added(row_ids)
        self.counters.add_rows_received(len(row_ids), dropped, mangled)
        if not_stored:
            self.counters.add_fault("rows_not_stored", not_stored)
        return row_ids

    @staticmethod
    def _store_values(
        columns: dict[str, tuple[str, int]], raw: dict[str, Any], row: Record
    ) -> tuple[int, int]:
        dropped = mangled = 0
        for key, value in raw.items():
            column = columns.get(key)
            if column is None:
                # Keys matching no column are dropped silently (notes §1; labels match exactly).
                dropped += 1
                continue
            if type(value) is not str:
                value = mangle(value)
                mangled += 1
            if len(value) > column[1]:
                value = value[: column[1]]  # silently truncated, as ServiceNow does
            row[column[0]] = value
        return dropped, mangled

    def insert_one(self, staging_name: str, record: Any, user: str) -> tuple[str, list[dict[str, str]], str]:
        """Single POST: one row into the table's open synchronous import set, transformed at once.

        ServiceNow reuses one open synchronous import set per staging table (it stays "loading"
        until a scheduled job closes it): a client cannot assume one import set per request.
        """
        staging = self.staging[staging_name]
        with self.cond:
            sets = self.store.tables["sys_import_set"]
            set_id = self._open_sync_sets.get(staging_name)
            if set_id is None or set_id not in sets.records:
                set_id = self.store.system_insert(
                    "sys_import_set",
                    number=self.store.next_import_set_number(),
                    state="loading",
                    mode="synchronous",
                    table_name=staging_name,
                    data_source="",
                    short_description=f"REST import into {staging_name}",
                    multi_import_set="",
                )
                self._open_sync_sets[staging_name] = set_id
            first_row = sum(1 for r in staging.table.records.values() if r["sys_import_set"] == set_id)
            # The single POST accepts column names as well as labels (notes §11).
            stored = self._store_rows(
                staging, set_id, [record], user, now_text(), first_row, staging.columns_by_label_or_name
            )
            if not stored:
                return sets.records[set_id]["number"], [], ""
            row_id = stored[0]
            for tmap in staging.maps:
                key = (set_id, tmap.sys_id)
                run_id = self._sync_runs.get(key)
                if run_id is None or run_id not in self.store.tables["sys_import_set_run"].records:
                    run_id = self._new_run(set_id, tmap)
                    self._sync_runs[key] = run_id
                status = self._transform_row(staging, tmap, row_id, run_id, now_text())
                self._bump_run(run_id, status)
            self.counters.add_rows_transformed(1 if staging.maps else 0)
            return sets.records[set_id]["number"], self.results_of(row_id), row_id

    # ------------------------------------------------------------------ transforming

    def _new_run(self, set_id: str, tmap: _Map) -> str:
        return self.store.system_insert(
            "sys_import_set_run",
            set=set_id,
            transform_map=tmap.sys_id,
            state="Running",
            started=now_text(),
            total="0",
            inserts="0",
            updates="0",
            processed="0",
            ignored="0",
            skipped="0",
            errors="0",
        )

    def _bump_run(self, run_id: str, status: str) -> None:
        run = self.store.tables["sys_import_set_run"].records[run_id]
        column = {
            "inserted": "inserts",
            "updated": "updates",
            "ignored": "ignored",
            "skipped": "skipped",
            "error": "errors",
        }[status]
        run[column] = str(int(run[column]) + 1)
        run["total"] = run["processed"] = str(int(run["total"]) + 1)
        run["state"] = "Complete with errors" if run["errors"] != "0" else "Complete"
        run["completed"] = run["sys_updated_on"] = now_text()

    def release_held(self) -> None:
        """The untransformed_import_sets fault was cleared: held sets transform at the next tick."""
        with self.cond:
            for job in self.jobs:
                if job.held:
                    job.held = False
                    job.ready_at = self._next_tick()
            self.cond.notify_all()

    def _cancel(self, job: Job) -> None:
        """A cancelled transform: the set is cancelled, its history says Cancelled, rows stay
        pending. One that did not complete: its history says so, the set stays processing."""
        stamp = now_text()
        incomplete = job.fate == "did_not_complete"
        if job.staging.maps:
            run_id = self._new_run(job.set_id, job.staging.maps[0])
            self.store.tables["sys_import_set_run"].update(
                run_id,
                {
                    "state": "Did not complete" if incomplete else "Cancelled",
                    "completed": stamp,
                    "sys_updated_on": stamp,
                },
            )
        sets = self.store.tables["sys_import_set"]
        sets.update(
            job.set_id, {"state": "processing" if incomplete else "cancelled", "sys_updated_on": stamp}
        )
        self.jobs.remove(job)

    def _transform_chunk(self, job: Job, size: int) -> None:
        """Transform up to size rows of the job's current map; advance map and set state."""
        sets = self.store.tables["sys_import_set"]
        if job.fate in ("cancelled", "did_not_complete"):
            self._cancel(job)
            return
        if job.map_index == 0 and job.row_index == 0 and job.run_id is None:
            sets.update(job.set_id, {"state": "processing", "sys_updated_on": now_text()})
        tmap = job.staging.maps[job.map_index]
        if job.run_id is None:
            job.run_id = self._new_run(job.set_id, tmap)
            job.counts = dict.fromkeys(("inserted", "updated", "ignored", "skipped", "error"), 0)
            job.started = time.monotonic()
        stamp = now_text()
        end = min(job.row_index + size, len(job.row_ids))
        counts = job.counts
        for row_id in job.row_ids[job.row_index : end]:
            counts[self._transform_row(job.staging, tmap, row_id, job.run_id, stamp)] += 1
        job.row_index = end
        if end < len(job.row_ids):
            return
        total = len(job.row_ids)
        self.store.tables["sys_import_set_run"].update(
            job.run_id,
            {
                "state": "Complete with errors" if counts["error"] else "Complete",
                "completed": now_text(),
                "run_time": _run_time(time.monotonic() - job.started),
                "total": str(total),
                "processed": str(total),
                "inserts": str(counts["inserted"]),
                "updates": str(counts["updated"]),
                "ignored": str(counts["ignored"]),
                "skipped": str(counts["skipped"]),
                "errors": str(counts["error"]),
            },
        )
        job.map_index += 1
        job.row_index = 0
        job.run_id = None
        if job.map_index >= len(job.staging.maps):
            # An onComplete script with error = true marks the import set as error (notes §11).
            final = "error" if job.fate == "error" else "processed"
            sets.update(job.set_id, {"state": final, "sys_updated_on": now_text()})
            self.counters.add_rows_transformed(total)
            if job in self.jobs:
                self.jobs.remove(job)

    def _transform_row(self, staging: _Staging, tmap: _Map, row_id: str, run_id: str, stamp: str) -> str:
        row = staging.table.records[row_id]
        target = tmap.target
        result: dict[str, str] = {
            "transform_map": tmap.spec.name,
            "table": target.name,
            "display_name": target.display,
        }
        target_id = ""
        error_id = ""
        try:
            status, target_id, comment = self._apply_map(tmap, row, stamp)
        except RowError as exc:
            status, comment = "error", exc.message
            error_id = self.store.system_insert(
                "sys_import_set_row_error",
                error_code=str(exc.code),
                error_message=exc.message,
                row=row_id,
                transform_map=tmap.sys_id,
                import_set=row["sys_import_set"],
            )
        if target_id:
            result["display_value"] = target.display_value(target.records[target_id])
            result["sys_id"] = target_id
        else:
            # Skipped and error rows name the staging row itself (notes §2).
            result["display_value"] = ""
            result["sys_id"] = row_id
        result["status"] = status
        if status == "error":
            result["error_message"] = comment
        elif comment:
            result["status_message"] = comment
        results = self.row_results.setdefault(row_id, [])
        results[:] = [r for r in results if r["transform_map"] != tmap.spec.name]
        results.append(result)
        # The staging row shows the outcome of the last map that ran (as ServiceNow does).
        row.update(
            sys_import_state=status,
            sys_import_state_comment=comment,
            sys_target_sys_id=target_id,
            sys_target_table=target.name,
            sys_transform_map=tmap.sys_id,
            sys_row_error=error_id,
            import_set_run=run_id,
            sys_updated_on=stamp,
            sys_updated_by="system",
        )
        return status

    def _apply_map(self, tmap: _Map, row: Record, stamp: str) -> tuple[str, str, str]:
        """Returns (status, target sys_id, comment); raises RowError for a row in error."""
        target = tmap.target
        copy_empty = tmap.spec.copy_empty_fields
        match: str | None = None
        if tmap.coalesce_sources:
            key = tuple(row[s] for s in tmap.coalesce_sources)
            if not all(key):
                if not tmap.spec.create_on_empty_coalesce:
                    missing = ", ".join(s for s in tmap.coalesce_sources if not row[s])
                    return (
                        "skipped",
                        "",
                        f"Unable to resolve target record, coalesce values not present: {missing}",
                    )
            else:
                match = target.lookup(tmap.coalesce_targets, key)
        values: Record = {}
        for fm in tmap.field_maps:
            value = row[fm.source]
            if fm.spec.required and not value:
                raise RowError(800, f"Required target field '{fm.target}' is empty (source {fm.source})")
            if fm.regex is not None and value and not fm.regex.search(value):
                message = fm.spec.pattern_message or "Value '{value}' of {field} does not match {pattern}"
                raise RowError(900, message.format(value=value, field=fm.source, pattern=fm.spec.pattern))
            if fm.ref_table is not None and value:
                ref_id = self._resolve_reference(fm, value, stamp)
                if ref_id is None:
                    continue
                value = ref_id
            if value or copy_empty or match is None:
                values[fm.target] = value
        if match is not None:
            existing = target.records[match]
            merged = {**existing, **values}
            target.apply_computed(merged)
            changes = {k: v for k, v in merged.items() if existing.get(k) != v}
            if not changes:
                return "ignored", match, NO_CHANGE
            changes.update(
                sys_updated_on=stamp,
                sys_updated_by="system",
                sys_mod_count=str(int(existing.get("sys_mod_count") or 0) + 1),
            )
            target.update(match, changes)
            return "updated", match, ""
        record = dict.fromkeys(target.fields, "")
        record.update(values)
        target.apply_computed(record)
        sys_id = new_sys_id()
        record.update(
            sys_id=sys_id,
            sys_created_on=stamp,
            sys_updated_on=stamp,
            sys_created_by="system",
            sys_updated_by="system",
            sys_mod_count="0",
        )
        self.store.insert(target, record)
        return "inserted", sys_id, ""

    def _resolve_reference(self, fm: _FieldMap, value: str, stamp: str) -> str | None:
        ref = fm.ref_table
        assert ref is not None
        if value in ref.records:  # a sys_id is accepted as it is
            return value
        found = ref.lookup((fm.ref_field,), (value,))
        if found is not None:
            return found
        action = fm.spec.choice_action
        if action == "ignore":
            return None
        if action == "create":
            record = dict.fromkeys(ref.fields, "")
            sys_id = new_sys_id()
            record.update(
                {
                    fm.ref_field: value,
                    "sys_id": sys_id,
                    "sys_created_on": stamp,
                    "sys_updated_on": stamp,
                    "sys_created_by": "system",
                    "sys_updated_by": "system",
                    "sys_mod_count": "0",
                }
            )
            ref.apply_computed(record)
            self.store.insert(ref, record)
            return sys_id
        raise RowError(100, f"Reference value '{value}' not found in {ref.name}.{fm.ref_field}")

    # ------------------------------------------------------------------ results

    def results_of(self, row_id: str) -> list[dict[str, str]]:
        """The per-map results of a staging row; a row not transformed yet shows its pending state."""
        with self.store.lock:
            results = self.row_results.get(row_id)
            if results:
                return [dict(r) for r in results]
            found = self.store.find(row_id)
            if found is None:
                return []
            table, row = found
            # Not transformed yet: for an async set the result names the staging table (notes §2).
            return [
                {
                    "transform_map": "",
                    "table": table.name,
                    "display_name": "",
                    "display_value": "",
                    "status": row.get("sys_import_state", "pending"),
                    "sys_id": row_id,
                }
            ]


def _row_too_large(raw: dict[str, Any], limit: int) -> bool:
    """Whether a record's values exceed the row size limit, in UTF-8 bytes."""
    values = [v if type(v) is str else mangle(v) for v in raw.values()]
    chars = sum(map(len, values))
    if chars * 4 <= limit:  # cheap: no UTF-8 character is longer than 4 bytes
        return False
    return sum(len(v.encode("utf-8")) for v in values) > limit


def _run_time(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
