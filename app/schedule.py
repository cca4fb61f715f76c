"""The declarative list of periodic jobs. scheduler.py reconciles rq-scheduler with it.

Cron strings are read in UTC whatever the machine's TZ. Every periodic job is a reconciler that asks the
database what is due, so a missed or doubled tick is harmless.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Periodic:
    id: str  # fixed; never change one, or the old schedule entry is left behind until reconciled away
    cron: str  # UTC
    func: str
    queue: str = "default"
    result_ttl: int = 86400
    timeout: int = 3600


SCHEDULE: list[Periodic] = [
    Periodic("scheduler-heartbeat", "* * * * *", "app.jobs.scheduler_heartbeat", result_ttl=120),
    Periodic("usage-rollup-nightly", "15 0 * * *", "app.jobs.rollup_recent_days", queue="billing"),
    Periodic("stripe-customers-sync", "45 0 * * *", "app.jobs.sync_all_customers", queue="billing"),
    # Daily, not only on the 1st: the tick invoices every tenant still missing last month's invoice.
    Periodic("invoices-monthly", "30 0 * * *", "app.jobs.invoice_due_tenants", queue="billing"),
    Periodic("payment-retries", "10 * * * *", "app.jobs.retry_due_payments", queue="billing"),
    Periodic("dunning-nightly", "0 2 * * *", "app.jobs.dunning_pass", queue="billing"),
    Periodic("stripe-reconcile", "0 3 * * *", "app.jobs.reconcile_open_invoices", queue="billing"),
    Periodic("webhooks-retry-failed", "*/5 * * * *", "app.jobs.retry_failed_webhooks", queue="webhooks"),
    Periodic("outbox-flush", "* * * * *", "app.jobs.flush_outbox", queue="mail", result_ttl=300),
    Periodic("sweep-stuck", "* * * * *", "app.jobs.sweep_stuck", result_ttl=300),
    # Retries entitlements pushes that are due, and announces changes made behind the ORM's back (issue 16).
    Periodic("entitlements-push", "* * * * *", "app.integrations.jobs.sweep_entitlements", result_ttl=300),
]
