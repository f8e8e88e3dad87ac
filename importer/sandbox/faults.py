"""Fault injection: rate limits, 503s, latency, outages, dropped connections after commit, and
the ways a real instance is harsher than a friendly emulator (servicenow-notes.md §11)."""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

FAULT_KEYS = {
    "rate_limit_every",
    "rate_limit_per_s",
    "rate_limit_retry_after",
    "error_503_fraction",
    "seed",
    "latency_ms",
    "outage_s",
    "drop_after_commit",
    "endpoints",
    # §11: 429 without Retry-After / X-RateLimit-* (a full API_INT semaphore queue).
    "rate_limit_headers",
    # §11: a 200 that is not a success (quota cancellation), a 202 that did nothing.
    "quota_cancel",
    "quota_cancel_body",
    "accepted_202",
    # §11: import sets that never reach processed.
    "cancel_import_sets",
    "untransformed_import_sets",
    "oncomplete_error_import_sets",
    "incomplete_import_sets",
    # §11: ACLs filter rows after the query; 403 from the import GET.
    "acl_filter_table",
    "acl_filter_rows",
    "acl_filter_reads",
    "import_get_403",
    # A pooled keep-alive connection closed by the instance just as the client reuses it.
    "close_on_reuse",
}

# Faults that pick the k-th event (counted from when the key is set): a list of integers.
NTH_KEYS = (
    "drop_after_commit",
    "quota_cancel",
    "accepted_202",
    "cancel_import_sets",
    "untransformed_import_sets",
    "oncomplete_error_import_sets",
    "incomplete_import_sets",
    "close_on_reuse",
)
QUOTA_BODIES = ("partial", "unparsable")
ACL_ROWS = ("all", "half")

# Endpoint kinds faults apply to unless `endpoints` says otherwise: every API, never OAuth or admin.
API_KINDS = frozenset({"insertMultiple", "import", "import_get", "table", "stats", "app_service"})


class FaultError(ValueError):
    pass


