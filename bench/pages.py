"""Benchmark: server time and SQL statements per request of the billing pages, with 10,000 tenants.

Starts a throw-away PostgreSQL (tests/support/services.py), runs the real migrations, bulk-loads tenants with
about six months of invoices each (a mix of paid, open and overdue, every dunning stage), then times requests
through the WSGI app in-process (Flask's test client: the server's time, without a network hop) and counts
the statements each sends with a SQLAlchemy `before_cursor_execute` listener. Every request runs in its own
app context, as in production, so the signed-in user is loaded each time.

Targets (issue 7): /admin/system-billing ≤ 6 statements per page whatever the tenant count, median ≤ 50 ms.

    .venv/bin/python -m bench.pages [--tenants 10000] [--repeat 30]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, datetime, time as dtime, timedelta, timezone

from sqlalchemy import event

# The system page: the default view, sorted by a computed column, a search, a filter, a deep page, the htmx
# table fragment.
SYSTEM_URLS = [
    ("default", "/admin/system-billing", {}),
    ("sort_balance", "/admin/system-billing?sort=balance&dir=desc", {}),
    ("search", "/admin/system-billing?q=tenant 12", {}),
    ("stage_filter", "/admin/system-billing?stage=suspended&sort=oldest_due&dir=asc", {}),
    ("page_150", "/admin/system-billing?sort=name&dir=asc&page=150", {}),
    ("htmx_table", "/admin/system-billing?sort=overdue&page=3",
     {"HX-Request": "true", "HX-Target": "tenant-table"}),
]


def _months_back(day: date, n: int) -> date:
    y, m = divmod(day.year * 12 + day.month - 1 - n, 12)
    return date(y, m + 1, 1)


def load(conn, tenants: int, today: date, seed: int = 7) -> dict[str, int]:
    """COPY `tenants` tenants (every stage) and up to six months of invoices each."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    stats = {"tenants": tenants, "invoices": 0, "open": 0}
    stages = [(0, "ok")] * 14 + [(20, "reminder"), (35, "suspended"), (50, "restricted")]
    with conn.cursor() as cur:
        with cur.copy("COPY tenants (id, name, slug, plan, billing_email, status, overdue_days, dunning_stage, "
                      "disputed, billing_error, created_at, updated_at) FROM STDIN") as copy:
            for i in range(1, tenants + 1):
                days, stage = stages[i % len(stages)]
                copy.write_row((i, f"Tenant {i}", f"tenant-{i}", ("starter", "pro", "enterprise")[i % 3],
                                f"billing{i}@example.com", "active", days, stage, i % 97 == 0,
                                "invoice: customer missing" if i % 89 == 0 else None, now, now))
        with cur.copy("COPY invoices (tenant_id, period_start, period_end, plan_code, amount_due, amount_paid, "
                      "currency, status, number, issued_at, due_at, paid_at, last_payment_error, "
                      "paid_out_of_band, hard_decline, disputed, created_at, updated_at) FROM STDIN") as copy:
            for i in range(1, tenants + 1):
                days, stage = stages[i % len(stages)]
                for k in range(rng.randint(1, 6)):  # k = 0 is last month
                    start = _months_back(today, k + 1)
                    end = _months_back(today, k) - timedelta(days=1)
                    issued = datetime.combine(end + timedelta(days=1), dtime(1), tzinfo=timezone.utc)
                    amount = rng.choice((2900, 9900, 49900)) + rng.randint(0, 5000)
                    # Tenants in dunning owe their latest invoice, due `days` ago; 5% of the rest owe a new one.
                    open_ = k == 0 and (stage != "ok" or rng.random() < 0.05)
                    if open_:
                        due = datetime.combine(today - timedelta(days=days), dtime(1), tzinfo=timezone.utc) \
                            if stage != "ok" else issued
                        row = ("open", None, due, "Your card was declined." if stage != "ok" else None)
                        stats["open"] += 1
                    else:
                        row = ("paid", issued + timedelta(hours=2), issued, None)
                    status, paid_at, due_at, error = row
                    copy.write_row((i, start, end, "starter", amount, amount if status == "paid" else 0, "usd",
                                    status, f"SP-{start:%Y-%m}-{i:06d}", issued, due_at, paid_at, error, False,
                                    False, False, now, now))
                    stats["invoices"] += 1
        cur.execute("SELECT setval(pg_get_serial_sequence('tenants', 'id'), %s)", (tenants,))
    conn.commit()
    with conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")
        conn.autocommit = False
    return stats


