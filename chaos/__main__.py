"""`python -m chaos [--tenants N] [--workers N] [--seed N] [--no-faults]` — the month-end chaos cycle, invariants.

Faults: workers SIGKILLed mid-job, a Redis restart, Stripe 5xx/429/dropped responses and latency throughout, and
(issue 19) a Stripe outage, a PostgreSQL restart, the webhook endpoint down for minutes, two schedulers started
at once. `--no-faults` runs the same month-end without any of them, for comparison.
"""
from __future__ import annotations

import argparse
import sys

from chaos.harness import ChaosRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up converging after this many s")
    parser.add_argument("--stripe-outage-s", type=float, default=60.0, help="Stripe answers 500 to everything")
    parser.add_argument("--endpoint-outage-s", type=float, default=300.0, help="the web process is stopped")
    parser.add_argument("--no-pg-restart", dest="pg_restart", action="store_false")
    parser.add_argument("--schedulers", type=int, default=2, help="scheduler.py processes started at once")
    parser.add_argument("--no-faults", dest="chaos", action="store_false",
                        help="the same month-end without faults (Stripe's rate limit only), for comparison")
    args = parser.parse_args()
    report = ChaosRun(tenants=args.tenants, workers=args.workers, seed=args.seed, timeout=args.timeout,
                      chaos=args.chaos, stripe_outage_s=args.stripe_outage_s, endpoint_outage_s=args.endpoint_outage_s,
                      pg_restart=args.pg_restart, schedulers=args.schedulers).run()
    print(report.render())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
