"""The one module that owns RQ: job ids, unique enqueue, one enqueue function per job, job status, the monitor.

Whoever enqueues owns the job id: deduplication depends on it, so each id is spelled once, here. Services call
the named functions below and never build a `Queue` or an id themselves. Jobs are named by their dotted path in
app/jobs.py (queued jobs and the schedule keep those names), never imported: services → queue, jobs → services.
Ids are dash-style: RQ rejects `:`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flask import current_app
from redis import Redis
from rq import Queue, Worker
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from app.extensions import rq

log = logging.getLogger(__name__)

# -- the jobs, by the dotted names RQ stores (never rename one: queued jobs and the schedule refer to it) -------

INVOICE_TENANT = "app.jobs.invoice_tenant"
CHARGE_INVOICE = "app.jobs.charge_invoice"
RETRY_DUE_PAYMENTS = "app.jobs.retry_due_payments"
FLUSH_OUTBOX = "app.jobs.flush_outbox"
SYNC_CUSTOMER = "app.jobs.sync_customer"
SYNC_CUSTOMER_EMAIL = "app.jobs.sync_customer_email"
PROCESS_WEBHOOK_EVENT = "app.jobs.process_webhook_event"
DRAIN_WEBHOOK_EVENTS = "app.jobs.drain_webhook_events"
DELIVER_ENTITLEMENT_EVENTS = "app.integrations.jobs.deliver_entitlement_events"

WEBHOOKS_QUEUE = "webhooks"
HEARTBEAT_KEY = "servicepro:scheduler-heartbeat"
#: States in which a job will still run (or is running): enqueueing its id again returns it instead.
ACTIVE = ("queued", "started", "deferred", "scheduled")


# -- job ids -----------------------------------------------------------------------------------------------

def invoice_job_id(tenant_id: int, period: str, run_id: int | None = None) -> str:
    """A tenant's invoice job for a month: one id for the monthly tick, a force-run and a webhook hand-over."""
    # A billing run's jobs carry the run: each run counts its own tenants, even for a month already queued.
    return f"invoice-{tenant_id}-{period}" + (f"-run-{run_id}" if run_id is not None else "")


def charge_job_id(invoice_id: int, trigger: str) -> str:
    """An invoice's charge job; a person's retry has its own id, so a queued stuck-rows charge never swallows it."""
    return f"charge-{invoice_id}-manual" if trigger == "manual" else f"charge-{invoice_id}"


def webhook_job_id(row_id: int) -> str:
    return f"webhook-{row_id}"


def webhook_drainer_job_id(slot: int, tag: str) -> str:
    return f"webhook-drain-{slot}-{tag}"


def customer_sync_job_id(tenant_id: int) -> str:
    return f"customer-sync-{tenant_id}"


def customer_email_job_id(tenant_id: int) -> str:
    return f"customer-email-{tenant_id}"


FORCE_RUN = "force_run"  # the trigger of a root admin's invoice job for one tenant and month
_LATEST_FORCE_RUN_TTL = 3600  # as long as enqueue_unique keeps a finished job's result (result_ttl)


def _latest_force_run_key(tenant_id: int) -> str:
    return f"servicepro:force-run-last:{tenant_id}"


PAYMENT_RETRIES_SWEEP_ID = "payment-retries-sweep"
OUTBOX_FLUSH_SWEEP_ID = "outbox-flush-sweep"
ENTITLEMENTS_DELIVER_ID = "entitlements-deliver"


# -- enqueueing --------------------------------------------------------------------------------------------

def enqueue_unique(queue_name: str, func: str, *args, job_id: str, **options) -> Job:
    """Enqueue unless a job with this id is queued or running; a finished one is replaced. Returns the job."""
    queue = rq.queue(queue_name)
    options.setdefault("result_ttl", 3600)
    options.setdefault("failure_ttl", 7 * 86400)
    options.setdefault("job_timeout", 600)
    for _ in range(3):
        try:
            return queue.enqueue(func, *args, job_id=job_id, unique=True, **options)
        except DuplicateJobError:
            try:
                existing = Job.fetch(job_id, connection=rq.connection)
            except NoSuchJobError:
                continue
            status = existing.get_status(refresh=True)
            if status in ACTIVE:
                return existing
            existing.delete()
    raise RuntimeError(f"could not enqueue {job_id}")


