"""Stripe customers for tenants."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update

from app import stripe_gateway
from app.extensions import db
from app.models import AuditLog, Tenant


@dataclass
class SyncResult:
    created: int = 0
    existing: int = 0
    failed: dict[int, str] = field(default_factory=dict)


def ensure_customer(tenant_id: int) -> str:
    """Return the tenant's Stripe customer id, creating the customer first if it has none.

    The idempotency key is the tenant id, so concurrent or repeated calls create one customer; the guarded
    UPDATE keeps the first id stored.
    """
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} not found")
    if tenant.stripe_customer_id:
        return tenant.stripe_customer_id
    # Each customer deleted in Stripe (customer.deleted) moves the key on, or Stripe would replay the dead one.
    deleted = db.session.scalar(select(db.func.count(AuditLog.id)).where(
        AuditLog.tenant_id == tenant_id, AuditLog.action == "stripe.customer_deleted"))
    customer_id = stripe_gateway.create_customer(tenant.id, tenant.name, tenant.billing_email, deleted or 0)
    db.session.execute(
        update(Tenant).where(Tenant.id == tenant_id, Tenant.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer_id)
    )
    db.session.commit()
    db.session.refresh(tenant)
    return tenant.stripe_customer_id


def sync_customers() -> SyncResult:
    """Create missing Stripe customers for every tenant; a second run creates nothing.

    Stripe unreachable raises the GatewayError at once (no other tenant could succeed); the customers created
    before it are kept.
    """
    result = SyncResult()
    missing = db.session.scalars(select(Tenant.id).where(Tenant.stripe_customer_id.is_(None)).order_by(Tenant.id))
    ids = list(missing)
    result.existing = db.session.scalar(select(db.func.count(Tenant.id))) - len(ids)
    for tenant_id in ids:
        try:
            ensure_customer(tenant_id)
            result.created += 1
        except stripe_gateway.GatewayError as err:
            db.session.rollback()
            if err.unreachable:
                raise
            result.failed[tenant_id] = str(err)
    return result
