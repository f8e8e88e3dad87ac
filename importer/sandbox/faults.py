"""Fault injection: rate limits, 503s, latency, outages and dropped connections after commit."""

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
}

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
        self._insert_multiples = 0
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
        drops = changes.get("drop_after_commit")
        if drops is not None and (not isinstance(drops, list) or not all(isinstance(k, int) for k in drops)):
            problems.append("drop_after_commit: expected a list of integers")
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
            if "drop_after_commit" in changes:
                self._insert_multiples = 0
            return dict(self._config)

    def clear(self) -> None:
        with self._lock:
            self._config = {}

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
        with self._lock:
            drops = self._config.get("drop_after_commit")
            kinds = self._config.get("endpoints")
            if not drops or (kinds and "insertMultiple" not in kinds):
                return False
            self._insert_multiples += 1
            return self._insert_multiples in drops

    @staticmethod
    def _rate_headers(cfg: dict[str, Any], retry_after: float, limit: int) -> dict[str, str]:
        return {
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(int(time.time() + math.ceil(retry_after))),
            "X-RateLimit-Rule": "sandbox_rate_limit",
        }
