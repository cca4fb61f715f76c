"""Thin RQ entry points: ids in, one service call.

Queued jobs and the schedule name these functions by their dotted path (`app.jobs.invoice_tenant`), so a name
never changes. app/queue.py builds the job ids and enqueues them; services never import this module.
"""
from __future__ import annotations

import functools
import inspect
import os
from datetime import date, timedelta

from flask import has_app_context

_worker_app = None


def job(fn):
    """Run a job inside an app context (the worker's, or one built once per process) and clean up after."""

    takes_tenant = "tenant_id" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _worker_app
        from app.logs import log_context

        tenant_id = kwargs.get("tenant_id", args[0] if takes_tenant and args else None)
        with log_context(tenant_id=tenant_id):
            if has_app_context():  # inline (tests, CLI): the caller owns the session
                return fn(*args, **kwargs)
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
    from app.workers import job_lease

    try:
        with job_lease():
            return fn(*args, **kwargs)
    except Exception:
        db.session.rollback()
        raise
    finally:
        db.session.remove()


@job
def sync_customer(tenant_id: int) -> str | None:
    from app.services.customers import ensure_customer

    return ensure_customer(tenant_id)


@job
def sync_customer_email(tenant_id: int) -> str | None:
    from app.services.accounts import push_billing_email

    return push_billing_email(tenant_id)


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


@job
def scheduler_heartbeat() -> None:
    """Record that the scheduler is alive (read by /healthz)."""
    from app.queue import record_scheduler_heartbeat

    record_scheduler_heartbeat()


# -- invoices and payments (app/services/invoicing.py, app/services/payments.py) --------------------------

@job
def invoice_due_tenants(as_of: str | None = None) -> int:
    """The monthly reconciler: rebuild yesterday's rollups, then fan out one job per un-invoiced tenant."""
    from app.services.invoicing import run_monthly_tick

    return run_monthly_tick(date.fromisoformat(as_of) if as_of else None)


@job
def invoice_tenant(tenant_id: int, period: str, trigger: str = "scheduled", run_id: int | None = None):
    """Generate (or find) one tenant's invoice for a period and charge it."""
    from app.services.invoicing import invoice_and_charge

    return invoice_and_charge(tenant_id, period, trigger=trigger, run_id=run_id)


@job
def charge_invoice(invoice_id: int, trigger: str = "retry"):
    from app.services.payments import charge_invoice as charge

    return charge(invoice_id, trigger=trigger).status


@job
def retry_due_payments() -> int:
    from app.services.payments import retry_due_payments as retry

    return retry()


@job
def retry_tenant_open_invoices(tenant_id: int, trigger: str = "card_updated") -> int:
    from app.services.payments import retry_open_invoices

    return retry_open_invoices(tenant_id, trigger=trigger)


# -- webhooks and reconciliation (app/services/webhooks/processing.py, app/services/reconciliation.py) -----

@job
def process_webhook_event(event_row_id: int) -> str:
    from app.services.webhooks.processing import process_event

    return process_event(event_row_id)


@job
def drain_webhook_events(slot: int) -> int:
    from app.services.webhooks.processing import drain

    return drain(slot)


@job
def retry_failed_webhooks() -> int:
    from app.services.webhooks.processing import retry_failed

    return retry_failed()


@job
def reconcile_open_invoices() -> int:
    from app.services.reconciliation import reconcile_open_invoices as reconcile

    return reconcile()


# -- dunning and mail (app/services/dunning.py, app/services/notifications.py) ----------------------------

@job
def dunning_pass(as_of: str | None = None):
    from app.services.dunning import run_pass

    return run_pass(date.fromisoformat(as_of) if as_of else None)


@job
def flush_outbox() -> int:
    from app.services.notifications import flush_outbox as flush

    return flush()


@job
def sweep_stuck() -> dict:
    """Re-drive rows stuck mid-state (app/services/stuck_rows.py); the name is the schedule's, kept."""
    from dataclasses import asdict

    from app.services.stuck_rows import redrive_stuck_rows

    return asdict(redrive_stuck_rows())
