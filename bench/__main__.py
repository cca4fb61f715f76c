"""Run the benchmarks: `python -m bench [name ...]`; each prints `BENCH <name> <value> <unit>` lines.

A benchmark is a module bench/<name>.py with `main(argv: list[str] | None) -> int`, registered in BENCHMARKS.
Each runs in its own Python process, so its peak memory and its timings are its own.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

# Registered benchmarks, in the order `make bench` runs them.
BENCHMARKS: list[str] = [
    "invoice_lines",  # issue 4: every tenant's invoice lines vs one raw GROUP BY
    "dunning",  # issue 6: the nightly dunning pass vs one raw SELECT
    "webhooks",  # issue 5: webhook ingestion (verify + store + enqueue) on one gunicorn worker
    "pages",  # issue 7: server time and SQL statements of /admin/system-billing (10,000 tenants), /admin/billing
    "month_end",  # issue 8: month-end Stripe request rate under the shared rate limit vs the limit
    "month_end_e2e",  # issue 19: 2,000-tenant month-end at Stripe's live limit, wall time vs (requests ÷ limit)
    "entitlements",  # issue 16: GET /api/entitlements on one gunicorn worker, revalidated (304) and full reads
    "reports",  # issue 18: revenue report (10,000 tenants × 12 months), CSV exports of 100,000 invoices
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    args, extra = parser.parse_known_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or BENCHMARKS:
        print(f"# bench {name}", flush=True)
        started = time.perf_counter()
        # Extra arguments (e.g. --tenants 1000) go to every selected benchmark.
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *extra])
        print(f"# bench {name} finished in {time.perf_counter() - started:.1f} s (exit {code})", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
