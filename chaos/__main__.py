"""`python -m chaos [--tenants N] [--workers N] [--seed N]` — run the month-end chaos cycle and print invariants."""
from __future__ import annotations

import argparse
import sys

from chaos.harness import ChaosRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up converging after this many s")
    args = parser.parse_args()
    report = ChaosRun(tenants=args.tenants, workers=args.workers, seed=args.seed, timeout=args.timeout).run()
    print(report.render())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
