"""Prometheus metrics: files and rows by state (read from the ledger at scrape time), batches in
flight, HTTP retries by reason, the last successful result poll."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from importer.ledger import BatchState, Ledger


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, last_poll: Callable[[], datetime | None]) -> None:
        self.ledger = ledger
        self.last_poll = last_poll

    def collect(self) -> Iterator[GaugeMetricFamily]:
        files, rows = self.ledger.state_counts()
        by_file = GaugeMetricFamily("importer_files", "Files in the ledger by state", labels=["state"])
        for state, count in sorted(files.items()):
            by_file.add_metric([state], count)
        yield by_file
        by_row = GaugeMetricFamily("importer_rows", "Rows in the ledger by state", labels=["state"])
        for state, count in sorted(rows.items()):
            by_row.add_metric([state], count)
        yield by_row
        in_flight = sum(
            len(self.ledger.batches_in_state(state))
            for state in (BatchState.POSTING, BatchState.POSTED, BatchState.PARKED)
        )
        yield GaugeMetricFamily(
            "importer_batches_in_flight", "Batches sent but without results", value=in_flight
        )
        last = self.last_poll()
        yield GaugeMetricFamily(
            "importer_last_successful_poll_timestamp_seconds",
            "When results were last polled successfully (Unix time; 0: never)",
            value=last.timestamp() if last else 0,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.retries = Counter(
            "importer_http_retries",
            "Requests to the instance retried, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "importer_notifications",
            "Notifications (e-mail, webhook) sent or given up after retries",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.inbox_scans = Counter(
            "importer_inbox_scans",
            "Looks at the inbox (a file event, a rescan, or a file still settling)",
            registry=self.registry,
        )
        self._server: Any = None

    def count_retry(self, reason: str, status: int | None) -> None:
        self.retries.labels(reason=reason).inc()

    def count_notification(self, channel: str, outcome: str) -> None:
        self.notifications.labels(channel=channel, outcome=outcome).inc()

    def serve(self, port: int, ledger: Ledger, last_poll: Callable[[], datetime | None]) -> int:
        """Serve on 127.0.0.1:port (0: any free port); returns the port."""
        self.registry.register(LedgerCollector(ledger, last_poll))
        server, thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self._server = (server, thread)
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            if isinstance(thread, threading.Thread):
                thread.join(timeout=5)