def enqueue_invoice(tenant_id: int, period: str, trigger: str, run_id: int | None = None) -> str:
    """Queue a tenant's invoice-and-charge job for a month (or find the one queued or running); return its id.

    A force-run (trigger "force_run") is remembered as the tenant's latest (see latest_force_runs).
    """
    args = (tenant_id, period, trigger) if run_id is None else (tenant_id, period, trigger, run_id)
    job_id = enqueue_unique("billing", INVOICE_TENANT, *args, job_id=invoice_job_id(tenant_id, period, run_id)).id
    if trigger == FORCE_RUN:
        # So the pages show this force-run again after a reload, whichever month they offer by default.
        rq.connection.set(_latest_force_run_key(tenant_id), period, ex=_LATEST_FORCE_RUN_TTL)
    return job_id


def enqueue_charge(invoice_id: int, trigger: str) -> str:
    """Queue a charge of one open invoice; return the job's id."""
    return enqueue_unique("billing", CHARGE_INVOICE, invoice_id, trigger, job_id=charge_job_id(invoice_id, trigger)).id


def enqueue_payment_retries() -> str:
    """Queue the due-payments retry pass now (the stuck-rows pass's nudge; the hourly schedule runs it too)."""
    return enqueue_unique("billing", RETRY_DUE_PAYMENTS, job_id=PAYMENT_RETRIES_SWEEP_ID).id


def enqueue_outbox_flush() -> str:
    """Queue sending the pending mail now (the stuck-rows pass's nudge; the schedule flushes every minute too)."""
    return enqueue_unique("mail", FLUSH_OUTBOX, job_id=OUTBOX_FLUSH_SWEEP_ID).id


def enqueue_sync_customer(tenant_id: int) -> None:
    """Queue creation of the tenant's Stripe customer (tenant creation never waits on Stripe)."""
    try:
        enqueue_unique("billing", SYNC_CUSTOMER, tenant_id, job_id=customer_sync_job_id(tenant_id))
    except Exception:  # noqa: BLE001 - Redis down must not fail tenant creation; the nightly sync backfills
        log.exception("could not queue Stripe customer creation for tenant %s", tenant_id)


def enqueue_customer_email(tenant_id: int) -> bool:
    """Queue copying the tenant's billing email to its Stripe customer; False when the queue is unreachable."""
    try:
        enqueue_unique("billing", SYNC_CUSTOMER_EMAIL, tenant_id, job_id=customer_email_job_id(tenant_id))
    except Exception:  # noqa: BLE001 - Redis down must not fail the edit; the tenant is told to save again later
        log.exception("could not queue the Stripe customer email update for tenant %s", tenant_id)
        return False
    return True


def enqueue_entitlements_delivery() -> str:
    """Queue the entitlements deliverer (one at a time: a run in progress is returned)."""
    return enqueue_unique("default", DELIVER_ENTITLEMENT_EVENTS, job_id=ENTITLEMENTS_DELIVER_ID, result_ttl=300).id


def enqueue_webhook_event(row_id: int) -> str:
    """Queue one stored webhook event's own processing job (unless it is queued or running); return its id."""
    return enqueue_unique(WEBHOOKS_QUEUE, PROCESS_WEBHOOK_EVENT, row_id, job_id=webhook_job_id(row_id)).id


def start_webhook_drainer(connection: Redis, slot: int, tag: str) -> str:
    """Queue drainer `slot`'s job on a given connection (webhook intake runs outside any app context)."""
    return Queue(WEBHOOKS_QUEUE, connection=connection).enqueue(
        DRAIN_WEBHOOK_EVENTS, slot, job_id=webhook_drainer_job_id(slot, tag), result_ttl=600,
        failure_ttl=7 * 86400, job_timeout=600).id


# -- job status --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobState:
    """What RQ still knows of one job: its status and, once finished, what it returned."""

    id: str
    status: str  # queued, started, deferred, scheduled, finished, failed, stopped, canceled
    result: Any = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _state(job: Job) -> JobState:
    status = job.get_status(refresh=False)
    status = str(getattr(status, "value", status) or "queued")  # rq's JobStatus enum, or a plain string
    return JobState(job.id, status, job.return_value() if status == "finished" else None)


