"""Benchmark: every tenant's invoice lines for a month vs one raw GROUP BY over the same rollups.

Starts a throw-away PostgreSQL (tests/support/services.py), runs the real migrations, COPYs 10,000 tenants and
31 days × 3 metrics of usage_rollups_daily each (930,000 rows), then times, side by side in the same run and
alternating, app.services.pricing.period_lines (the set-based computation the monthly run uses: one aggregate
joined with tenants and plan prices, then Decimal pricing per line) against a bare
`SELECT tenant_id, metric, sum(quantity) ... GROUP BY tenant_id, metric` over the same rows. Prints
`BENCH <name> <value> <unit>` lines: both medians, their ratio (target ≤ 3×) and the peak memory of the run
(target ≤ 300 MB). Also times writing all the month's invoices (generate_invoices), for information.

    .venv/bin/python -m bench.invoice_lines [--tenants 10000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import io
import random
import resource
import statistics
import time
import tracemalloc
from datetime import date, datetime, timedelta, timezone

YEAR, MONTH = 2026, 10  # a 31-day month
FIRST, LAST = date(2026, 10, 1), date(2026, 10, 31)
NOW = datetime(2026, 11, 1, 0, 30, tzinfo=timezone.utc)
METRICS = ("voice_minutes", "sms_outbound", "sms_inbound")
RAW_GROUP_BY = ("SELECT tenant_id, metric, sum(quantity) FROM usage_rollups_daily "
                "WHERE day BETWEEN :first AND :last GROUP BY tenant_id, metric")


def load(conn, tenants: int, seed: int = 4) -> int:
    """COPY tenants and a full month of rollups (every tenant, day and metric) into a migrated database."""
    rng = random.Random(seed)
    created = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat()
    plans = ("starter", "pro", "enterprise")
    rows = 0
    with conn.cursor() as cur:
        with cur.copy("COPY tenants (id, name, slug, plan, status, overdue_days, dunning_stage, disputed, "
                      "created_at, updated_at) FROM STDIN") as copy:
            for i in range(1, tenants + 1):
                copy.write_row((i, f"Tenant {i}", f"tenant-{i}", plans[i % 3], "active", 0, "ok", False, created,
                                created))
        days = [(FIRST + timedelta(days=d)).isoformat() for d in range((LAST - FIRST).days + 1)]
        with cur.copy("COPY usage_rollups_daily (tenant_id, day, metric, quantity, updated_at) FROM STDIN") as copy:
            for start in range(1, tenants + 1, 500):  # text blocks: fast, and memory stays flat
                buf = io.StringIO()
                for i in range(start, min(start + 500, tenants + 1)):
                    scale = rng.choice((5, 40, 300))
                    for day in days:
                        for metric in METRICS:
                            buf.write(f"{i}\t{day}\t{metric}\t{rng.randint(0, scale)}\t{created}\n")
                            rows += 1
                copy.write(buf.getvalue())
        cur.execute("SELECT setval(pg_get_serial_sequence('tenants', 'id'), %s)", (tenants,))
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE tenants")
        cur.execute("VACUUM ANALYZE usage_rollups_daily")
    conn.autocommit = False
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from sqlalchemy import func, select, text

    from app.extensions import db
    from app.models import Invoice, InvoiceLine
    from app.services import invoicing, pricing
    from bench.support import migrated_app

    with migrated_app("bench_invoice_lines"):
        raw = db.engine.raw_connection()
        t0 = time.perf_counter()
        rows = load(raw.driver_connection, args.tenants)
        raw.close()
        print(f"# loaded {args.tenants} tenants and {rows} rollup rows in {time.perf_counter() - t0:.1f} s",
              flush=True)

        def raw_group_by() -> float:
            start = time.perf_counter()
            result = db.session.execute(text(RAW_GROUP_BY), {"first": FIRST, "last": LAST}).all()
            elapsed = time.perf_counter() - start
            assert len(result) == args.tenants * len(METRICS)
            db.session.rollback()
            return elapsed

        def all_lines() -> tuple[float, dict]:
            start = time.perf_counter()
            lines = pricing.period_lines(FIRST, LAST)
            elapsed = time.perf_counter() - start
            db.session.rollback()
            return elapsed, lines

        raw_group_by()
        all_lines()  # warm the cache and the code paths for both sides alike
        raw_times, line_times = [], []
        for _ in range(args.repeat):
            raw_times.append(raw_group_by())
            elapsed, lines = all_lines()
            line_times.append(elapsed)
        assert len(lines) == args.tenants
        assert sum(len(t.lines) for t in lines.values()) == args.tenants * (1 + len(METRICS))
        del lines

        # Python-side allocations of one full computation (traced separately: tracing slows it down).
        tracemalloc.start()
        pricing.period_lines(FIRST, LAST)
        _current, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        db.session.rollback()

        t0 = time.perf_counter()
        created = invoicing.generate_invoices(YEAR, MONTH, now=NOW)
        generate_s = time.perf_counter() - t0
        assert created == args.tenants
        assert db.session.scalar(select(func.count()).select_from(Invoice)) == args.tenants
        assert db.session.scalar(select(func.count()).select_from(InvoiceLine)) == args.tenants * 4
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

        lines_s, raw_s = statistics.median(line_times), statistics.median(raw_times)
        n = args.tenants
        label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        print("# lines " + " ".join(f"{x:.3f}" for x in line_times) + "; raw "
              + " ".join(f"{x:.3f}" for x in raw_times), flush=True)
        print(f"BENCH invoice_lines_{label}_tenants {lines_s:.3f} s")
        print(f"BENCH invoice_lines_raw_group_by_{label} {raw_s:.3f} s")
        print(f"BENCH invoice_lines_ratio {lines_s / raw_s:.2f} x")
        print(f"BENCH invoice_lines_peak_rss {peak_rss_mb:.1f} MB")
        print(f"BENCH invoice_lines_traced_peak {traced_peak / 2**20:.1f} MB")
        print(f"BENCH invoice_generate_{label}_tenants {generate_s:.3f} s")
        db.session.remove()
        db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
