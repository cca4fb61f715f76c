"""Benchmark: the nightly dunning pass over 100,000 tenants vs one raw SQL statement computing the same days.

Starts a throw-away PostgreSQL (tests/support/services.py), runs the real migrations, bulk-loads tenants with mixed
invoice histories by COPY, brings the ladder up to yesterday with one untimed pass, then times, side by side in
the same run, a week of nightly passes (each a real night: days move, tenants cross thresholds, events and emails
are written) against the raw SELECT of every tenant's overdue days, fetched. Prints `BENCH <name> <value> <unit>`:
the median night and its ratio to the raw SQL (the figure issue 6 asks for), plus the busiest night of the week
(the 15th, when every invoice of the 1st still unpaid reaches the reminder together) and the very first pass.

    .venv/bin/python -m bench.dunning [--tenants 100000] [--nights 7]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, datetime, time as dtime, timedelta, timezone

TODAY = date(2026, 6, 15)  # the first timed night; histories are built backwards from it
NOW = datetime(2026, 6, 15, 2, 0, tzinfo=timezone.utc)


def _months_back(day: date, n: int) -> date:
    y, m = divmod(day.year * 12 + day.month - 1 - n, 12)
    return date(y, m + 1, 1)


def load(conn, tenants: int, seed: int = 6) -> dict[str, int]:
    """COPY `tenants` tenants and ~6 months of invoices each into an empty migrated database."""
    rng = random.Random(seed)
    now = NOW.isoformat()
    stats = {"tenants": tenants, "invoices": 0, "open": 0}
    with conn.cursor() as cur:
        with cur.copy("COPY tenants (id, name, slug, plan, billing_email, status, overdue_days, dunning_stage, "
                      "disputed, created_at, updated_at) FROM STDIN") as copy:
            for i in range(1, tenants + 1):
                copy.write_row((i, f"Tenant {i}", f"tenant-{i}", ("starter", "pro", "enterprise")[i % 3],
                                f"billing{i}@example.com", "active", 0, "ok", False, now, now))
        with cur.copy("COPY invoices (tenant_id, period_start, period_end, plan_code, amount_due, amount_paid, "
                      "currency, status, issued_at, due_at, paid_at, paid_out_of_band, hard_decline, disputed, "
                      "created_at, updated_at) FROM STDIN") as copy:
            for i in range(1, tenants + 1):
                months = rng.randint(1, 6)  # tenants joined at different times
                roll = rng.random()
                # Mixed histories: most pay everything; some leave the latest, the latest few, or one old
                # invoice open; some have voided or partly paid invoices.
                open_latest = 0 if roll < 0.78 else 1 if roll < 0.90 else rng.randint(2, months) if months > 1 else 1
                old_gap = roll >= 0.97 and months >= 3
                for k in range(months):  # k = 0 is the latest month
                    start = _months_back(TODAY, k + 1)
                    end = _months_back(TODAY, k) - timedelta(days=1)
                    # Most invoices go out on the 1st; some later (a force-run, a tick that failed and caught up).
                    late = 0 if rng.random() < 0.8 else rng.randint(1, 9)
                    issued = datetime.combine(end + timedelta(days=1 + late), dtime(0, 30), tzinfo=timezone.utc) \
                        + timedelta(minutes=rng.randint(0, 600))
                    amount = rng.choice((4900, 14900, 49900)) + rng.randint(0, 20000)
                    status, paid, paid_at = "paid", amount, issued + timedelta(hours=1)
                    if k < open_latest or (old_gap and k == months - 1):
                        status, paid, paid_at = "open", (amount // 2 if rng.random() < 0.1 else 0), None
                        stats["open"] += 1
                    elif rng.random() < 0.02:
                        status, paid, paid_at = "void", 0, None
                    copy.write_row((i, start, end, "starter", amount, paid, "usd", status, issued, issued,
                                    paid_at, False, False, False, now, now))
                    stats["invoices"] += 1
        cur.execute("SELECT setval(pg_get_serial_sequence('tenants', 'id'), %s)", (tenants,))
    conn.commit()
    with conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE tenants")
        cur.execute("VACUUM ANALYZE invoices")
        conn.autocommit = False
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--nights", type=int, default=7, help="timed nights, centred on the 15th")
    # Lenient: `python -m bench` hands the same extra arguments to every benchmark.
    args, _ = parser.parse_known_args(argv or [])

    from sqlalchemy import text

    from app.extensions import db
    from app.services.dunning import OVERDUE_DAYS_SQL, run_pass
    from bench.support import migrated_app

    with migrated_app("bench_dunning", APP_BASE_URL="http://127.0.0.1:5000"):
        raw = db.engine.raw_connection()
        t0 = time.perf_counter()
        stats = load(raw.driver_connection, args.tenants)
        raw.close()
        print(f"# loaded {stats['tenants']} tenants, {stats['invoices']} invoices ({stats['open']} open) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)

        def raw_sql(as_of: date) -> float:
            start = time.perf_counter()
            with db.engine.connect() as conn:
                rows = conn.execute(text(OVERDUE_DAYS_SQL), {"as_of": as_of, "tz": "UTC"}).all()
            elapsed = time.perf_counter() - start
            assert len(rows) == args.tenants
            return elapsed

        # The ladder as it stood before the measured week: the first pass ever moves every overdue tenant
        # at once (reported, not compared).
        t0 = time.perf_counter()
        first = run_pass(TODAY - timedelta(days=args.nights // 2 + 1), now=NOW)
        first_s = time.perf_counter() - t0
        db.session.remove()
        raw_sql(TODAY)  # warm the cache for both sides alike

        # A week of nights around the 15th, when the invoices of the 1st reach the reminder threshold
        # together: most nights move almost nobody, one moves every tenant still unpaid at day 14.
        nights = []  # (as_of, pass seconds, raw seconds, tenants moved)
        for k in range(-(args.nights // 2), args.nights - args.nights // 2):
            as_of = TODAY + timedelta(days=k)
            before = raw_sql(as_of)
            t0 = time.perf_counter()
            result = run_pass(as_of, now=NOW + timedelta(days=k))
            elapsed = time.perf_counter() - t0
            db.session.remove()
            nights.append((as_of, elapsed, min(before, raw_sql(as_of)), result.changed))
            print(f"# night {as_of}: pass {elapsed:.3f} s, raw SQL {nights[-1][2]:.3f} s, "
                  f"{result.changed} tenants moved, {result.emails_queued} emails queued", flush=True)

        # The pass's stored days equal the raw statement's, tenant for tenant.
        with db.engine.connect() as conn:
            expected = dict(conn.execute(text(OVERDUE_DAYS_SQL), {"as_of": nights[-1][0], "tz": "UTC"}).all())
            stored = dict(conn.execute(text("SELECT id, overdue_days FROM tenants")).all())
        assert stored == expected, "run_pass and the raw SQL disagree"

        p = statistics.median(n[1] for n in nights)
        r = statistics.median(n[2] for n in nights)
        busiest = max(nights, key=lambda n: n[3])
        n = args.tenants
        label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        print(f"# first pass moved {first.changed} tenants; busiest night {busiest[0]} moved {busiest[3]} "
              f"(rendering and queueing one email each)", flush=True)
        print(f"BENCH dunning_pass_{label}_tenants {p:.3f} s")
        print(f"BENCH dunning_raw_sql_{label} {r:.3f} s")
        print(f"BENCH dunning_ratio {p / r:.2f} x")
        print(f"BENCH dunning_pass_busiest_night_{label}_tenants {busiest[1]:.3f} s")
        print(f"BENCH dunning_first_pass_{label}_tenants {first_s:.3f} s")
        db.session.remove()
        db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
