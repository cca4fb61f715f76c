"""Month-end throughput through the emulator with Stripe's rate limit on (issue 8).

Runs the month-end cycle (invoice + charge every tenant, webhooks processed) with three RQ workers sharing the
Redis-held Stripe budget, no other faults, and measures the Stripe request rate achieved during the run
against the limit. Target: ≥ 80% of the limit.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from chaos.harness import ChaosRun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month-end-tenants", type=int, default=120)
    parser.add_argument("--rate-limit", type=int, default=25)
    args, _ = parser.parse_known_args(argv)
    run = ChaosRun(tenants=args.month_end_tenants, workers=3, chaos=False, stripe_rate_limit=args.rate_limit,
                   timeout=1200, verbose=False)
    report = run.run()
    everything = [r for r in run.request_log if r["time"] >= run.measure_from and r["path"].startswith("/v1/")]
    start = min(r["time"] for r in everything)
    # The invoicing phase: from the tick until the billing queue first drained (every tenant's invoice job ran).
    # After it only webhook re-reads and the odd retry trickle in, bounded by job throughput, not by Stripe.
    last_pay = run.billing_drained_at or max(r["time"] for r in everything if r["path"].endswith("/pay"))
    invoicing = [r for r in everything if r["time"] <= last_pay]
    rate = len(invoicing) / (last_pay - start)
    overall = len(everything) / (max(r["time"] for r in everything) - start)
    statuses = Counter(r["status"] for r in everything)
    print(f"BENCH month_end_tenants {args.month_end_tenants} tenants")
    print(f"BENCH month_end_invoicing_requests {len(invoicing)} requests")
    print(f"BENCH month_end_invoicing_duration {last_pay - start:.1f} s")
    print(f"BENCH month_end_stripe_rate {rate:.2f} req/s")
    print(f"BENCH month_end_stripe_limit {args.rate_limit} req/s")
    print(f"BENCH month_end_rate_vs_limit {rate / args.rate_limit:.2f} x (target >= 0.80)")
    print(f"BENCH month_end_overall_rate_incl_webhook_tail {overall:.2f} req/s")
    print(f"BENCH month_end_http_429 {statuses.get(429, 0)} responses")
    print(f"BENCH month_end_invariants {'hold' if report.ok else 'BROKEN'}")
    if not report.ok:
        print(report.render(), file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
