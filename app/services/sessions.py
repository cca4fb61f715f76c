"""Sign-in sessions kept server-side: started at sign-in, checked on every request, ended at sign-out.

The session cookie (signed by Flask) carries "<session id>:<session_version>:<secret>"; the database keeps the
secret's hash. Sign-out revokes that one row, so a saved copy of the cookie stops working while the user's
other browsers stay signed in. Bumping users.session_version ends every session of the user at once.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update

from app.extensions import db
from app.models import Tenant, TenantStatus, User, UserSession, utcnow

# last_seen_at is bookkeeping: write it at most once a minute per session, not on every request.
SEEN_EVERY = timedelta(seconds=60)


def _hash(secret: str) -> str:
    # The secret is 256-bit random, so a fast hash is enough.
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(key: str) -> tuple[int, int, str] | None:
    parts = (key or "").split(":", 2)
    if len(parts) != 3 or not parts[2]:
        return None  # includes the "<user id>:<version>" cookies of before issue 20: they sign in again once
    try:
        return int(parts[0]), int(parts[1]), parts[2]
    except ValueError:
        return None


def start_session(user: User, *, now: datetime | None = None, user_agent: str | None = None,
                  ip_address: str | None = None) -> str:
    """Record a new session for `user` (not committed), attach it to the user and return its cookie key."""
    now = now or utcnow()
    secret = secrets.token_urlsafe(32)
    row = UserSession(user_id=user.id, token_hash=_hash(secret), created_at=now, last_seen_at=now,
                      user_agent=(user_agent or "")[:255] or None, ip_address=(ip_address or "")[:45] or None)
    db.session.add(row)
    db.session.flush()
    user.session_key = f"{row.id}:{user.session_version}:{secret}"
    return user.session_key


def user_for_session(key: str, *, now: datetime | None = None) -> User | None:
    """The user a live session key signs in, or None (unknown, revoked, ended, user or tenant disabled)."""
    parsed = _parse(key)
    if parsed is None:
        return None
    session_id, version, secret = parsed
    found = db.session.execute(
        select(UserSession, User, Tenant)
        .join(User, User.id == UserSession.user_id)
        .outerjoin(Tenant, Tenant.id == User.tenant_id)
        .where(UserSession.id == session_id)
        .execution_options(skip_tenant_scope=True)
    ).first()
    if found is None:
        return None
    row, user, tenant = found
    if (row.revoked_at is not None or not hmac.compare_digest(row.token_hash, _hash(secret))
            or user.session_version != version or not user.active):
        return None
    if not user.is_root and (tenant is None or tenant.status != TenantStatus.ACTIVE):
        return None
    now = now or utcnow()
    if row.last_seen_at < now - SEEN_EVERY:
        _touch(row.id, now)
    user.session_key = key
    return user


def _touch(session_id: int, now: datetime) -> None:
    # The WHERE makes concurrent requests of one session write once; committed at once because most
    # requests (GETs) never commit.
    db.session.execute(
        update(UserSession)
        .where(UserSession.id == session_id, UserSession.last_seen_at < now - SEEN_EVERY)
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def end_session(key: str, *, now: datetime | None = None) -> bool:
    """Revoke the session this key names (not committed); True if it was live."""
    parsed = _parse(key)
    if parsed is None:
        return False
    result = db.session.execute(
        update(UserSession)
        .where(UserSession.id == parsed[0], UserSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def end_all_sessions(user: User, *, now: datetime | None = None) -> int:
    """End every session of `user` on every device (not committed); return how many were live."""
    user.session_version = (user.session_version or 1) + 1
    result = db.session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