def job_state(job_id: str) -> JobState | None:
    """The state of a job by id, or None when RQ no longer knows it (never queued, or its result expired)."""
    try:
        return _state(Job.fetch(job_id, connection=rq.connection))
    except NoSuchJobError:
        return None


def job_states(job_ids: list[str]) -> list[JobState | None]:
    """The states of many jobs in one round trip, in order (None where RQ no longer knows the job)."""
    jobs = Job.fetch_many(job_ids, connection=rq.connection) if job_ids else []
    return [_state(job) if job is not None else None for job in jobs]


def latest_force_runs(tenant_ids: list[int]) -> dict[int, tuple[str, JobState]]:
    """Each tenant's latest force-run RQ still knows, as (month, state): two round trips for any number."""
    if not tenant_ids:
        return {}
    periods = rq.connection.mget([_latest_force_run_key(t) for t in tenant_ids])
    wanted = [(t, p.decode()) for t, p in zip(tenant_ids, periods, strict=True) if p]
    states = job_states([invoice_job_id(t, p) for t, p in wanted])
    return {t: (p, state) for (t, p), state in zip(wanted, states, strict=True) if state is not None}


# -- the scheduler's heartbeat and the root admins' job monitor ---------------------------------------------

def record_scheduler_heartbeat() -> None:
    """Record that the scheduler is alive (read by /healthz and the job monitor)."""
    rq.connection.set(HEARTBEAT_KEY, datetime.now(timezone.utc).replace(tzinfo=None).isoformat(), ex=86400)


def scheduler_heartbeat_age(now: datetime | None = None) -> float | None:
    """Seconds since the scheduler's last heartbeat (one decimal), or None if it was never seen."""
    beat = rq.connection.get(HEARTBEAT_KEY)
    if not beat:
        return None
    at = datetime.fromisoformat(beat.decode()).replace(tzinfo=timezone.utc)
    return round(((now or datetime.now(timezone.utc)) - at).total_seconds(), 1)


@dataclass
class QueueStats:
    name: str
    queued: int
    started: int
    failed: int
    scheduled: int


@dataclass
class Snapshot:
    queues: list[QueueStats] = field(default_factory=list)
    workers: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    scheduler_heartbeat_age_s: float | None = None


def snapshot(failed_limit: int = 25) -> Snapshot:
    """Queue depths, live workers, the most recent failed jobs and the scheduler heartbeat."""
    conn = rq.connection
    snap = Snapshot()
    for name in current_app.config["RQ_QUEUES"]:
        queue = Queue(name, connection=conn)
        failed = FailedJobRegistry(queue=queue)
        snap.queues.append(QueueStats(name, queue.count, StartedJobRegistry(queue=queue).count, failed.count,
                                      ScheduledJobRegistry(queue=queue).count))
        for job_id in failed.get_job_ids(0, failed_limit - 1):
            job = Job.fetch(job_id, connection=conn) if Job.exists(job_id, connection=conn) else None
            if job is not None:
                last_line = (job.exc_info or "").strip().splitlines()[-1:] or [""]
                snap.failed.append({"id": job.id, "queue": name, "func": job.func_name, "error": last_line[0][:300],
                                    "ended_at": job.ended_at})
    for worker in Worker.all(connection=conn):
        snap.workers.append({"name": worker.name, "state": worker.get_state(), "host": worker.hostname,
                             "pid": worker.pid, "current_job": worker.get_current_job_id(),
                             "last_heartbeat": worker.last_heartbeat, "queues": ", ".join(worker.queue_names())})
    snap.scheduler_heartbeat_age_s = scheduler_heartbeat_age()
    return snap


def queue_depths() -> dict[str, int]:
    """How many jobs wait on each configured queue."""
    return {name: rq.queue(name).count for name in current_app.config["RQ_QUEUES"]}


def requeue_failed(job_id: str) -> bool:
    """Put a failed job back on its queue; False when there is no such failed job."""
    conn = rq.connection
    if not Job.exists(job_id, connection=conn):
        return False
    job = Job.fetch(job_id, connection=conn)
    if job.get_status() != "failed":
        return False
    FailedJobRegistry(job.origin, connection=conn).requeue(job_id)
    return True
