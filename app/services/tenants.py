"""Tenants, their admins and API keys."""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from app.extensions import db
from app.models import ApiKey, Plan, Role, Tenant, TenantStatus, User, utcnow

API_KEY_PREFIX = "sp_live_"


class TenantError(ValueError):
    """A tenant or user could not be created; `field` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass
class NewTenant:
    tenant: Tenant
    admin: User
    api_key: str  # shown once; only its hash is stored


def slugify(name: str) -> str:
    """A URL- and email-safe slug for a tenant name."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60] or "tenant"


def hash_password(password: str) -> str:
    """Hash a password with scrypt (werkzeug's default)."""
    return generate_password_hash(password, method="scrypt")


def authenticate(email: str, password: str) -> User | None:
    """Return the active user with these credentials, or None."""
    user = db.session.scalar(
        select(User).where(User.email == email.strip().lower()).execution_options(skip_tenant_scope=True)
    )
    if user is None or not check_password_hash(user.password_hash, password):
        return None
    if not user.active:
        return None
    if not user.is_root and (user.tenant is None or user.tenant.status != TenantStatus.ACTIVE):
        return None
    return user


def create_user(email: str, password: str, role: Role, tenant: Tenant | None = None) -> User:
    """Add a user (not committed)."""
    email = email.strip().lower()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise TenantError("admin_email", "Enter a valid email address.")
    if len(password) < 8:
        raise TenantError("admin_password", "Passwords need at least 8 characters.")
    if db.session.scalar(select(User.id).where(User.email == email).execution_options(skip_tenant_scope=True)):
        raise TenantError("admin_email", "A user with this email already exists.")
    user = User(email=email, password_hash=hash_password(password), role=role, tenant=tenant)
    db.session.add(user)
    return user


def issue_api_key(tenant: Tenant, label: str = "default") -> str:
    """Create an API key for a tenant and return the plaintext (not committed; stored hashed)."""
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiKey(tenant_id=tenant.id, prefix=plaintext[:12], key_hash=hash_api_key(plaintext),
                          label=label, created_at=utcnow()))
    return plaintext


def hash_api_key(plaintext: str) -> str:
    # Keys are 256-bit random, so a fast hash is safe and lets us look them up by hash.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def tenant_for_api_key(plaintext: str) -> Tenant | None:
    """The active tenant owning a non-revoked API key, or None."""
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext),
                                                 ApiKey.revoked_at.is_(None)))
    if key is None:
        return None
    tenant = db.session.get(Tenant, key.tenant_id)
    return tenant if tenant is not None and tenant.status == TenantStatus.ACTIVE else None


def create_tenant(name: str, plan_code: str, admin_email: str, admin_password: str,
                  billing_email: str | None = None, slug: str | None = None) -> NewTenant:
    """Create a tenant with its first admin and an API key, commit, and queue its Stripe customer."""
    name = (name or "").strip()
    if not name:
        raise TenantError("name", "Give the tenant a name.")
    if db.session.scalar(select(Plan.id).where(Plan.code == plan_code)) is None:
        raise TenantError("plan", f"Unknown plan {plan_code!r}.")
    slug = slug or slugify(name)
    if db.session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
        raise TenantError("name", "A tenant with this name already exists.")
    tenant = Tenant(name=name, slug=slug, plan=plan_code, status=TenantStatus.ACTIVE,
                    billing_email=(billing_email or admin_email).strip().lower())
    db.session.add(tenant)
    try:
        admin = create_user(admin_email, admin_password, Role.TENANT_ADMIN, tenant)
        db.session.flush()
        key = issue_api_key(tenant)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    from app.jobs import enqueue_sync_customer

    enqueue_sync_customer(tenant.id)
    return NewTenant(tenant, admin, key)
