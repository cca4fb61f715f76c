"""Reconciliation: compare our open invoices with Stripe's current state, so a lost webhook heals within a day.

Runs nightly (`stripe-reconcile` in app/schedule.py). Each invoice is re-read from Stripe under its row lock and
applied with payments.apply_stripe_invoice (monotonic, so it is harmless next to a webhook or a charge doing the
same); tenants whose invoices changed status are re-evaluated for dunning at once.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import Invoice, InvoiceStatus, utcnow
from app.services import dunning, payments

log = logging.getLogger(__name__)

#: Still collectable in Stripe: an uncollectible invoice can be paid later too.
RECONCILED = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
BATCH = 200


def reconcile_invoice(invoice_id: int, *, now: datetime | None = None) -> tuple[bool, str | None]:
    """Re-read one invoice from Stripe and apply it (row-locked); return (anything changed, old status if it moved)."""
    now = now or utcnow()
    invoice = db.session.scalar(select(Invoice).where(Invoice.id == invoice_id).with_for_update()
                                .execution_options(populate_existing=True))
    if invoice is None or not invoice.stripe_invoice_id or invoice.status not in RECONCILED:
        db.session.rollback()
        return False, None
    before = invoice.status
    current = gateway.retrieve_invoice(invoice.stripe_invoice_id)
    changed = payments.apply_stripe_invoice(invoice, current, now=now)
    db.session.commit()
    return changed, before if invoice.status != before else None


def reconcile_open_invoices(now: datetime | None = None, *, batch_size: int = BATCH) -> int:
    """Apply Stripe's current state to every open invoice (in id batches); return how many invoices changed."""
    now = now or utcnow()
    changed = failed = 0
    moved_tenants: set[int] = set()
    last_id = 0
    while True:
        batch = db.session.execute(
            select(Invoice.id, Invoice.tenant_id)
            .where(Invoice.status.in_(RECONCILED), Invoice.stripe_invoice_id.is_not(None), Invoice.id > last_id)
            .order_by(Invoice.id).limit(batch_size)).all()
        db.session.rollback()
        if not batch:
            break
        for invoice_id, tenant_id in batch:
            last_id = invoice_id
            try:
                did_change, moved_from = reconcile_invoice(invoice_id, now=now)
            except gateway.GatewayError as err:  # one unreadable invoice never stops the others
                db.session.rollback()
                failed += 1
                log.warning("reconciling invoice %s: %s", invoice_id, err)
                continue
            changed += did_change
            if moved_from is not None:
                moved_tenants.add(tenant_id)
    for tenant_id in sorted(moved_tenants):
        try:
            dunning.reevaluate_tenant(tenant_id, now=now)
        except Exception:  # noqa: BLE001 - the nightly dunning pass re-derives it anyway
            db.session.rollback()
            log.exception("dunning re-evaluation failed for tenant %s", tenant_id)
    log.info("reconciled open invoices with Stripe: %s changed, %s tenants re-evaluated, %s unreadable", changed,
             len(moved_tenants), failed)
    return changed
