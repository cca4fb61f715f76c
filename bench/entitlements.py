"""Benchmark: GET /api/entitlements with a service token on ONE gunicorn worker: revalidated (304) and full reads.

Starts a throw-away PostgreSQL and Redis (tests/support/services.py), runs the real migrations, loads `--tenants`
tenants (a tenth of them suspended), issues a service token, and serves the real app as production does
(`gunicorn --config gunicorn.conf.py`, its worker class) with one worker. A few client threads, each on one
keep-alive connection (http.client: on a small machine the clients share the CPUs with the server), then ask for
random tenants: full reads (no validator, 200 with the document) and revalidated reads (If-None-Match with the
tenant's current ETag, 304 without a body), alternating rounds so both see the same machine. Prints
`BENCH entitlements_{full,304}_{rps,p99}` and checks every answer had the expected status.

    .venv/bin/python -m bench.entitlements [--requests 4000] [--clients 4] [--tenants 1000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from tests.support.measure import cpu_seconds, percentile, run_clients

ROOT = Path(__file__).resolve().parent.parent


def _getter(port: int, token: str):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(path: str, etag: str | None = None) -> tuple[int, str | None, bytes]:
        headers = {"Authorization": f"Bearer {token}"}
        if etag:
            headers["If-None-Match"] = etag
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheader("ETag"), body

    return get


def run_round(port: int, token: str, tenant_ids: list[int], etags: dict[int, str] | None, requests_: int,
              clients: int, seed: int) -> tuple[float, list[float], list[int]]:
    """`requests_` reads of random tenants from `clients` connections; with `etags`, revalidations."""
    rng = random.Random(seed)
    picks = [rng.choice(tenant_ids) for _ in range(requests_)]

    def make_send():
        get = _getter(port, token)
        return lambda tenant_id: get(f"/api/entitlements?tenant_id={tenant_id}",
                                     etags[tenant_id] if etags else None)[0]

    return run_clients(picks, clients, make_send)


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (gunicorn's master and worker)."""
    return cpu_seconds(lambda p_id, p: pid in (p_id, p.ppid), cmdlines=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="reads per kind and round")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (keep-alive)")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating full / 304 rounds")
    parser.add_argument("--warmup", type=int, default=300)
    # Lenient: `python -m bench` hands the same extra arguments (e.g. --tenants) to every benchmark.
    args, _unknown = parser.parse_known_args(argv)

    from flask_migrate import upgrade
    from sqlalchemy import text

    from app import create_app
    from bench.support import fresh_database
    from tests.support.services import free_port, redis_server, wait_port

    with fresh_database("bench_entitlements") as database_url, redis_server() as (redis_url, _redis_port):
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url, "SECRET_KEY": "bench",
                          "RATELIMIT_STORAGE_URI": redis_url})
        with app.app_context():
            from app.extensions import db
            from app.services.integrations import create_token
            from app.services.seed import seed_plans

            upgrade()
            seed_plans()
            db.session.execute(text(
                "INSERT INTO tenants (name, slug, plan, status, dunning_stage, created_at, updated_at) "
                "SELECT 'Tenant ' || g, 'tenant-' || g, 'starter', 'active', "
                "CASE WHEN g % 10 = 0 THEN 'suspended' ELSE 'ok' END, now(), now() "
                "FROM generate_series(1, :n) AS g"), {"n": args.tenants})
            db.session.commit()
            tenant_ids = list(db.session.scalars(text("SELECT id FROM tenants ORDER BY id")))
            token = create_token("bench", ["entitlements:read"])[1]
            db.session.execute(text("ANALYZE"))
            db.session.commit()
            db.engine.dispose()

        port = free_port()
        env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, SECRET_KEY="bench",
                   PYTHONPATH=str(ROOT))
        env.pop("STRIPE_SECRET_KEY", None)
        cmd = [str(Path(sys.executable).with_name("gunicorn")), "--workers", "1", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", "--backlog", "2048"]
        if (ROOT / "gunicorn.conf.py").exists():
            cmd[1:1] = ["--config", "gunicorn.conf.py"]
        else:
            cmd.append("app:create_app()")
        server = subprocess.Popen(cmd, cwd=ROOT, env=env)
        results: dict[str, list] = {"full": [0.0, [], [], 0.0], "304": [0.0, [], [], 0.0]}
        try:
            wait_port(port, timeout=30)
            get = _getter(port, token)
            etags, sample = {}, None
            for tenant_id in tenant_ids:  # each tenant's current ETag, as a caching client holds it
                status, etag, body = get(f"/api/entitlements?tenant_id={tenant_id}")
                assert status == 200, status
                etags[tenant_id] = etag
                sample = sample or (json.loads(body) if tenant_id % 10 == 0 else None)
            run_round(port, token, tenant_ids, None, args.warmup, args.clients, seed=0)
            run_round(port, token, tenant_ids, etags, args.warmup, args.clients, seed=1)
            for r in range(args.rounds):
                for kind, validators in (("full", None), ("304", etags)):
                    cpu = server_cpu_seconds(server.pid)
                    elapsed, lat, st = run_round(port, token, tenant_ids, validators, args.requests, args.clients,
                                                 seed=100 + r)
                    results[kind][3] += server_cpu_seconds(server.pid) - cpu
                    results[kind][0] += elapsed
                    results[kind][1].extend(lat)
                    results[kind][2].extend(st)
        finally:
            server.terminate()
            server.wait(30)

    expected = {"full": 200, "304": 304}
    ok = True
    total = args.requests * args.rounds
    print(f"# {args.tenants} tenants, {args.clients} http.client keep-alive clients, 1 gunicorn worker on "
          f"PostgreSQL, {os.cpu_count()} CPUs shared with the clients; {args.rounds} alternating rounds of "
          f"{args.requests} reads per kind", flush=True)
    if sample:
        print(f"# a full answer: {json.dumps(sample)}", flush=True)
    for kind, (elapsed, lat, st, cpu) in results.items():
        bad = [s for s in st if s != expected[kind]]
        ok = ok and not bad and len(st) == total
        print(f"# {kind}: {total} reads in {elapsed:.2f} s, p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
              f"max {max(lat) * 1000:.1f} ms, server CPU {cpu / total * 1000:.2f} ms per read, "
              f"unexpected statuses {len(bad)}", flush=True)
        print(f"BENCH entitlements_{kind}_rps {total / elapsed:.0f} requests/s", flush=True)
        print(f"BENCH entitlements_{kind}_p99 {percentile(lat, 0.99) * 1000:.1f} ms", flush=True)
    if not ok:
        print("# ERROR: some reads did not answer as expected", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
