"""Benchmark: the revenue report with 10,000 tenants × 12 months, and the invoice CSV exports of 100,000 invoices.

Starts a throw-away PostgreSQL, runs the real migrations and COPYs the data in: `--tenants` tenants with an
invoice (plan-fee line + three usage lines) for each of the last 12 months, a mix of paid and open. The report
(page and JSON) is timed through the WSGI app in-process, with the SQL statements of each request counted.
Then `--csv-invoices` more tenants get one invoice each in an older month, and the two exports of that month
are streamed chunk by chunk as a client would read them: rows per second (untraced run) and the peak Python
memory while streaming (a tracemalloc run), also for an export a tenth the size: constant memory means the
two peaks are about the same.

    .venv/bin/python -m bench.reports [--tenants 10000] [--csv-invoices 100000] [--repeat 20]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from datetime import date, datetime, time as dtime, timedelta, timezone

from bench.pages import measure, sign_in

FEES = {"starter": 2900, "pro": 9900, "enterprise": 49900}


def _month(day: date, back: int) -> date:
    y, m = divmod(day.year * 12 + day.month - 1 - back, 12)
    return date(y, m + 1, 1)


def load(conn, first_id: int, tenants: int, months: list[date], seed: int) -> int:
    """COPY tenants [first_id, first_id + tenants) with one invoice and four lines per month; return invoices."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    plans = list(FEES)
    with conn.cursor() as cur:
        with cur.copy("COPY tenants (id, name, slug, plan, billing_email, status, overdue_days, dunning_stage, "
                      "disputed, created_at, updated_at) FROM STDIN") as copy:
            for i in range(first_id, first_id + tenants):
                copy.write_row((i, f"Tenant {i}", f"tenant-{i}", plans[i % 3], f"billing{i}@example.com", "active",
                                0, "ok", False, now, now))
        cur.execute("SELECT coalesce(max(id), 0) FROM invoices")
        invoice_id = cur.fetchone()[0]
        made: list[tuple[int, str, date, date, list[int]]] = []  # for the lines: one COPY at a time per connection
        with cur.copy("COPY invoices (id, tenant_id, period_start, period_end, plan_code, amount_due, amount_paid, "
                      "currency, status, number, issued_at, due_at, paid_at, paid_out_of_band, hard_decline, "
                      "disputed, created_at, updated_at) FROM STDIN") as copy:
            for i in range(first_id, first_id + tenants):
                plan = plans[i % 3]
                for start in months:
                    end = _month(start, -1) - timedelta(days=1)
                    issued = datetime.combine(end + timedelta(days=1), dtime(1), tzinfo=timezone.utc)
                    usage = [rng.randint(0, 3000), rng.randint(0, 1500), rng.randint(0, 800)]
                    amount = FEES[plan] + sum(usage)
                    paid = rng.random() < 0.93
                    invoice_id += 1
                    copy.write_row((invoice_id, i, start, end, plan, amount, amount if paid else 0, "usd",
                                    "paid" if paid else "open", f"SP-{start:%Y-%m}-{i:06d}", issued, issued,
                                    issued + timedelta(hours=rng.randint(1, 200)) if paid else None, False, False,
                                    False, now, now))
                    made.append((invoice_id, plan, start, end, usage))
        with cur.copy("COPY invoice_lines (invoice_id, metric, quantity, used_quantity, included, unit_price, "
                      "amount, description, period_start, period_end) FROM STDIN") as copy:
            for invoice_id_, plan, start, end, usage in made:
                copy.write_row((invoice_id_, None, 1, 1, 0, FEES[plan] / 100, FEES[plan], f"{plan.title()} plan",
                                start, end))
                for metric, cents in zip(("voice_minutes", "sms_outbound", "sms_inbound"), usage, strict=True):
                    copy.write_row((invoice_id_, metric, cents, cents, 0, "0.01", cents, metric.replace("_", " "),
                                    start, end))
        cur.execute("SELECT setval(pg_get_serial_sequence('tenants', 'id'), %s)", (first_id + tenants - 1,))
        cur.execute("SELECT setval(pg_get_serial_sequence('invoices', 'id'), %s)", (invoice_id,))
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.autocommit = False
    return tenants * len(months)


