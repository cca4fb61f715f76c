"""Lookups the handlers share: the tenant of a Stripe customer, Stripe's current copy of an object."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import Tenant


def tenant_for_customer(customer_id: str | None) -> Tenant | None:
    if not customer_id:
        return None
    return db.session.scalar(select(Tenant).where(Tenant.stripe_customer_id == customer_id))


def stripe_or_none(read: Callable[[str], Any], object_id: str) -> dict | None:
    """Stripe's current state of an object, or None when Stripe does not know it (404)."""
    try:
        return read(object_id).to_dict()
    except gateway.GatewayError as err:
        if err.http_status == 404:
            db.session.rollback()
            return None
        raise
