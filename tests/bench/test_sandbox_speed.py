"""Sandbox speed: rows/s accepted through insertMultiple, and rows/s transformed.

The sandbox must never be the bottleneck of importer's benchmarks. Its absolute figures are
printed (the target is 50,000 rows/s accepted and 20,000 transformed; on a quiet 2-core host it
accepts 62,000-68,000), but this host is shared and its speed swings by 40% even for an empty
Python loop, so what is asserted is a ratio measured in the same run: the sandbox accepts rows
at least NOT_THE_BOTTLENECK times as fast as importer posts them, and transforms them at least
as fast as importer posts them.

Run: .venv/bin/pytest tests/bench/test_sandbox_speed.py -m bench -s
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.bench.hr_posting import importer_post, write_csv
from tests.instance import sandbox_process

FIELDS = 15
BATCH_ROWS = 500
BATCHES = 100  # 50,000 rows
ROUND_BATCHES = 20
TARGET_POSTED_ROWS_PER_S = 50_000
TARGET_TRANSFORMED_ROWS_PER_S = 20_000
NOT_THE_BOTTLENECK = 2.5
IMPORTER_ROWS = 10_000

DATA = {
    "instance": {"seed": 1, "async_transform_delay_ms": 0},
    "users": [{"user_name": "bench", "password": "bench", "roles": ["import_transformer", "import_admin"]}],
    "tables": {"u_bench_target": {"display": "f0", "fields": [f"f{i}" for i in range(FIELDS)]}},
    "staging_tables": {
        "u_bench_import": {
            "columns": {f"u_f{i}": {"label": f"Field {i}", "max_length": 80} for i in range(FIELDS)},
            "transform_maps": [
                {
                    "name": "Bench",
                    "target": "u_bench_target",
                    "field_maps": [
                        {"source": f"u_f{i}", "target": f"f{i}", "coalesce": i == 0} for i in range(FIELDS)
                    ],
                }
            ],
        }
    },
}


def counters(url: str) -> dict:
    return requests.get(f"{url}/sandbox/admin/counters", timeout=10).json()


def importer_posting_rate(root: Path) -> float:
    """importer's own posting speed in this run, to the sandbox in its own process (rows/s)."""
    path = root / "bench.csv"
    write_csv(path, IMPORTER_ROWS)
    with sandbox_process() as url:
        seconds, _ = importer_post(root, url, path)
    return IMPORTER_ROWS / seconds


@pytest.mark.bench
def test_sandbox_accepts_and_transforms_fast_enough(tmp_path: Path):
    importer_rate = importer_posting_rate(tmp_path)
    # The request bodies are encoded before the clock starts: this measures the sandbox, not the client.
    bodies = [
        json.dumps(
            {
                "records": [
                    {f"Field {i}": f"value {b}-{r}-{i}" for i in range(FIELDS)} for r in range(BATCH_ROWS)
                ]
            }
        ).encode()
        for b in range(BATCHES)
    ]
    # The sandbox in its own process, as `importer sandbox` serves it and as importer's own
    # benchmarks use it: the client's work here does not slow it down.
    data = tmp_path / "bench.yaml"
    data.write_text(yaml.safe_dump(DATA))
    with sandbox_process(data) as base, requests.Session() as session:
        session.auth = ("bench", "bench")
        session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})
        url = f"{base}/api/now/import/u_bench_import/insertMultiple"
        # Five rounds of 10,000 rows; the best round counts (as timeit does): other processes on a
        # shared host only ever slow a round down.
        round_rates = []
        for start in range(0, BATCHES, ROUND_BATCHES):
            started = time.perf_counter()
            for body in bodies[start : start + ROUND_BATCHES]:
                assert session.post(url, data=body).status_code == 201
            round_rates.append(ROUND_BATCHES * BATCH_ROWS / (time.perf_counter() - started))
        transformed_before = counters(base)["rows_transformed"]
        started = time.perf_counter()
        deadline = started + 120
        while counters(base)["rows_transformed"] < BATCHES * BATCH_ROWS and time.perf_counter() < deadline:
            time.sleep(0.25)  # each poll is a request, and transforms give way to requests
        transform_s = time.perf_counter() - started
        final = counters(base)
    rows = BATCHES * BATCH_ROWS
    posted_rate = max(round_rates)
    transform_rate = (rows - transformed_before) / transform_s if rows > transformed_before else float("inf")
    print(
        f"\nsandbox: posted {posted_rate:,.0f} rows/s (best round; rounds "
        f"{', '.join(f'{r:,.0f}' for r in round_rates)}; {BATCH_ROWS}-row insertMultiple, "
        f"{FIELDS} fields; target {TARGET_POSTED_ROWS_PER_S:,}); transformed {transform_rate:,.0f} rows/s "
        f"({rows - transformed_before} rows after posting ended; target {TARGET_TRANSFORMED_ROWS_PER_S:,}); "
        f"importer posts {importer_rate:,.0f} rows/s in this run: the sandbox accepts "
        f"{posted_rate / importer_rate:.1f}x and transforms {transform_rate / importer_rate:.1f}x as fast"
    )
    assert final["rows_received"] == final["rows_transformed"] == rows
    assert posted_rate >= NOT_THE_BOTTLENECK * importer_rate
    assert transform_rate >= importer_rate
