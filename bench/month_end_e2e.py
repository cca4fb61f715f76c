"""Month-end end to end at Stripe's live rate limit (issue 19), against its physical floor.

2,000 tenants (the chaos harness's mix: paying, declining cards, no usage, no card), Stripe (the emulator) at
100 requests/s, our shared limiter (STRIPE_RATE_LIMIT_PER_S) just under it, three `worker.py` processes, web on
gunicorn, everything on this machine. Wall time runs from the monthly tick until every invoice is final (paid,
or open after a declined or impossible charge) and every webhook Stripe sent is stored and processed. The floor
is what Stripe's limit allows at best: (Stripe requests made, 429s not counted) ÷ (the limit). Prints
`BENCH month_end_e2e_ratio <wall ÷ floor> x` (target ≤ 1.25) and the parts.

    .venv/bin/python -m bench month_end_e2e [--e2e-tenants 2000] [--e2e-limit 100] [--e2e-ours 95]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from chaos.harness import ChaosRun

TARGET = 1.25


def drain_jobs(redis_url: str, since: float) -> tuple[int, float]:
    """(drainer jobs run, seconds they ran in all) since `since`, from RQ's finished registry of the webhooks queue."""
    from datetime import datetime, timezone

    from redis import Redis
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    conn = Redis.from_url(redis_url)
    ids = [i for i in FinishedJobRegistry("webhooks", connection=conn).get_job_ids() if i.startswith("webhook-drain")]
    after = datetime.fromtimestamp(since, timezone.utc).replace(tzinfo=None)
    runs = [(job.ended_at - job.started_at).total_seconds() for job in Job.fetch_many(ids, connection=conn)
            if job is not None and job.started_at and job.ended_at
            and job.started_at.replace(tzinfo=None) >= after]
    return len(runs), sum(runs)


def request_kind(method: str, path: str) -> str:
    """`POST invoices/{id}/pay` for `POST /v1/invoices/in_123/pay`."""
    parts = path.split("/")[2:]
    return " ".join([method, "/".join(parts[:1] + ["{id}" for _ in parts[1:2]] + parts[2:3])])


def collect(run: ChaosRun) -> None:
    """What the figures need from the services while they are still up (events, rows, drainer jobs)."""
    from app.extensions import db

    start = run.measure_from
    run.e2e = {"events": sum(1 for e in run.emu.events() if e["created"] >= int(start))}
    run.e2e["rows"] = Counter(dict(db.session.execute(db.text(
        "select case when attempts = 1 and processed_at = received_at then 'at_receipt' else status end, count(*) "
        "from webhook_events where received_at >= to_timestamp(:t) group by 1"), {"t": start}).all()))
    db.session.rollback()
    run.e2e["drain_jobs"], run.e2e["drain_busy"] = drain_jobs(run.redis.url, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e-tenants", type=int, default=2000)
    parser.add_argument("--e2e-limit", type=float, default=100.0, help="Stripe's (the emulator's) requests/s")
    parser.add_argument("--e2e-ours", type=float, default=None,
                        help="our STRIPE_RATE_LIMIT_PER_S (default: 96%% of the limit)")
    parser.add_argument("--e2e-workers", type=int, default=3)
    args, _ = parser.parse_known_args(argv)
    ours = args.e2e_ours or round(args.e2e_limit * 0.96, 1)
    run = ChaosRun(tenants=args.e2e_tenants, workers=args.e2e_workers, chaos=False, stripe_rate_limit=ours,
                   emulator_rate_limit=args.e2e_limit, timeout=3600, verbose=True, dunning=False, on_finish=collect,
                   schedulers=1)
    report = run.run()
    if run.done_at is None:
        print(report.render(), file=sys.stderr)
        print("# ERROR: the month-end did not finish", file=sys.stderr)
        return 1
    start = run.measure_from
    api = [r for r in run.request_log if r["time"] >= start and r["path"].startswith("/v1/")]
    made = [r for r in api if r["status"] != 429]
    wall = run.done_at - start
    floor = len(made) / args.e2e_limit
    invoicing = (run.billing_drained_at or run.done_at) - start
    rows, busy = run.e2e["rows"], run.e2e["drain_busy"]
    handled = rows.get("processed", 0) + rows.get("ignored", 0)
    kinds = Counter(request_kind(r["method"], r["path"]) for r in made)
    print(f"BENCH month_end_e2e_tenants {args.e2e_tenants} tenants")
    print(f"BENCH month_end_e2e_stripe_requests {len(made)} requests")
    print(f"# by kind: {dict(kinds.most_common(8))}")
    print(f"BENCH month_end_e2e_http_429 {len(api) - len(made)} responses")
    print(f"BENCH month_end_e2e_limit {args.e2e_limit:g} req/s (ours {ours:g} req/s)")
    print(f"BENCH month_end_e2e_floor {floor:.1f} s")
    print(f"BENCH month_end_e2e_wall {wall:.1f} s")
    print(f"BENCH month_end_e2e_invoicing {invoicing:.1f} s (tick until the billing queue first ran dry)")
    print(f"BENCH month_end_e2e_invoices_final {(run.invoices_final_at or run.done_at) - start:.1f} s")
    print(f"BENCH month_end_e2e_stripe_rate {len(made) / wall:.1f} req/s")
    buckets = Counter(int((r["time"] - start) // 10) for r in made)
    print("# Stripe requests/s by 10 s of the run: "
          + " ".join(f"{buckets.get(k, 0) / 10:.0f}" for k in range(int(wall // 10) + 1)))
    print(f"BENCH month_end_e2e_webhook_events {run.e2e['events']} events "
          f"({run.e2e['events'] / args.e2e_tenants:.1f} per tenant; {rows.get('at_receipt', 0)} of unhandled types "
          f"decided at receipt, {handled} by drainers)")
    if busy:
        print(f"BENCH month_end_e2e_drain_rate {handled / busy:.0f} events/s "
              f"(per busy drainer: {run.e2e['drain_jobs']} drainer jobs ran {busy:.1f} s in all)")
    cpu = {k: run.cpu_at_done[k] - run.cpu_at_start.get(k, 0.0) for k in run.cpu_at_done}
    print(f"# CPU seconds during the run: {', '.join(f'{k} {v:.1f}' for k, v in cpu.items())}; "
          f"{sum(cpu.values()) / wall:.2f} of {os.cpu_count()} CPUs busy with this run, "
          f"{sum(cpu.values()) / args.e2e_tenants * 1000:.0f} ms per tenant "
          f"({', '.join(f'{k} {v / args.e2e_tenants * 1000:.0f}' for k, v in cpu.items())})")
    print(f"BENCH month_end_e2e_ratio {wall / floor:.2f} x (target <= {TARGET})")
    print(f"BENCH month_end_e2e_invariants {'hold' if report.ok else 'BROKEN'}")
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; logs {run.logdir}")
    if not report.ok:
        print(report.render(), file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
