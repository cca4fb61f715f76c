"""Thin RQ entry points: ids in, one service call. Job ids are deterministic and dash-style."""
from __future__ import annotations

import functools
import logging
import os
from datetime import date, datetime, timedelta

from flask import current_app, has_app_context

log = logging.getLogger(__name__)
_worker_app = None


def job(fn):
    """Run a job inside an app context (the worker's, or one built once per process) and clean up after."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _worker_app
        if has_app_context():
            return _run(fn, args, kwargs)
        if _worker_app is None:
            from app import create_app

            _worker_app = create_app()
        with _worker_app.app_context():
            return _run(fn, args, kwargs)

    return wrapper


def _run(fn, args, kwargs):
    from app.extensions import db

    # RQ forks a work horse per job: never reuse pooled connections inherited from the parent process.
    if getattr(db.engine, "_servicepro_pid", None) != os.getpid():
        db.engine.dispose(close=False)
        db.engine._servicepro_pid = os.getpid()
    try:
        return fn(*args, **kwargs)
    except Exception:
        db.session.rollback()
        raise
    finally:
        db.session.remove()


def enqueue_unique(queue_name: str, func: str, *args, job_id: str, **options):
    """Enqueue unless a job with this id is queued or running; a finished one is replaced. Returns the job."""
    from rq.exceptions import DuplicateJobError, NoSuchJobError
    from rq.job import Job

    from app.extensions import rq

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
            if status in ("queued", "started", "deferred", "scheduled"):
                return existing
            existing.delete()
    raise RuntimeError(f"could not enqueue {job_id}")


def enqueue_sync_customer(tenant_id: int) -> None:
    """Queue creation of the tenant's Stripe customer (tenant creation never waits on Stripe)."""
    try:
        enqueue_unique("billing", "app.jobs.sync_customer", tenant_id, job_id=f"customer-sync-{tenant_id}")
    except Exception:  # noqa: BLE001 - Redis down must not fail tenant creation; the nightly sync backfills
        log.exception("could not queue Stripe customer creation for tenant %s", tenant_id)


@job
def sync_customer(tenant_id: int) -> str | None:
    from app.services.customers import ensure_customer

    return ensure_customer(tenant_id)


@job
def sync_all_customers() -> int:
    from app.services.customers import sync_customers

    return sync_customers().created


@job
def rollup_recent_days(as_of: str | None = None) -> int:
    """Rebuild yesterday's and the day before's rollups (late events land in either)."""
    from app.services.clock import today
    from app.services.usage import rollup_day

    day = date.fromisoformat(as_of) if as_of else today()
    return sum(rollup_day(day - timedelta(days=n)) for n in (1, 2))


@job
def rollup_one_day(day: str) -> int:
    from app.services.usage import rollup_day

    return rollup_day(date.fromisoformat(day))


def scheduler_heartbeat() -> None:
    """Record that the scheduler is alive (read by /healthz)."""
    from app.extensions import rq

    rq.connection.set("servicepro:scheduler-heartbeat", datetime.utcnow().isoformat(), ex=86400)


def app_config(key: str):
    return current_app.config[key]