def measure(app, client, url: str, headers: dict, repeat: int) -> tuple[float, list[int], int]:
    """Median milliseconds and the statement counts of `repeat` requests (after two warm-ups)."""
    from app.extensions import db

    with app.app_context():
        engine = db.engine
    counts: list[int] = []
    current = [0]

    def count(*_args):
        current[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        times = []
        size = 0
        for n in range(repeat + 2):
            current[0] = 0
            t0 = time.perf_counter()
            resp = client.get(url, headers=headers)
            elapsed = time.perf_counter() - t0
            assert resp.status_code == 200, (url, resp.status_code)
            size = len(resp.data)
            if n >= 2:
                times.append(elapsed)
                counts.append(current[0])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return statistics.median(times) * 1000, counts, size


def sign_in(app, client, email: str) -> None:
    from app.extensions import db
    from app.models import User

    with app.app_context():
        user = db.session.scalar(db.select(User).where(User.email == email))
        from app.services.sessions import start_session

        session_id = start_session(user)  # a server-side session row, as signing in makes
        db.session.commit()
        db.session.remove()
    with client.session_transaction() as sess:
        sess["_user_id"] = session_id
        sess["_fresh"] = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args, _others = parser.parse_known_args(argv)  # `python -m bench` passes every benchmark the same extras

    from app.extensions import db
    from app.models import Role, Tenant, UsageRollupDaily
    from app.services import clock
    from app.services.tenants import create_user
    from bench.support import migrated_app

    with migrated_app("bench_pages", APP_BASE_URL="http://127.0.0.1:5000") as app:
        today = clock.today()
        raw = db.engine.raw_connection()
        t0 = time.perf_counter()
        stats = load(raw.driver_connection, args.tenants, today)
        raw.close()
        print(f"# loaded {stats['tenants']} tenants, {stats['invoices']} invoices ({stats['open']} open) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        create_user("root@example.com", "bench-password", Role.ROOT_ADMIN)
        tenant = db.session.get(Tenant, 3)  # an enterprise tenant with usage this month
        create_user("admin@tenant-3.example.com", "bench-password", Role.TENANT_ADMIN, tenant)
        first, _last = clock.month_bounds(today.year, today.month)
        for d in range((today - first).days + 1):
            for metric, qty in (("voice_minutes", 900), ("sms_outbound", 400), ("sms_inbound", 150)):
                db.session.add(UsageRollupDaily(tenant_id=3, day=first + timedelta(days=d), metric=metric,
                                                quantity=qty))
        db.session.commit()
        db.session.remove()

        label = f"{args.tenants // 1000}k" if args.tenants % 1000 == 0 else str(args.tenants)
        root = app.test_client()
        sign_in(app, root, "root@example.com")
        medians, all_counts = [], []
        for name, url, headers in SYSTEM_URLS:
            ms, counts, size = measure(app, root, url, headers, args.repeat)
            medians.append(ms)
            all_counts.extend(counts)
            print(f"# {name:13s} {url:70s} median {ms:6.1f} ms, {max(counts)} statements, {size // 1024} KiB",
                  flush=True)
        print(f"BENCH system_billing_{label}_tenants_median {statistics.median(medians):.1f} ms")
        print(f"BENCH system_billing_{label}_tenants_worst_view_median {max(medians):.1f} ms")
        print(f"BENCH system_billing_queries_per_page {max(all_counts)} queries")

        tenant_client = app.test_client()
        sign_in(app, tenant_client, "admin@tenant-3.example.com")
        ms, counts, size = measure(app, tenant_client, "/admin/billing", {}, args.repeat)
        print(f"# tenant page   /admin/billing median {ms:.1f} ms, {max(counts)} statements, {size // 1024} KiB",
              flush=True)
        print(f"BENCH tenant_billing_median {ms:.1f} ms")
        print(f"BENCH tenant_billing_queries {max(counts)} queries")
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
