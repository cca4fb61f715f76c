"""customer.updated and payment_method.attached: a new default card retries the tenant's open invoices, once."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import exists, select

from app import stripe_gateway as gateway
from app.extensions import db, rq
from app.models import Invoice, InvoiceStatus, PaymentAttempt, Tenant
from app.services import payments
from app.services.webhooks.events import Incoming, Result, ignored, processed
from app.services.webhooks.handlers.lookups import tenant_for_customer
from app.stripe_objects import customer_of, id_of

log = logging.getLogger(__name__)

#: The two events of one card change (payment_method.attached, customer.updated) retry the invoices once.
CARD_RETRY_TTL_S = 600


def customer_updated(ev: Incoming) -> Result:
    """customer.updated: only a change of the default payment method matters (then retry open invoices)."""
    unchanged = _default_card_unchanged(ev)
    if unchanged is not None:
        return processed(unchanged)
    new_pm = id_of((ev.obj.get("invoice_settings") or {}).get("default_payment_method"))
    return _card_changed(ev, ev.obj.get("id"), new_pm)


def payment_method_attached(ev: Incoming) -> Result:
    """payment_method.attached: retry open invoices if the card is (now) the customer's default."""
    return _card_changed(ev, customer_of(ev.obj), ev.obj.get("id"))


def _default_card_unchanged(ev: Incoming) -> str | None:
    """Why a customer.updated event changed no default card (read from the event alone), or None if it did."""
    before = (ev.previous.get("invoice_settings") or {}) if isinstance(ev.previous, dict) else {}
    after = ev.obj.get("invoice_settings") or {}
    if "default_payment_method" not in before:
        return "the default payment method did not change"
    new_pm = id_of(after.get("default_payment_method"))
    if new_pm is None or new_pm == id_of(before.get("default_payment_method")):
        return "no new default payment method"
    return None


def _card_changed(ev: Incoming, customer_id: str | None, pm_id: str | None) -> Result:
    tenant = tenant_for_customer(customer_id)
    if tenant is None:
        db.session.rollback()
        return ignored(f"no tenant here for Stripe customer {customer_id}")
    tenant_id = tenant.id
    open_ids = list(db.session.scalars(select(Invoice.id).where(
        Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN, Invoice.stripe_invoice_id.is_not(None))))
    if not open_ids:
        db.session.rollback()
        return processed("no open invoices to retry", tenant_id)
    if gateway.default_payment_method(customer_id) != pm_id:  # re-read: a later change may have replaced it
        db.session.rollback()
        return processed(f"{pm_id} is not the customer's default payment method now", tenant_id)
    since = ev.created or ev.now
    # Any charge attempt after the change (its retry, a scheduled one) already used this card: a late or replayed
    # event for the current card must not charge again.
    retried = db.session.scalar(select(exists().where(
        PaymentAttempt.tenant_id == tenant_id, PaymentAttempt.created_at >= since)))
    db.session.rollback()
    if retried:
        return processed("open invoices were already charged since this card change", tenant_id)
    # One card change sends two events (payment_method.attached and customer.updated), possibly processed at once.
    key = f"servicepro:card-retry:{customer_id}:{pm_id}"
    if not rq.connection.set(key, ev.stripe_event_id, nx=True, ex=CARD_RETRY_TTL_S):
        return processed("open invoices are being retried for this card already", tenant_id)
    try:
        made = payments.retry_open_invoices(tenant_id, trigger="card_updated", now=ev.now)
    except Exception:
        rq.connection.delete(key)
        raise
    log.info("card change of tenant %s: %s charge attempts on %s open invoices", tenant_id, made, len(open_ids))
    return processed(None, tenant_id)


def quick_card_events(execute: Callable[..., Any], events: list[Incoming]) -> dict[int, Result]:
    """Card events that retry nothing: the default card did not change, no tenant, or no open invoice."""
    out: dict[int, Result] = {}
    customers: dict[int, str | None] = {}
    for ev in events:
        if ev.type == "customer.updated":
            unchanged = _default_card_unchanged(ev)
            if unchanged is not None:
                out[ev.row_id] = processed(unchanged)
                continue
            customers[ev.row_id] = ev.obj.get("id")
        else:
            customers[ev.row_id] = customer_of(ev.obj)
    wanted = {c for c in customers.values() if isinstance(c, str) and c}
    tenants, inv = Tenant.__table__, Invoice.__table__
    has_open = exists().where(inv.c.tenant_id == tenants.c.id, inv.c.status == InvoiceStatus.OPEN,
                              inv.c.stripe_invoice_id.is_not(None))
    found = {r.stripe_customer_id: r for r in execute(
        select(tenants.c.stripe_customer_id, tenants.c.id, has_open.label("has_open"))
        .where(tenants.c.stripe_customer_id.in_(wanted)))} if wanted else {}
    for row_id, customer in customers.items():
        tenant = found.get(customer) if isinstance(customer, str) else None
        if tenant is None:
            out[row_id] = ignored(f"no tenant here for Stripe customer {customer}")
        elif not tenant.has_open:
            out[row_id] = processed("no open invoices to retry", tenant.id)
    return out
