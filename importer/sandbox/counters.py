"""What the sandbox has seen: GET /sandbox/admin/counters."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.rows_received = 0
        self.rows_transformed = 0
        self.unknown_keys_dropped = 0
        self.values_mangled = 0
        self.faults_injected: Counter[str] = Counter(
            {
                "429": 0,
                "503": 0,
                "dropped": 0,
                "outage": 0,
                "quota_cancel": 0,
                "accepted_202": 0,
                "session_overflow": 0,
                "acl": 0,
                "closed_on_reuse": 0,
                "rows_not_stored": 0,
            }
        )

    def add_request(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def add_rows_received(self, rows: int, dropped: int, mangled: int) -> None:
        with self._lock:
            self.rows_received += rows
            self.unknown_keys_dropped += dropped
            self.values_mangled += mangled

    def add_rows_transformed(self, rows: int) -> None:
        with self._lock:
            self.rows_transformed += rows

    def add_fault(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.faults_injected[kind] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "rows_received": self.rows_received,
                "rows_transformed": self.rows_transformed,
                "unknown_keys_dropped": self.unknown_keys_dropped,
                "values_mangled": self.values_mangled,
                "faults_injected": dict(self.faults_injected),
            }
