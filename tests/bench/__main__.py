"""``python -m tests.bench [--scale full|smoke] [--only 1,3,...]``: the issue-9 targets table."""

from __future__ import annotations

import argparse
import sys

from tests.bench.targets import SCALES, run_all, table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--only", help="comma-separated target numbers (1 also measures 2 and 4)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    rows = run_all(args.scale, only)
    print(table(rows, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
