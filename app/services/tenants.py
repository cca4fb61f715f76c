"""Tenants, their admins and API keys."""
from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from app import queue
from app.extensions import db
from app.models import ApiKey, AuditLog, Plan, Role, Tenant, TenantStatus, User, utcnow

API_KEY_PREFIX = "sp_live_"
# last_used_at is shown to the tenant by the minute: write it at most once a minute per key, not per request.
KEY_USED_EVERY = timedelta(seconds=60)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


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


def valid_email(email: str) -> bool:
    """True for an address shaped like name@domain.tld (what we can send mail to)."""
    return bool(_EMAIL.fullmatch(email))


@functools.cache
def _dummy_password_hash() -> str:
    # Made like a real one (same scrypt cost), once per process, on first use rather than at import.
    return hash_password(secrets.token_urlsafe(16))


def authenticate(email: str, password: str) -> User | None:
    """Return the active user with these credentials, or None; one scrypt check whether or not the user exists."""
    dummy = _dummy_password_hash()
    user = db.session.scalar(
        select(User).where(User.email == email.strip().lower()).execution_options(skip_tenant_scope=True)
    )
    # An unknown address costs the same scrypt check as a known one, so the answer's time tells nothing.
    matches = check_password_hash(user.password_hash if user is not None else dummy, password)
    if user is None or not matches or not user.active:
        return None
    if not user.is_root and (user.tenant is None or user.tenant.status != TenantStatus.ACTIVE):
        return None
    return user


def create_user(email: str, password: str, role: Role, tenant: Tenant | None = None) -> User:
    """Add a user (not committed)."""
    email = email.strip().lower()
    if not valid_email(email):
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


@dataclass(frozen=True)
class ApiKeyUse:
    key_id: int
    tenant: Tenant


def use_api_key(plaintext: str, now: datetime | None = None) -> ApiKeyUse | None:
    """The non-revoked key and its active tenant, or None; records last_used_at (at most once a minute)."""
    row = db.session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.last_used_at)
        .where(ApiKey.key_hash == hash_api_key(plaintext), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    tenant = db.session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.status != TenantStatus.ACTIVE:
        return None
    now = now or utcnow()
    stale = now - KEY_USED_EVERY
    if row.last_used_at is None or row.last_used_at < stale:
        # One conditional UPDATE, committed at once (GETs never commit): concurrent requests of one key write
        # once, and most requests write nothing at all.
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.id == row.id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return ApiKeyUse(row.id, tenant)


def tenant_for_api_key(plaintext: str) -> Tenant | None:
    """The active tenant owning a non-revoked API key, or None."""
    use = use_api_key(plaintext)
    return use.tenant if use is not None else None


def revoke_api_key(key_id: int, *, tenant_id: int | None, actor_user_id: int | None,
                   now: datetime | None = None) -> ApiKey | None:
    """Revoke a key of `tenant_id` (None: any tenant's, for the operator CLI); audit-logged, not committed.

    Returns the key (already revoked ones unchanged), or None when there is no such key for that tenant.
    """
    query = select(ApiKey).where(ApiKey.id == key_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    key = db.session.scalar(query.with_for_update().execution_options(populate_existing=True))
    if key is None:
        return None
    if key.revoked_at is None:
        now = now or utcnow()
        key.revoked_at = now
        db.session.add(AuditLog(actor_user_id=actor_user_id, tenant_id=key.tenant_id, action="api_key.revoke",
                                details={"key_id": key.id, "prefix": key.prefix, "label": key.label},
                                created_at=now))
    return key


def create_tenant(name: str, plan_code: str, admin_email: str, admin_password: str,
                  billing_email: str | None = None, slug: str | None = None) -> NewTenant:
    """Create a tenant with its first admin and an API key, commit, and queue its Stripe customer."""
    name = (name or "").strip()
    if not name:
        raise TenantError("name", "Give the tenant a name.")
    billing_email = (billing_email or "").strip().lower() or None
    if billing_email is not None and not valid_email(billing_email):
        raise TenantError("billing_email", "Enter a valid billing email address, or leave it empty.")
    if db.session.scalar(select(Plan.id).where(Plan.code == plan_code)) is None:
        raise TenantError("plan", f"Unknown plan {plan_code!r}.")
    slug = slug or slugify(name)
    if db.session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
        raise TenantError("name", "A tenant with this name already exists.")
    tenant = Tenant(name=name, slug=slug, plan=plan_code, status=TenantStatus.ACTIVE,
                    billing_email=billing_email or admin_email.strip().lower())
    db.session.add(tenant)
    try:
        admin = create_user(admin_email, admin_password, Role.TENANT_ADMIN, tenant)
        db.session.flush()
        key = issue_api_key(tenant)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    queue.enqueue_sync_customer(tenant.id)
    return NewTenant(tenant, admin, key)