def stream(client, url: str, *, traced: bool) -> tuple[int, int, float, float]:
    """Read a streamed export chunk by chunk: (rows, bytes, seconds, peak traced MiB or 0)."""
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    resp = client.get(url, buffered=False)
    assert resp.status_code == 200, (url, resp.status_code)
    rows = size = 0
    try:
        for chunk in resp.response:
            data = chunk.encode() if isinstance(chunk, str) else chunk
            size += len(data)
            rows += data.count(b"\n")
    finally:
        resp.close()
    elapsed = time.perf_counter() - t0
    peak = 0.0
    if traced:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return rows - 1, size, elapsed, peak  # less the header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--csv-invoices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args, _others = parser.parse_known_args(argv)  # `python -m bench` passes every benchmark the same extras

    from app.extensions import db
    from app.models import Role
    from app.services import clock
    from app.services.tenants import create_user
    from bench.support import migrated_app

    with migrated_app("bench_reports", APP_BASE_URL="http://127.0.0.1:5000") as app:
        today = clock.today()
        months = [_month(today, k) for k in range(12, 0, -1)]  # the 12 months before this one
        raw = db.engine.raw_connection()
        t0 = time.perf_counter()
        invoices = load(raw.driver_connection, 1, args.tenants, months, seed=7)
        raw.close()
        print(f"# loaded {args.tenants} tenants × {len(months)} months = {invoices} invoices (4 lines each) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        create_user("root@example.com", "bench-password", Role.ROOT_ADMIN)
        db.session.commit()
        db.session.remove()

        root = app.test_client()
        sign_in(app, root, "root@example.com")
        label = f"{args.tenants // 1000}k" if args.tenants % 1000 == 0 else str(args.tenants)
        for name, url in (("page", "/admin/reports/revenue?months=12"),
                          ("json", "/api/admin/reports/revenue?months=12")):
            ms, counts, size = measure(app, root, url, {}, args.repeat)
            print(f"# revenue {name:4s} {url:40s} median {ms:6.1f} ms, {max(counts)} statements, "
                  f"{size // 1024} KiB", flush=True)
            print(f"BENCH revenue_report_{name}_{label}_tenants_12_months_median {ms:.1f} ms")
            print(f"BENCH revenue_report_{name}_queries_per_request {max(counts)} queries")

        # The exports: one older month holding --csv-invoices invoices (one per tenant), and a tenth of that.
        big, small = _month(today, 24), _month(today, 25)
        raw = db.engine.raw_connection()
        t0 = time.perf_counter()
        first = args.tenants + 1
        load(raw.driver_connection, first, args.csv_invoices, [big], seed=8)
        load(raw.driver_connection, first + args.csv_invoices, args.csv_invoices // 10, [small], seed=9)
        raw.close()
        print(f"# loaded {args.csv_invoices} + {args.csv_invoices // 10} invoices for the exports "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        n = f"{args.csv_invoices // 1000}k" if args.csv_invoices % 1000 == 0 else str(args.csv_invoices)
        for kind, path in (("invoices", "/admin/reports/invoices.csv"), ("lines", "/admin/reports/invoice-lines.csv")):
            rows, size, seconds, _ = stream(root, f"{path}?period={big:%Y-%m}", traced=False)
            _, _, _, peak = stream(root, f"{path}?period={big:%Y-%m}", traced=True)
            small_rows, _, _, small_peak = stream(root, f"{path}?period={small:%Y-%m}", traced=True)
            print(f"# csv {kind:8s} {rows} rows, {size / 2**20:.1f} MiB in {seconds:.2f} s; peak traced memory "
                  f"{peak:.2f} MiB ({small_peak:.2f} MiB for {small_rows} rows)", flush=True)
            print(f"BENCH csv_{kind}_{n}_invoices_rows_per_s {rows / seconds:.0f} rows/s")
            print(f"BENCH csv_{kind}_{n}_invoices_peak_memory {peak:.2f} MiB")
            print(f"BENCH csv_{kind}_peak_memory_ratio_10x_rows {peak / small_peak:.2f} x")
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
