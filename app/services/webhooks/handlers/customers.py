"""customer.deleted: forget the tenant's dead Stripe customer (sync-customers creates a new one)."""
from __future__ import annotations

import logging

from sqlalchemy import update

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import AuditLog, Tenant
from app.services.webhooks.events import Incoming, Result, ignored, processed
from app.services.webhooks.handlers.lookups import stripe_or_none, tenant_for_customer
from app.stripe_objects import id_of

log = logging.getLogger(__name__)


def customer_deleted(ev: Incoming) -> Result:
    """customer.deleted: forget the tenant's dead customer id once Stripe confirms it is gone."""
    customer_id = id_of(ev.obj.get("id"))
    tenant = tenant_for_customer(customer_id)
    if tenant is None:
        db.session.rollback()
        return ignored(f"no tenant here for Stripe customer {customer_id}")
    tenant_id = tenant.id
    current = stripe_or_none(gateway.retrieve_customer, customer_id)
    if current is not None and not current.get("deleted"):
        return processed(f"Stripe still has customer {customer_id}: nothing to forget", tenant_id)
    forgot = db.session.execute(update(Tenant).where(Tenant.id == tenant_id, Tenant.stripe_customer_id == customer_id)
                                .values(stripe_customer_id=None)).rowcount
    if forgot:
        db.session.add(AuditLog(actor_user_id=None, tenant_id=tenant_id, action="stripe.customer_deleted",
                                details={"customer": customer_id, "stripe_event_id": ev.stripe_event_id},
                                created_at=ev.now))
    db.session.commit()
    log.warning("Stripe customer %s of tenant %s was deleted: sync-customers creates a new one", customer_id,
                tenant_id)
    return processed(None, tenant_id)
