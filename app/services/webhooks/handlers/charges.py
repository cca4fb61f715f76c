"""charge.dispute.* and charge.refunded: flag, clear or record a refund on exactly the invoice the charge paid."""
from __future__ import annotations

import logging

from sqlalchemy import exists, select

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import Invoice
from app.services.webhooks.events import Incoming, Result, ignored, processed
from app.services.webhooks.handlers.lookups import stripe_or_none, tenant_for_customer
from app.stripe_objects import id_of

log = logging.getLogger(__name__)

#: Dispute statuses after which the money is back with us (the invoice is no longer flagged).
DISPUTE_RESOLVED = {"won", "warning_closed", "prevented"}


def dispute_event(ev: Incoming) -> Result:
    """charge.dispute.*: re-read the dispute and flag (or clear) exactly the invoice its charge paid."""
    dispute_id = id_of(ev.obj.get("id"))
    if dispute_id is None:
        return ignored("the event names no dispute")
    dispute = stripe_or_none(gateway.retrieve_dispute, dispute_id)
    if dispute is None:
        return ignored(f"Stripe has no dispute {dispute_id} for this account")
    charge = dispute.get("charge") if isinstance(dispute.get("charge"), dict) else {}
    tenant = tenant_for_customer(id_of(charge.get("customer")))
    if tenant is None:
        db.session.rollback()
        return ignored(f"dispute {dispute_id} on charge {id_of(dispute.get('charge'))}: no tenant here for it")
    tenant_id, status = tenant.id, str(dispute.get("status") or "")
    invoice = _invoice_paid_by(tenant_id, dispute, charge)
    flagged = status not in DISPUTE_RESOLVED
    if invoice is not None:
        invoice.stripe_dispute_id, invoice.dispute_status, invoice.disputed = dispute_id, status, flagged
    tenant_flagged = db.session.scalar(select(exists().where(
        Invoice.tenant_id == tenant_id, Invoice.disputed.is_(True))))
    tenant.disputed = bool(tenant_flagged) or (invoice is None and flagged)
    db.session.commit()
    log.warning("dispute %s (%s) on charge %s: tenant %s, invoice %s", dispute_id, status, charge.get("id"),
                tenant_id, invoice.id if invoice else None)
    if invoice is None:
        return processed(f"dispute {dispute_id} ({status}): the charge paid no invoice of ours, tenant flagged",
                         tenant_id)
    return processed(None, tenant_id)


def charge_refunded(ev: Incoming) -> Result:
    """charge.refunded: record on the invoice the charge paid how much Stripe has refunded of it now."""
    charge_id = id_of(ev.obj.get("id"))
    charge = stripe_or_none(gateway.retrieve_charge, charge_id) if charge_id else None
    if charge is None:
        return ignored(f"Stripe has no charge {charge_id} for this account")
    tenant = tenant_for_customer(id_of(charge.get("customer")))
    if tenant is None:
        db.session.rollback()
        return ignored(f"charge {charge_id}: no tenant here for it")
    tenant_id = tenant.id
    invoice = _invoice_paid_by(tenant_id, {}, charge)
    if invoice is None:
        db.session.rollback()
        return processed(f"charge {charge_id} paid no invoice of ours", tenant_id)
    refunded = int(charge.get("amount_refunded") or 0)
    note = None if refunded != invoice.amount_refunded else "already recorded"
    invoice.amount_refunded = refunded
    db.session.commit()
    return processed(note, tenant_id)


def _invoice_paid_by(tenant_id: int, dispute: dict, charge: dict) -> Invoice | None:
    """The tenant's invoice the charge paid: through its invoice payment (by payment intent)."""
    payment_intent = id_of(dispute.get("payment_intent")) or id_of(charge.get("payment_intent"))
    if payment_intent:
        stripe_invoice_id = gateway.invoice_for_payment_intent(payment_intent)
    else:
        stripe_invoice_id = id_of(charge.get("invoice"))  # charges of API versions before 2025-03-31
    if stripe_invoice_id is None:
        return None
    return db.session.scalar(select(Invoice).where(
        Invoice.tenant_id == tenant_id, Invoice.stripe_invoice_id == stripe_invoice_id).with_for_update())
