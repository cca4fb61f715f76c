"""The chaos harness: real PostgreSQL, Redis, emulator, web and RQ workers as processes, faults injected."""
from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

from redis import Redis

from tests.support.measure import clock_ticks, proc_stats
from tests.support.services import SmtpSink, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ["billing", "webhooks", "default", "mail"]
#: A tenant's invoice is settled when it is paid, or open with its decline recorded and no charge left pending.
SETTLED_SQL = ("i.status = 'paid' or (i.status = 'open' and i.last_payment_error is not null and not exists "
               "(select 1 from payment_attempts a where a.invoice_id = i.id and a.status = 'pending'))")
#: How often the emulator's request log is read during a run (it keeps 20,000; a month-end makes ~100/s).
REQUEST_POLL_S = 30.0


@dataclass
class Report:
    invariants: list[tuple[str, bool, str]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.invariants) and all(ok for _, ok, _ in self.invariants)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.invariants.append((name, ok, detail))

    def render(self) -> str:
        lines = [f"INVARIANT {name:<34} {'OK' if ok else 'FAIL'}  {detail}" for name, ok, detail in self.invariants]
        lines.append("FAULTS " + " ".join(f"{k}={v}" for k, v in self.faults.items()))
        lines += [f"CHAOS {k} {v}" for k, v in self.figures.items()]
        lines.append("CHAOS RESULT " + ("all invariants hold" if self.ok else "INVARIANTS BROKEN"))
        return "\n".join(lines)


def delivery_attempts(outage_s: float, initial: float = 0.5, cap: float = 20.0) -> int:
    """Delivery tries the emulator needs so that its retries (doubling from `initial`, capped) outlast an outage."""
    attempts, waited, delay = 1, 0.0, initial
    while waited < outage_s + 2 * cap:
        waited += delay
        delay = min(delay * 2, cap)
        attempts += 1
    return max(attempts, 30)