@dataclass
class Decision:
    """What to do to one request before it is handled."""

    status: int | None = None  # 429 or 503
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float = 0.0


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: dict[str, Any] = {}
        self._rng = random.Random(0)
        self._api_requests = 0
        self._nth: dict[str, int] = {}
        self._acl_reads = 0
        self._tokens = 0.0
        self._tokens_at = 0.0

    def config(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._config)

    def set(self, **changes: Any) -> dict[str, Any]:
        """Merge changes into the current faults; returns them. outage_s is handled by the server."""
        problems = [f"unknown fault key {k!r}" for k in changes if k not in FAULT_KEYS]
        for key in (
            "rate_limit_every",
            "rate_limit_per_s",
            "rate_limit_retry_after",
            "latency_ms",
            "outage_s",
        ):
            value = changes.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                problems.append(f"{key}: expected a number >= 0")
        fraction = changes.get("error_503_fraction")
        if fraction is not None and (not isinstance(fraction, int | float) or not 0 <= fraction <= 1):
            problems.append("error_503_fraction: expected a number from 0 to 1")
        for key in NTH_KEYS:
            picks = changes.get(key)
            if picks is not None and (
                not isinstance(picks, list) or not all(isinstance(k, int) and k >= 1 for k in picks)
            ):
                problems.append(f"{key}: expected a list of integers >= 1")
        for key, choices in (("quota_cancel_body", QUOTA_BODIES), ("acl_filter_rows", ACL_ROWS)):
            if changes.get(key) is not None and changes[key] not in choices:
                problems.append(f"{key}: expected one of {', '.join(choices)}")
        for key in ("rate_limit_headers", "import_get_403"):
            if changes.get(key) is not None and not isinstance(changes[key], bool):
                problems.append(f"{key}: expected true or false")
        table = changes.get("acl_filter_table")
        if table is not None and not isinstance(table, str):
            problems.append("acl_filter_table: expected a table name")
        reads = changes.get("acl_filter_reads")
        if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int) or reads < 0):
            problems.append("acl_filter_reads: expected an integer >= 0 (0: every read)")
        endpoints = changes.get("endpoints")
        if endpoints is not None and not isinstance(endpoints, list):
            problems.append("endpoints: expected a list of endpoint kinds")
        if problems:
            raise FaultError("; ".join(problems))
        with self._lock:
            self._config.update({k: v for k, v in changes.items() if k != "outage_s"})
            if "seed" in changes or "error_503_fraction" in changes:
                self._rng = random.Random(self._config.get("seed", 0))
            if "rate_limit_every" in changes:
                self._api_requests = 0
            if "rate_limit_per_s" in changes:
                self._tokens = max(1.0, float(changes["rate_limit_per_s"] or 0))
                self._tokens_at = time.monotonic()
            for key in NTH_KEYS:
                if key in changes:
                    self._nth[key] = 0
            if {"acl_filter_table", "acl_filter_reads"} & set(changes):
                self._acl_reads = 0
            return dict(self._config)

    def clear(self) -> None:
        with self._lock:
            self._config = {}
            self._nth = {}

    def decide(self, kind: str) -> Decision:
        decision = Decision()
        with self._lock:
            cfg = self._config
            if not cfg:
                return decision
            kinds = cfg.get("endpoints")
            if kind not in (frozenset(kinds) if kinds else API_KINDS):
                return decision
            decision.latency_s = float(cfg.get("latency_ms") or 0) / 1000.0
            every = cfg.get("rate_limit_every")
            per_s = cfg.get("rate_limit_per_s")
            if every:
                self._api_requests += 1
                if self._api_requests % int(every) == 0:
                    decision.status = 429
                    decision.headers = self._rate_headers(
                        cfg, float(cfg.get("rate_limit_retry_after", 1)), limit=int(every)
                    )
            elif per_s:
                now = time.monotonic()
                capacity = max(1.0, float(per_s))
                self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * float(per_s))
                self._tokens_at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                else:
                    wait = (1.0 - self._tokens) / float(per_s)
                    decision.status = 429
                    decision.headers = self._rate_headers(
                        cfg,
                        float(cfg.get("rate_limit_retry_after", max(1, math.ceil(wait)))),
                        limit=math.ceil(capacity),
                    )
            fraction = cfg.get("error_503_fraction")
            if decision.status is None and fraction and self._rng.random() < float(fraction):
                decision.status = 503
        return decision

    def drop_this_commit(self) -> bool:
        """Called after each committed insertMultiple: should its connection now be dropped?"""
        return self.picks("drop_after_commit", "insertMultiple")

    def picks(self, key: str, kind: str) -> bool:
        """Count one event of ``kind`` for the k-th-event fault ``key``; True if this one is picked."""
        with self._lock:
            chosen = self._config.get(key)
            kinds = self._config.get("endpoints")
            if not chosen or (kinds and kind not in kinds):
                return False
            self._nth[key] = self._nth.get(key, 0) + 1
            return self._nth[key] in chosen

    def value(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._config.get(key, default)

    def acl_hides(self, table: str) -> str | None:
        """For a Table API read of ``table``: "all" or "half" of the page hidden by an ACL, or None."""
        with self._lock:
            if self._config.get("acl_filter_table") != table:
                return None
            reads = int(self._config.get("acl_filter_reads") or 0)
            self._acl_reads += 1
            if reads and self._acl_reads > reads:
                return None
            return str(self._config.get("acl_filter_rows") or "all")

    @staticmethod
    def _rate_headers(cfg: dict[str, Any], retry_after: float, limit: int) -> dict[str, str]:
        if cfg.get("rate_limit_headers") is False:
            return {}  # a full semaphore queue (KB0635398) says nothing about when to come back
        return {
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(int(time.time() + math.ceil(retry_after))),
            "X-RateLimit-Rule": "sandbox_rate_limit",
        }
