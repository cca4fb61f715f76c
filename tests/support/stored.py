"""Reading back what the services stored: a tenant's dunning stage, the mail waiting in the outbox."""
from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.models import OutboxEmail, Tenant


def stage_of(tenant_id: int) -> tuple[str, int]:
    db.session.expire_all()
    t = db.session.get(Tenant, tenant_id)
    return t.dunning_stage, t.overdue_days


def outbox(tenant_id: int | None = None) -> list[OutboxEmail]:
    stmt = select(OutboxEmail).order_by(OutboxEmail.id)
    if tenant_id is not None:
        stmt = stmt.where(OutboxEmail.tenant_id == tenant_id)
    return list(db.session.scalars(stmt))
