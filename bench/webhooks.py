"""Benchmark: Stripe webhook ingestion (verify + store + enqueue + answer) on ONE gunicorn worker over loopback.

Starts a throw-away PostgreSQL and Redis (tests/support/services.py), runs the real migrations, serves the real app
with `gunicorn -w 1 -k gthread --threads N`, then posts N distinct, correctly signed `invoice.paid` events (the
emulator's own event shape, ~4.8 kB of pretty-printed JSON, as Stripe sends) from a few client threads, each with
a keep-alive requests.Session. Reports events/s (wall clock, first request to last answer) and the p99 latency,
and checks that every event was stored once and queued once.

Why gthread: the request is short and mostly waits on PostgreSQL (the commit) and Redis (the enqueue). Threads
overlap those waits inside the one worker and keep client connections alive; the sync worker serves one request at
a time and closes the connection after each, so every event would pay a TCP handshake and all the waiting in line.

    .venv/bin/python -m bench.webhooks [--events 3000] [--clients 4] [--threads 8] [--worker-class gthread]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_bench_webhooks"
TARGET_RATE, TARGET_P99_MS = 500.0, 50.0


def event_template() -> dict:
    """A genuine emulator `invoice.paid` event (the same shape and size Stripe sends)."""
    from stripe_emulator.store import Context, Store

    store, ctx = Store(), Context()
    customer = store.create_customer({"name": "Bench Co", "metadata": {"tenant_id": "1"}}, ctx)
    invoice = store.create_invoice({"customer": customer["id"], "currency": "usd",
                                    "metadata": {"invoice_id": "1", "tenant_id": "1", "period": "2026-10"}}, ctx)
    for amount, text in ((2900, "Starter plan"), (225, "voice_minutes"), (0, "sms_outbound")):
        store.create_invoice_item({"customer": customer["id"], "invoice": invoice["id"], "amount": amount,
                                   "currency": "usd", "description": text}, ctx)
    store.finalize_invoice(invoice["id"], {}, ctx)
    store.pay_invoice(invoice["id"], {"paid_out_of_band": True}, ctx)
    return next(e for e in store.events.values() if e["type"] == "invoice.paid")


def signed_bodies(n: int, prefix: str) -> list[tuple[bytes, dict]]:
    """n distinct events, each signed now (well inside the 300 s tolerance of the run)."""
    from stripe_emulator.webhooks import signature_header

    template = event_template()
    out = []
    for i in range(n):
        event = copy.deepcopy(template)
        event["id"] = f"evt_{prefix}_{i:07d}"
        event["data"]["object"]["id"] = f"in_{prefix}_{i:07d}"
        payload = json.dumps(event, indent=2)
        out.append((payload.encode(), {"Content-Type": "application/json; charset=utf-8",
                                       "Stripe-Signature": signature_header(payload, SECRET)}))
    return out


def post_all(url: str, bodies: list[tuple[bytes, dict]], clients: int) -> tuple[float, list[float], list[int]]:
    """Post every body from `clients` keep-alive sessions; return (wall seconds, latencies in s, statuses)."""
    import requests

    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def run(chunk):
        session = requests.Session()
        session.trust_env = False
        mine_lat, mine_status = [], []
        barrier.wait()
        for body, headers in chunk:
            start = time.perf_counter()
            resp = session.post(url, data=body, headers=headers, timeout=30)
            mine_lat.append(time.perf_counter() - start)
            mine_status.append(resp.status_code)
        with lock:
            latencies.extend(mine_lat)
            statuses.extend(mine_status)

    threads = [threading.Thread(target=run, args=(bodies[k::clients],)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (keep-alive sessions)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads in the one worker")
    parser.add_argument("--worker-class", default="gthread", choices=("gthread", "sync"))
    parser.add_argument("--warmup", type=int, default=300)
    args, _unknown = parser.parse_known_args(argv)  # `python -m bench` passes every benchmark the same extras

    from flask_migrate import upgrade
    from sqlalchemy import create_engine, text

    from app import create_app
    from tests.support.services import free_port, postgres_server, redis_server, wait_port

    with postgres_server() as (pg_base, _pg_port), redis_server() as (redis_url, _redis_port):
        admin = create_engine(f"{pg_base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("CREATE DATABASE bench_webhooks"))
        admin.dispose()
        database_url = f"{pg_base}/bench_webhooks"
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url, "SECRET_KEY": "bench",
                          "RATELIMIT_STORAGE_URI": redis_url})
        with app.app_context():
            upgrade()
            from app.extensions import db

            db.engine.dispose()

        port = free_port()
        env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, SECRET_KEY="bench",
                   STRIPE_WEBHOOK_SECRET=SECRET, PYTHONPATH=str(ROOT))
        env.pop("STRIPE_SECRET_KEY", None)
        cmd = [str(Path(sys.executable).with_name("gunicorn")), "--workers", "1", "--worker-class", args.worker_class,
               "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048"]
        if args.worker_class == "gthread":
            cmd += ["--threads", str(args.threads), "--keep-alive", "30"]
        cmd.append("app:create_app()")
        server = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            wait_port(port, timeout=30)
            url = f"http://127.0.0.1:{port}/webhooks/stripe"
            _t, _l, warm = post_all(url, signed_bodies(args.warmup, "warm"), args.clients)
            assert set(warm) == {200}, f"warm-up answers: {sorted(set(warm))}"
            bodies = signed_bodies(args.events, "bench")
            elapsed, latencies, statuses = post_all(url, bodies, args.clients)
        finally:
            server.terminate()
            server.wait(30)

        bad = [s for s in statuses if s != 200]
        engine = create_engine(database_url)
        with engine.connect() as conn:
            stored = conn.scalar(text("select count(*) from webhook_events where stripe_event_id like 'evt_bench_%'"))
        engine.dispose()
        import redis

        queued = redis.Redis.from_url(redis_url).llen("rq:queue:webhooks")

    rate = args.events / elapsed
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    print(f"# {args.events} signed events, {args.clients} clients, 1 gunicorn worker ({args.worker_class}"
          f"{f', {args.threads} threads' if args.worker_class == 'gthread' else ''}) on PostgreSQL, {os.cpu_count()} "
          f"CPUs shared with the clients; {elapsed:.2f} s; p50 {p50:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
          f"stored {stored}, queued {queued - args.warmup}, non-200 {len(bad)}", flush=True)
    print(f"BENCH webhook_ingest_throughput {rate:.0f} events/s")
    print(f"BENCH webhook_ingest_p99 {p99:.1f} ms")
    print(f"# targets: >= {TARGET_RATE:.0f} events/s ({'met' if rate >= TARGET_RATE else 'MISSED'}), "
          f"p99 <= {TARGET_P99_MS:.0f} ms ({'met' if p99 <= TARGET_P99_MS else 'MISSED'})", flush=True)
    ok = not bad and stored == args.events and queued - args.warmup == args.events
    if not ok:
        print("# ERROR: some events were not answered 200, stored once and queued once", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
