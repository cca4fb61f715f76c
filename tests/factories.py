"""Factories: build real rows through the services, with sensible defaults."""
from __future__ import annotations

import itertools
from datetime import datetime, timezone

from app.extensions import db
from app.models import Role, Tenant
from app.services.tenants import create_user, issue_api_key, slugify

PASSWORD = "correct-horse-battery"
_seq = itertools.count(1)


def make_tenant(name: str | None = None, plan: str = "starter", *, with_admin: bool = True,
                stripe_customer_id: str | None = None, **fields) -> Tenant:
    n = next(_seq)
    name = name or f"Tenant {n}"
    tenant = Tenant(name=name, slug=f"{slugify(name)}-{n}", plan=plan, billing_email=f"billing{n}@example.com",
                    stripe_customer_id=stripe_customer_id, **fields)
    db.session.add(tenant)
    db.session.flush()
    if with_admin:
        create_user(admin_email(tenant), PASSWORD, Role.TENANT_ADMIN, tenant)
    db.session.commit()
    return tenant


def admin_email(tenant: Tenant) -> str:
    return f"admin@{tenant.slug}.example.com"


def make_root(email: str = "root@example.com"):
    user = create_user(email, PASSWORD, Role.ROOT_ADMIN)
    db.session.commit()
    return user


def make_api_key(tenant: Tenant) -> str:
    key = issue_api_key(tenant)
    db.session.commit()
    return key


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)