class RestartableRedis:
    """redis-server on a fixed port with an append-only file, so a restart keeps queued jobs (as in production)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sp-chaos-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def restart(self) -> None:
        self.stop()
        time.sleep(0.5)
        self.start()


class RestartablePostgres:
    """A throw-away PostgreSQL cluster (as tests/support/services.postgres_server) that can be restarted."""

    def __init__(self) -> None:
        from tests.support.services import _pg_bin

        self.bindir = _pg_bin()
        self.root = tempfile.mkdtemp(prefix="sp-chaos-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)
            self.prefix = ["runuser", "-u", pw.pw_name, "--"]
        self.env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        subprocess.run(self.prefix + [f"{self.bindir}/initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                                      "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, env=self.env)

    @property
    def base(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(self.prefix + [f"{self.bindir}/pg_ctl", "-D", self.datadir, *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)

    def start(self) -> None:
        # Commits are acknowledged only once in the WAL (synchronous_commit=on, PostgreSQL's default), so a crash
        # loses nothing that was answered — the tests' clusters turn that off. fsync stays off: the restart here
        # kills the server, not the machine, so what reached the kernel survives.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=on -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB")
        self._ctl("-o", opts, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self, down_s: float = 3.0) -> None:
        """Stop (ending every connection, as a crash or a failover does), stay down a moment, start again."""
        self.stop("immediate")
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def _while_db_is_up(read: Callable, default):
    """The harness's own reading of the database, or `default` while PostgreSQL is restarting."""
    from sqlalchemy.exc import DBAPIError

    from app.extensions import db

    try:
        return read()
    except DBAPIError:
        db.session.rollback()
        db.session.remove()
        return default


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its work horse (RQ's horse runs in its own session)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    for p in [pid, *map(int, children.split())]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ChaosRun:
    def __init__(self, tenants: int = 1000, workers: int = 3, seed: int = 7, timeout: float = 1800.0,
                 kills: int | None = None, verbose: bool = True, chaos: bool = True,
                 stripe_rate_limit: float = 25, emulator_rate_limit: float | None = None,
                 dunning: bool = True, on_finish: Callable[[ChaosRun], None] | None = None,
                 stripe_outage_s: float = 60.0, endpoint_outage_s: float = 300.0, pg_restart: bool = True,
                 schedulers: int = 2) -> None:
        self.n_tenants, self.n_workers, self.timeout = tenants, workers, timeout
        self.rng = random.Random(seed)
        self.max_kills = kills if kills is not None else max(3, min(12, tenants // 80))
        self.verbose = verbose
        # chaos=False: the same month-end cycle with no kills, no Redis restart and no faults except Stripe's
        # rate limit (the throughput benchmark).
        self.chaos = chaos
        self.stripe_rate_limit = stripe_rate_limit
        # Stripe's own limit (the emulator's); without chaos a little above our budget unless given.
        self.emulator_rate_limit = emulator_rate_limit
        self.dunning = dunning
        self.on_finish = on_finish  # called with every service still up, after the invariants were checked
        # The harder faults (issue 19), each once, at a point of the run given by the share of tenants settled.
        self.stripe_outage_s = stripe_outage_s if chaos else 0.0
        self.endpoint_outage_s = endpoint_outage_s if chaos else 0.0
        self.pg_restart = pg_restart and chaos
        self.n_schedulers = schedulers
        self.schedulers: list[subprocess.Popen] = []
        self.faults_done: dict[str, float] = {}  # fault → when it ended (monotonic)
        self.fault_log: list[str] = []
        self._requests: dict[tuple, dict] = {}
        self._requests_polled = 0.0
        self.invoices_final_at: float | None = None
        self.done_at: float | None = None
        self.report = Report()
        self.kills = 0
        self.redis_restarts = 0
        self.redrive_times: list[float] = []
        self.workers: list[subprocess.Popen] = []
        self.killed: set[subprocess.Popen] = set()
        self.exits = 0
        self.scheduler_exits = 0

    def log(self, msg: str) -> None:
        line = f"[chaos {time.strftime('%H:%M:%S')}] {msg}"
        if self.verbose:
            print(line, flush=True)
        try:  # beside the processes' logs too, so a cut CI log still has the harness's side of the story
            with open(os.path.join(self.logdir, "harness.log"), "a") as f:
                f.write(line + "\n")
        except (OSError, AttributeError):  # no log directory yet
            pass

    # -- processes ---------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return dict(os.environ, DATABASE_URL=self.db_url, REDIS_URL=self.redis.url, SECRET_KEY="chaos-secret",
                    STRIPE_SECRET_KEY=self.emu.api_key, STRIPE_API_BASE=self.emu.url,
                    STRIPE_WEBHOOK_SECRET=self.emu.webhook_secret, SMTP_URL=self.sink.url,
                    APP_BASE_URL=self.web_url, STRIPE_RATE_LIMIT_PER_S=str(self.rate_limit),
                    STRIPE_MAX_NETWORK_RETRIES="3", SWEEPER_STALE_SECONDS="10", PYTHONUNBUFFERED="1",
                    # A charge caught by the Stripe outage is retried within the run, not 15 minutes later.
                    PAYMENT_RETRY_LATER_SECONDS="20")

    def start_worker(self) -> subprocess.Popen:
        log = open(os.path.join(self.logdir, f"worker-{len(self.workers)}.log"), "a")
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=self.env(), stdout=log,
                                stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def cpu_by_party(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each party of the run that is still alive."""
        tick = clock_ticks()
        # Own CPU and that of children that exited (RQ's forked work horses, worker.py --fork) count too.
        procs = {pid: (p.ppid, p.cmdline, (p.ticks + p.child_ticks) / tick) for pid, p in proc_stats().items()}
        workers = {w.pid for w in self.alive_workers()}
        web = getattr(self, "web", None)
        owners = {"workers": workers, "web": {web.pid} if web else set(),
                  "emulator": {self.emu.process.pid} if self.emu.process else set(),
                  "redis": {self.redis.proc.pid} if self.redis.proc else set()}
        out = {name: 0.0 for name in [*owners, "postgres"]}
        for pid, (ppid, cmdline, cpu) in procs.items():
            for name, pids in owners.items():
                if pid in pids or ppid in pids:
                    out[name] += cpu
                    break
            else:
                if "servicepro_chaos" in cmdline and cmdline.startswith("postgres:"):
                    out["postgres"] += cpu
        times = os.times()
        out["harness"] = times.user + times.system
        return out

    def alive_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    # -- the run -----------------------------------------------------------------------------------------

    def run(self) -> Report:
        with ExitStack() as stack:
            self.logdir = tempfile.mkdtemp(prefix="sp-chaos-logs-")
            self.pg = RestartablePostgres()
            stack.callback(self.pg.close)
            self.pg.start()
            self._create_db(self.pg.base)
            self.redis = RestartableRedis()
            self.redis.start()
            stack.callback(self.redis.stop)
            self.sink = SmtpSink().start()
            stack.callback(self.sink.stop)
            web_port = free_port()
            self.web_url = f"http://127.0.0.1:{web_port}"
            from stripe_emulator.testing import EmulatorProcess

            self.emu = EmulatorProcess(webhook_url=f"{self.web_url}/webhooks/stripe")
            stack.callback(self.emu.stop)
            # Stripe retries a failed delivery for three days; the emulator's patience must outlast the endpoint's
            # outage: 0.5 s doubling to 20 s between tries, for max_attempts tries in all.
            self.emu.set_webhook(f"{self.web_url}/webhooks/stripe", self.emu.webhook_secret,
                                 max_attempts=delivery_attempts(self.endpoint_outage_s), backoff_initial=0.5,
                                 backoff_max=20)
            self.rate_limit = self.stripe_rate_limit  # our shared budget (Stripe: 25/s test mode, 100/s live)
            self.app = self._make_app()
            stack.enter_context(self.app.app_context())
            self._setup_data()
            self.web_port = web_port
            self.start_web()
            stack.callback(self.stop_web)
            for _ in range(self.n_workers):
                self.start_worker()
            stack.callback(self._stop_workers)
            self.schedulers_started_at = time.monotonic()
            for _ in range(self.n_schedulers):  # at once: their start-up reconciliations race
                self.start_scheduler()
            stack.callback(self._stop_schedulers)
            self._quiet_after_setup()
            started = time.monotonic()
            self._chaos_phase()
            self._settle_phase(started)
            if self.dunning:
                self._dunning_phase(started)
            self._check_invariants()
            if self.on_finish is not None:
                self.on_finish(self)
            self.report.figures["duration_s"] = f"{time.monotonic() - started:.1f}"
            self.report.figures["logs"] = self.logdir
        return self.report

    def start_web(self) -> None:
        gunicorn = str(ROOT / ".venv/bin/gunicorn") if (ROOT / ".venv/bin/gunicorn").exists() else "gunicorn"
        self.web = subprocess.Popen([gunicorn, "--bind", f"127.0.0.1:{self.web_port}", "--workers", "2",
                                     "--threads", "8", "app:create_app()"], cwd=ROOT, env=self.env(),
                                    stdout=open(os.path.join(self.logdir, "web.log"), "a"), stderr=subprocess.STDOUT)
        wait_port(self.web_port, timeout=60)

    def stop_web(self) -> None:
        if self.web.poll() is None:
            self.web.terminate()
            try:
                self.web.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(self.web.pid)

    def start_scheduler(self) -> subprocess.Popen:
        log = open(os.path.join(self.logdir, f"scheduler-{len(self.schedulers)}.log"), "a")
        proc = subprocess.Popen([sys.executable, "scheduler.py", "--interval", "5"], cwd=ROOT, env=self.env(),
                                stdout=log, stderr=subprocess.STDOUT)
        self.schedulers.append(proc)
        return proc

    def _stop_schedulers(self) -> None:
        for proc in self.schedulers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.schedulers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _stop_workers(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.terminate()
        for w in self.workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                kill_tree(w.pid)

    def _create_db(self, pg_base: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(f"{pg_base}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE servicepro_chaos"))
        engine.dispose()
        self.db_url = f"{pg_base}/servicepro_chaos"

    def _make_app(self):
        from app import create_app

        return create_app({
            "SQLALCHEMY_DATABASE_URI": self.db_url, "REDIS_URL": self.redis.url,
            "RATELIMIT_STORAGE_URI": self.redis.url, "SECRET_KEY": "chaos-secret",
            "STRIPE_SECRET_KEY": self.emu.api_key, "STRIPE_API_BASE": self.emu.url,
            "STRIPE_WEBHOOK_SECRET": self.emu.webhook_secret, "SMTP_URL": self.sink.url,
            "APP_BASE_URL": self.web_url, "STRIPE_RATE_LIMIT_PER_S": 0, "SWEEPER_STALE_SECONDS": 10,
            "PAYMENT_RETRY_LATER_SECONDS": 20,
        })

    # -- data --------------------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from flask_migrate import upgrade
        from sqlalchemy import insert

        from app.extensions import db
        from app.models import Tenant
        from app.services.seed import seed_plans
        from app.services.usage import record_events, rollup_day

        t0 = time.monotonic()
        upgrade()
        seed_plans()
        today = date.today()
        self.as_of = today.replace(day=1)
        period_last = self.as_of - timedelta(days=1)
        period_first = period_last.replace(day=1)
        self.period = period_first.strftime("%Y-%m")
        created = datetime.combine(period_first - timedelta(days=3), dtime(12), tzinfo=timezone.utc)
        plans = ["starter", "pro", "enterprise"]
        self.kind: dict[int, str] = {}
        rows = []
        for i in range(1, self.n_tenants + 1):
            kind = ("no_customer" if i % 20 == 0 else "declining" if i % 7 == 3 else
                    "no_usage" if i % 10 == 1 else "paying")
            rows.append({"id": i, "name": f"Chaos Tenant {i:05d}", "slug": f"chaos-{i}", "plan": plans[i % 3],
                         "billing_email": f"billing@chaos-{i}.example.com", "status": "active",
                         "created_at": created, "updated_at": created})
            self.kind[i] = kind
        db.session.execute(insert(Tenant), rows)
        db.session.execute(db.text("select setval(pg_get_serial_sequence('tenants','id'), :n)"),
                           {"n": self.n_tenants})
        db.session.commit()

        def with_card(tenant_id: int) -> None:
            from app import stripe_gateway
            from app.services.customers import ensure_customer

            with self.app.app_context():
                customer = ensure_customer(tenant_id)
                card = "pm_card_chargeCustomerFail" if self.kind[tenant_id] == "declining" else "pm_card_visa"
                stripe_gateway.attach_default_card(customer, card, key=f"chaos-card-{tenant_id}")
                db.session.remove()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(with_card, [t for t, k in self.kind.items() if k != "no_customer"]))
        tenants = {t.id: t for t in db.session.scalars(db.select(Tenant))}
        for tenant_id, kind in self.kind.items():
            if kind == "no_usage":
                continue
            events, day = [], period_first
            while day <= period_last:
                for metric, base in (("voice_minutes", 40), ("sms_outbound", 30), ("sms_inbound", 50)):
                    at = datetime.combine(day, dtime(15), tzinfo=timezone.utc)
                    events.append({"id": f"{day}-{metric}", "metric": metric,
                                   "quantity": self.rng.randint(0, base * 4), "occurred_at": at})
                day += timedelta(days=1)
            record_events(tenants[tenant_id], events)
        day = period_first
        while day <= period_last:
            rollup_day(day)
            day += timedelta(days=1)
        db.session.remove()
        self.report.figures["setup_s"] = f"{time.monotonic() - t0:.1f}"
        self.log(f"set up {self.n_tenants} tenants for {self.period} in {time.monotonic() - t0:.1f}s "
                 f"({Counter(self.kind.values())})")

    # -- phases ------------------------------------------------------------------------------------------

    def _check_schedule(self, conn: Redis) -> None:
        """Two schedulers started at once: one schedule (no entry twice, none missing), each tick fired once."""
        from rq_scheduler import Scheduler

        from app.schedule import SCHEDULE

        ids = Counter(job.id for job in Scheduler(connection=conn).get_jobs())
        wanted = {p.id for p in SCHEDULE}
        beats: list[datetime] = []
        for name in os.listdir(self.logdir):
            if name.startswith("worker-"):
                with open(os.path.join(self.logdir, name), errors="replace") as f:
                    for line in f:
                        if "(scheduler-heartbeat)" in line and ": default: app.jobs.scheduler_heartbeat" in line:
                            beats.append(datetime.strptime(line[:16], "%Y-%m-%d %H:%M"))
        # The heartbeat is due every minute: two schedulers that both fired would have run it about twice as often.
        # Runs wait in the default queue behind month-end work and then come in a burst, so count them against
        # the minutes the schedulers have been up rather than minute by minute.
        minutes = int((time.monotonic() - self.schedulers_started_at) // 60)
        self.report.check("one_schedule_each_tick_fired_once",
                          set(ids) == wanted and max(ids.values()) == 1 and len(beats) <= minutes + 1
                          and (bool(beats) or minutes < 2),
                          f"{len(ids)} scheduled jobs for {len(wanted)} declared, {self.n_schedulers} schedulers "
                          f"started at once; the minutely heartbeat ran {len(beats)} times in {minutes} minutes")

    def _conn(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_connect_timeout=2, socket_timeout=5)

    def _enqueue(self, func: str, *args, job_id: str) -> None:
        from app.queue import enqueue_unique

        for _ in range(20):
            try:
                enqueue_unique("default" if "sweep" in func else "billing", func, *args, job_id=job_id)
                return
            except Exception:  # noqa: BLE001 - Redis may be restarting
                time.sleep(0.5)

    def _tick(self) -> None:
        self._enqueue("app.jobs.invoice_due_tenants", self.as_of.isoformat(), job_id="chaos-tick")
        self._enqueue("app.jobs.sweep_stuck", job_id="chaos-sweep")

    def _progress(self) -> tuple[int, int]:
        """(tenants settled, tenants total): settled = invoice paid, or open with a finished failed attempt."""
        return _while_db_is_up(self._count_settled, (0, self.n_tenants))

    def _count_settled(self) -> tuple[int, int]:
        from app.extensions import db

        settled = db.session.scalar(db.text(f"select count(*) from invoices i where {SETTLED_SQL}"))
        db.session.rollback()
        return settled, self.n_tenants

    def _kill_one(self) -> None:
        from rq import Worker

        alive = self.alive_workers()
        if not alive:
            return
        busy: dict[int, str] = {}
        try:
            for w in Worker.all(connection=self._conn()):
                job_id = w.get_current_job_id()
                if job_id:
                    busy[w.pid] = job_id
        except Exception:  # noqa: BLE001
            pass
        # Prefer a worker in the middle of a job: that is the case the abandoned-job watch must heal.
        candidates = [w for w in alive if w.pid in busy] or alive
        victim = self.rng.choice(candidates)
        current = busy.get(victim.pid)
        kill_tree(victim.pid)
        victim.wait(10)
        self.killed.add(victim)
        self.kills += 1
        self.log(f"SIGKILL worker pid {victim.pid} (running {current or 'nothing'})")
        if current:
            self.pending_redrive[current] = time.monotonic()
        self.start_worker()

    def _supervise(self) -> None:
        """Restart workers and schedulers that exited on their own, as a process manager would."""
        for w in list(self.workers):
            if w.poll() is not None and w not in self.killed:
                self.killed.add(w)
                self.exits += 1
                self.log(f"worker pid {w.pid} exited ({w.returncode}); restarting")
                self.start_worker()
        for proc in list(self.schedulers):
            if proc.poll() is not None and proc not in self.killed:
                self.killed.add(proc)
                self.scheduler_exits += 1
                self.log(f"scheduler pid {proc.pid} exited ({proc.returncode}); restarting")
                self.start_scheduler()

    def _watch_redrives(self) -> None:
        from rq.job import Job

        for job_id, killed_at in list(self.pending_redrive.items()):
            try:
                status = Job.fetch(job_id, connection=self._conn()).get_status()
            except Exception:  # noqa: BLE001
                status = None
            if status in ("queued", "finished"):  # re-driven (back on a queue) or already done again
                self.redrive_times.append(time.monotonic() - killed_at)
                del self.pending_redrive[job_id]

    def _chaos_phase(self) -> None:
        self.pending_redrive: dict[str, float] = {}
        if self.chaos:
            # The emulator's limit sits below our shared budget, so real 429s happen and are backed off.
            self.emu.set_faults(error_rate=0.03, rate_limit_per_s=self.rate_limit - 5, latency_ms=15,
                                disconnect_rate=0.01, seed=self.rng.randint(0, 10**6))
        else:
            # Stripe's limit at or a little above our budget (ours is the one that must hold).
            self.emu.set_faults(rate_limit_per_s=self.emulator_rate_limit or self.rate_limit + 1)
        self.measure_from = time.time()
        self._t0 = time.monotonic()
        self.cpu_at_start = self.cpu_by_party()
        self.billing_drained_at: float | None = None
        self._tick()
        next_kill = time.monotonic() + self.rng.uniform(2, 5)
        next_tick = time.monotonic() + 5
        restarted = False
        deadline = time.monotonic() + self.timeout / 2
        while time.monotonic() < deadline:
            time.sleep(0.25)
            self._poll_requests()
            self._watch_redrives()
            settled, total = self._progress()
            if not self.chaos:
                if self.billing_drained_at is None and time.time() - self.measure_from > 3 and self._billing_idle():
                    self.billing_drained_at = time.time()
                if self.invoices_final_at is None and settled >= total:
                    self.invoices_final_at = time.time()
                if self.invoices_final_at is not None and self._webhooks_done():
                    self.done_at = time.time()
                    self.cpu_at_done = self.cpu_by_party()
                    break
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + 5
                    self.log(f"progress {settled}/{total}")
                continue
            if not restarted and settled >= total * 0.3:
                self.log("restarting Redis")
                self.redis.restart()
                self.redis_restarts += 1
                restarted = True
            self._harder_faults(settled / total)
            self._supervise()
            # Kills are spread over the run: the k-th one waits until k/(kills+1) of the tenants are settled.
            kill_due = settled >= total * self.kills / (self.max_kills + 1)
            if self.kills < self.max_kills and time.monotonic() >= next_kill and settled > 0 and kill_due:
                self._kill_one()
                next_kill = time.monotonic() + self.rng.uniform(2, 6)
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + 5
                self.log(f"progress {settled}/{total}, kills {self.kills}")
            faults_over = self.kills >= self.max_kills and restarted and self._harder_faults_over()
            if faults_over and (settled >= total * 0.9 or self._harder_faults_over(quiet_s=30)):
                break
        faults = self.emu.faults()
        self.emu.clear_faults()
        self.fault_counters = faults
        self.log(f"faults stopped: {faults}")

    # -- the harder faults (issue 19) ---------------------------------------------------------------------

    def _harder_faults(self, share: float) -> None:
        """Start or end each harder fault when the run gets to it (by share of tenants settled, then by time)."""
        now = time.monotonic()
        started = getattr(self, "_fault_started", {})
        self._fault_started = started
        if self.stripe_outage_s and "stripe_outage" not in started and share >= 0.15:
            self._fault("stripe_outage", f"Stripe down for {self.stripe_outage_s:.0f} s (every API request 500)")
            self.emu.set_faults(error_rate=1.0)
        if "stripe_outage" in started and "stripe_outage" not in self.faults_done \
                and now - started["stripe_outage"] >= self.stripe_outage_s:
            self.emu.set_faults(error_rate=0.03)
            self._fault_over("stripe_outage", "Stripe is back")
        if self.pg_restart and "pg_restart" not in started and share >= 0.45:
            self._fault("pg_restart", "restarting PostgreSQL (every connection dropped, 3 s down)")
            self.pg.restart()
            self._fault_over("pg_restart", "PostgreSQL is back")
        if self.endpoint_outage_s and "endpoint_outage" not in started and share >= 0.55:
            self._fault("endpoint_outage", f"webhook endpoint down for {self.endpoint_outage_s:.0f} s (web stopped)")
            self.stop_web()
        if "endpoint_outage" in started and "endpoint_outage" not in self.faults_done \
                and now - started["endpoint_outage"] >= self.endpoint_outage_s:
            self.start_web()
            self._fault_over("endpoint_outage", "webhook endpoint is back")

    def _fault(self, name: str, what: str) -> None:
        self._fault_started[name] = time.monotonic()
        self.fault_log.append(f"{time.monotonic() - self._t0:.0f}s {what}")
        self.log(what)

    def _fault_over(self, name: str, what: str) -> None:
        self.faults_done[name] = time.monotonic()
        self.fault_log.append(f"{time.monotonic() - self._t0:.0f}s {what}")
        self.log(what)

    def _harder_faults_over(self, quiet_s: float = 0.0) -> bool:
        """Every harder fault this run injects has happened and ended (at least quiet_s ago)."""
        wanted = [name for name, on in (("stripe_outage", self.stripe_outage_s), ("pg_restart", self.pg_restart),
                                        ("endpoint_outage", self.endpoint_outage_s)) if on]
        now = time.monotonic()
        return all(name in self.faults_done and now - self.faults_done[name] >= quiet_s for name in wanted)

    def _quiet_after_setup(self, timeout: float = 300.0) -> None:
        """Let the set-up's own Stripe events (customers, cards) be delivered and processed before month-end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hooks = self.emu.webhook_status()
            if hooks.get("pending", 0) == 0 and self._idle():
                return
            time.sleep(0.5)

    def requests_seen(self) -> list[dict]:
        """Every API request the emulator logged during the run, oldest first (collected as it went along).

        The emulator keeps only its last 20,000 requests, fewer than a large month-end makes: the log is read
        every REQUEST_POLL_S while the run goes on (a fraction of what it holds by then) and merged here.
        """
        try:
            fresh = self.emu.requests()
        except Exception:  # noqa: BLE001 - the next poll (or the final one) catches up
            fresh = []
        for entry in fresh:
            key = (entry.get("time"), entry.get("method"), entry.get("path"), entry.get("idempotency_key"),
                   entry.get("status"), entry.get("duration_ms"))
            self._requests.setdefault(key, entry)
        self._requests_polled = time.monotonic()
        return sorted(self._requests.values(), key=lambda r: r.get("time") or 0)

    def _poll_requests(self) -> None:
        if time.monotonic() - self._requests_polled >= REQUEST_POLL_S:
            self.requests_seen()

    def _webhooks_done(self) -> bool:
        """Every event Stripe created so far was delivered and its row processed (or ignored)."""
        return _while_db_is_up(self._all_webhooks_processed, False)

    def _all_webhooks_processed(self) -> bool:
        from app.extensions import db

        hooks = self.emu.webhook_status()
        if hooks.get("pending", 0):
            return False
        left = db.session.scalar(db.text(
            "select count(*) from webhook_events where status not in ('processed', 'ignored')"))
        db.session.rollback()
        return left == 0

    def _billing_idle(self) -> bool:
        from rq import Queue
        from rq.registry import StartedJobRegistry

        conn = self._conn()
        return (Queue("billing", connection=conn).count == 0
                and StartedJobRegistry("billing", connection=conn).count == 0)

    def _idle(self) -> bool:
        from rq import Queue
        from rq.registry import StartedJobRegistry

        conn = self._conn()
        return all(Queue(q, connection=conn).count == 0 and StartedJobRegistry(q, connection=conn).count == 0
                   for q in QUEUES)

    def _settled(self) -> bool:
        return _while_db_is_up(self._all_settled, False)

    def _all_settled(self) -> bool:
        from app.extensions import db

        settled, total = self._progress()
        pending_events = db.session.scalar(db.text(
            "select count(*) from webhook_events where status not in ('processed', 'ignored')"))
        pending_mail = db.session.scalar(db.text("select count(*) from outbox_emails where status = 'pending'"))
        db.session.rollback()
        hooks = self.emu.webhook_status()
        in_flight = hooks.get("pending", 0) + hooks.get("in_flight", 0) if isinstance(hooks, dict) else 0
        idle = self._idle()
        unsettled = ""
        if settled < total:
            rows = db.session.execute(db.text(f"""
                select i.tenant_id, i.status, i.next_payment_attempt_at,
                       (select string_agg(a.status, ',' order by a.id) from payment_attempts a
                         where a.invoice_id = i.id)
                  from invoices i where not ({SETTLED_SQL}) order by i.tenant_id limit 5""")).all()
            db.session.rollback()
            unsettled = "; not settled: " + ", ".join(
                f"tenant {t} {status} attempts [{attempts or ''}] next try {nxt}" for t, status, nxt, attempts in rows)
        self.last_state = (f"settled {settled}/{total}, webhook rows pending {pending_events}, mail pending "
                           f"{pending_mail}, deliveries in flight {in_flight}, queues idle {idle}{unsettled}")
        return settled == total and pending_events == 0 and pending_mail == 0 and in_flight == 0 and idle

    def _settle_phase(self, started: float, label: str = "settle") -> None:
        deadline = time.monotonic() + self.timeout / 2
        next_tick = 0.0
        while time.monotonic() < deadline:
            self._poll_requests()
            self._watch_redrives()
            self._supervise()
            if time.monotonic() >= next_tick:
                self._tick()
                self._enqueue("app.jobs.flush_outbox", job_id="chaos-flush")
                next_tick = time.monotonic() + 5
            time.sleep(1)
            if self._settled():
                self.log(f"{label}: settled after {time.monotonic() - started:.0f}s")
                return
        self.log(f"{label}: did not settle in time ({self.last_state})")

    def _dunning_phase(self, started: float) -> None:
        """Run the dunning pass twice for a date past the reminder threshold, as the nightly job would."""
        as_of = (date.today() + timedelta(days=self.app.config["DUNNING_REMINDER_DAYS"] + 1)).isoformat()
        self._enqueue("app.jobs.dunning_pass", as_of, job_id="chaos-dunning-1")
        self._settle_phase(started, "dunning-1")
        self._enqueue("app.jobs.dunning_pass", as_of, job_id="chaos-dunning-2")
        self._settle_phase(started, "dunning-2")
        self.emu.flush_webhooks(30)

    # -- invariants --------------------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        from rq import Queue
        from rq.registry import StartedJobRegistry

        from app.extensions import db

        r = self.report
        q = lambda sql: db.session.execute(db.text(sql)).all()  # noqa: E731
        per_tenant = q("select t.id, count(i.id) from tenants t left join invoices i on i.tenant_id = t.id "
                       "and i.status <> 'void' group by t.id")
        wrong = [(t, c) for t, c in per_tenant if c != 1]
        r.check("one_invoice_per_tenant_period", not wrong,
                f"{len(per_tenant)} tenants, {len(wrong)} without exactly one non-void invoice {wrong[:5]}")

        self.request_log = self.requests_seen()
        charges = self.emu.charges()
        per_invoice = Counter(c["invoice"] for c in charges)
        twice = [i for i, n in per_invoice.items() if n > 1]
        paid = {row[0] for row in q("select stripe_invoice_id from invoices where status = 'paid'")}
        missing = paid - set(per_invoice)
        extra = set(per_invoice) - paid
        r.check("no_invoice_charged_twice", not twice, f"{len(charges)} charges, {len(twice)} invoices charged twice")
        r.check("charges_equal_paid_invoices", not missing and not extra,
                f"{len(paid)} paid invoices; charged-not-paid {len(extra)}, paid-not-charged {len(missing)}")
        # Issue 17: money is conserved — what Stripe charged less what it refunded is what our invoices say was paid.
        net = sum(c["amount"] - c.get("amount_refunded", 0) for c in charges)
        ours = q("select coalesce(sum(amount_paid - amount_refunded), 0) from invoices "
                 "where not paid_out_of_band")[0][0]
        r.check("money_conserved", net == ours,
                f"charged − refunded in Stripe {net}, paid − refunded on invoices {ours}")

        status = dict(q("select tenant_id, status from invoices where status <> 'void'"))
        bad = [t for t, k in self.kind.items()
               if (k in ("paying", "no_usage") and status.get(t) != "paid")
               or (k in ("declining", "no_customer") and status.get(t) != "open")]
        r.check("every_tenant_in_expected_state", not bad,
                f"paying→paid, declining/no card→open with error; {len(bad)} off {bad[:5]}")

        events = self.emu.events()
        stored = q("select stripe_event_id, status from webhook_events")
        stored_ids = Counter(e for e, _ in stored)
        not_done = [e for e, s in stored if s not in ("processed", "ignored")]
        lost = {e["id"] for e in events} - set(stored_ids)
        gave_up = self.emu.webhook_status().get("failed", 0)
        r.check("every_webhook_applied_once", not not_done and not lost and max(stored_ids.values(), default=1) == 1,
                f"{len(events)} events sent, {len(stored)} stored, {len(lost)} lost ({gave_up} deliveries given up "
                f"by the sender), {len(not_done)} unprocessed")

        sent = Counter((m["X-Envelope-To"], m["Subject"]) for m in self.sink.messages)
        dupes = [k for k, n in sent.items() if n > 1]
        outbox = dict(q("select status, count(*) from outbox_emails group by status"))
        reminders = sum(1 for m in self.sink.messages if "reminder" in (m["Subject"] or "").lower())
        r.check("every_email_sent_once", not dupes and outbox.get("pending", 0) == 0,
                f"{len(self.sink.messages)} emails ({reminders} reminders), {len(dupes)} duplicates, outbox {outbox}")

        conn = self._conn()
        stuck = {name: StartedJobRegistry(name, connection=conn).count for name in QUEUES}
        queued = {name: Queue(name, connection=conn).count for name in QUEUES}
        r.check("no_job_stuck_in_started", sum(stuck.values()) == 0 and sum(queued.values()) == 0,
                f"started {stuck}, queued {queued}")
        db.session.rollback()

        if self.n_schedulers:
            self._check_schedule(conn)
        f = getattr(self, "fault_counters", {}) or {}
        counters = f.get("counters", f)
        r.faults = {"worker_kills": self.kills, "worker_exits": self.exits, "redis_restarts": self.redis_restarts,
                    "pg_restarts": int("pg_restart" in self.faults_done),
                    "stripe_outage_s": round(self.stripe_outage_s) if "stripe_outage" in self.faults_done else 0,
                    "endpoint_outage_s": round(self.endpoint_outage_s) if "endpoint_outage" in self.faults_done else 0,
                    "schedulers": self.n_schedulers, "scheduler_exits": self.scheduler_exits,
                    "http_500": counters.get("errors_500", 0), "http_429": counters.get("rate_limited_429", 0),
                    "disconnects": counters.get("disconnects", 0)}
        hooks = self.emu.webhook_status()
        r.figures["webhook_deliveries"] = (f"{hooks.get('delivered', 0)} delivered, {hooks.get('retries', 0)} retries, "
                                           f"{hooks.get('failed', 0)} given up")
        if self.fault_log:
            r.figures["fault_timeline"] = "; ".join(self.fault_log)
        if self.redrive_times:
            r.figures["redrive_after_kill_s"] = (f"median {statistics.median(self.redrive_times):.1f} "
                                                 f"max {max(self.redrive_times):.1f} (n={len(self.redrive_times)})")
