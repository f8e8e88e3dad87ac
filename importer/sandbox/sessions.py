"""JSESSIONID sessions, as a real instance keeps them (servicenow-notes.md §11, always on).

A request without a known ``JSESSIONID`` cookie starts a new session and gets its cookie back.
Requests of one session are served one at a time (KB0755706); when more than
``QUEUE_LIMIT`` wait on one session, the extra ones are answered 202 and dropped unprocessed
("Session Reuse Queue Overflow", KB3047080). A client that shares one cookie among parallel
threads is serialised; one with a session per worker is not.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

COOKIE = "JSESSIONID"
QUEUE_LIMIT = 10


@dataclass
class _Session:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0
    requests: Counter[str] = field(default_factory=Counter)


class Sessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self.overflows = 0

    def session_for(self, cookie: str | None) -> tuple[str, bool]:
        """The session a request belongs to, and whether it is new (then its cookie is sent)."""
        with self._lock:
            if cookie and cookie in self._sessions:
                return cookie, False
            sid = secrets.token_hex(16).upper()
            self._sessions[sid] = _Session()
            return sid, True

    def enter(self, sid: str, kind: str) -> bool:
        """Wait for the session's turn; False (answer 202, drop the request) when too many wait."""
        with self._lock:
            session = self._sessions[sid]
            if session.waiting >= QUEUE_LIMIT and session.lock.locked():
                self.overflows += 1
                return False
            session.waiting += 1
            session.requests[kind] += 1
        session.lock.acquire()
        with self._lock:
            session.waiting -= 1
        return True

    def leave(self, sid: str) -> None:
        self._sessions[sid].lock.release()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "count": len(self._sessions),
                "requests": {sid: dict(s.requests) for sid, s in self._sessions.items() if s.requests},
                "overflows": self.overflows,
            }
