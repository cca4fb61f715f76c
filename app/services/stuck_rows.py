"""Stuck rows: find rows left mid-state (their job lost to a crash or a Redis restart) and re-drive them.

Run every minute by the job app.jobs.sweep_stuck. Not to be confused with app/workers.py, which re-queues RQ
jobs a killed worker abandoned; this looks at the database. Everything it enqueues is idempotent by business
key, so a doubled or late pass is harmless.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, exists, func, or_, select

from app import queue
from app.extensions import db
from app.models import AttemptStatus, Invoice, InvoiceStatus, OutboxEmail, PaymentAttempt, WebhookEvent, utcnow
from app.services.webhooks.processing import release_orphans, wake_drainers

log = logging.getLogger(__name__)


@dataclass
class RedriveResult:
    charges: int = 0
    webhooks: int = 0
    retries_queued: bool = False
    mail_queued: bool = False


def redrive_stuck_rows(now: datetime | None = None) -> RedriveResult:
    """Re-enqueue work whose job vanished: uncharged or half-charged invoices, pending webhooks, queued mail."""
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config.get("SWEEPER_STALE_SECONDS", 120))
    result = RedriveResult()

    # Open invoices never charged, or whose last attempt died pending (the charge re-checks Stripe first).
    never_charged = ~exists().where(PaymentAttempt.invoice_id == Invoice.id)
    died_pending = exists().where(and_(PaymentAttempt.invoice_id == Invoice.id,
                                       PaymentAttempt.status == AttemptStatus.PENDING,
                                       PaymentAttempt.created_at < stale))
    stuck = db.session.scalars(
        select(Invoice.id).where(Invoice.status == InvoiceStatus.OPEN, Invoice.stripe_invoice_id.is_not(None),
                                 Invoice.issued_at < stale, Invoice.hard_decline.is_(False),
                                 or_(never_charged, died_pending)).order_by(Invoice.id).limit(1000)).all()
    for invoice_id in stuck:
        queue.enqueue_charge(invoice_id, "sweeper")  # the trigger stored on the attempt: keep the word
    result.charges = len(stuck)

    due_retry = db.session.scalar(select(exists().where(
        Invoice.status == InvoiceStatus.OPEN, Invoice.next_payment_attempt_at <= now,
        Invoice.hard_decline.is_(False))))
    if due_retry:
        queue.enqueue_payment_retries()
        result.retries_queued = True

    freed = release_orphans(now=now)  # events held by a drainer that died: pending again
    events = db.session.scalar(select(func.count()).select_from(
        select(WebhookEvent.id).where(WebhookEvent.status == "pending", WebhookEvent.received_at < stale)
        .limit(1000).subquery()))
    if events or freed:
        wake_drainers()  # they take every pending event, oldest first
    result.webhooks = events + freed

    if db.session.scalar(select(exists().where(OutboxEmail.status == "pending"))):
        queue.enqueue_outbox_flush()
        result.mail_queued = True
    db.session.rollback()
    if result.charges or result.webhooks:
        log.warning("stuck rows: re-drove %s charges and %s webhook events", result.charges, result.webhooks)
    return result
