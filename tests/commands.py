"""Running ``python -m importer`` as a user does: a real process, the environment's IMPORTER_*
settings left out (a test's config is the only one), output captured, a time guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_importer(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "importer", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
