"""Accounts a tenant runs itself: password resets by email, admin invitations, the billing email.

Both kinds of link are account tokens (app/models/accounts.py): 256-bit random, stored only as SHA-256,
single-use (used_at, taken under a row lock) and short-lived (a reset an hour, an invitation a week). The
emails go through the outbox like every other email (app/services/notifications.py).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from flask import current_app
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from app import stripe_gateway
from app.extensions import db
from app.models import (AccountToken, AuditLog, OutboxEmail, Role, Tenant, TenantStatus, TokenPurpose, User,
                        utcnow)
from app.services.notifications import outbox_row, queue_rows, render_email
from app.services.sessions import end_all_sessions
from app.services.tenants import TenantError, create_user, hash_password, valid_email

RESET_TTL = timedelta(hours=1)
INVITATION_TTL = timedelta(days=7)
MIN_PASSWORD_LENGTH = 8  # what create_user asks of a tenant's first admin
MAX_EMAIL_LENGTH = 254  # the users/tenants column width


class LinkProblem(StrEnum):
    """Why an emailed link cannot be used (templates/auth/link_problem.html words each one)."""

    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    TAKEN = "taken"  # the invited address got an account meanwhile


class LinkError(Exception):
    """The link's token cannot be used; `problem` says why."""

    def __init__(self, problem: LinkProblem):
        super().__init__(problem.value)
        self.problem = problem


class FormError(ValueError):
    """Input a person must correct; `errors` maps field name → message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class Link:
    """A usable link: its token row and the tenant it joins or belongs to (None for a root admin's reset)."""

    token: AccountToken
    tenant: Tenant | None


def hash_token(plaintext: str) -> str:
    """The stored form of a token (256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    plaintext = secrets.token_urlsafe(32)
    return plaintext, hash_token(plaintext)


def _base_url() -> str:
    return current_app.config["APP_BASE_URL"].rstrip("/")


def reset_url(plaintext: str) -> str:
    """The absolute link a password-reset email carries."""
    return f"{_base_url()}/password/reset/{plaintext}"


def invitation_url(plaintext: str) -> str:
    """The absolute link an invitation email carries."""
    return f"{_base_url()}/invitations/{plaintext}"


def normalize_email(email: str | None) -> str:
    """An address as stored: trimmed and lower-case."""
    return (email or "").strip().lower()


def email_error(email: str) -> str | None:
    """What is wrong with a normalized address, or None."""
    if not email:
        return "Enter an email address."
    if len(email) > MAX_EMAIL_LENGTH or not valid_email(email):
        return "Enter a valid email address, like name@example.com."
    return None


def password_errors(password: str, confirm: str) -> dict[str, str]:
    """Field errors for a new password and its confirmation (empty when acceptable)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return {"password": f"Use at least {MIN_PASSWORD_LENGTH} characters."}
    if password != confirm:
        return {"password_confirm": "The two passwords don't match. Type the same password twice."}
    return {}


def _can_sign_in(user: User | None) -> bool:
    if user is None or not user.active:
        return False
    return user.is_root or (user.tenant is not None and user.tenant.status == TenantStatus.ACTIVE)


def _user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email).execution_options(skip_tenant_scope=True))


def _audit(action: str, *, actor_user_id: int | None, tenant_id: int | None, now: datetime,
           details: dict | None = None) -> None:
    db.session.add(AuditLog(actor_user_id=actor_user_id, tenant_id=tenant_id, action=action, details=details,
                            created_at=now))


# -- password reset --------------------------------------------------------------------------------------

def request_password_reset(email: str, *, now: datetime | None = None) -> bool:
    """Queue a reset link for the active account with this address (not committed); True when one was queued.

    An address without an active account gets the same token and email rendering, only nothing is stored, so
    the answer's time does not tell whether the account exists.
    """
    now = now or utcnow()
    email = normalize_email(email)
    plaintext, token_hash = _new_token()
    user = _user_by_email(email)
    known = _can_sign_in(user)
    mail = render_email("password_reset", email=email, link=reset_url(plaintext),
                        minutes=int(RESET_TTL.total_seconds() // 60))
    if not known:
        # The round trips the stored path makes (the token's insert, the email's insert), as reads.
        db.session.execute(select(AccountToken.id).where(AccountToken.token_hash == token_hash))
        db.session.execute(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == f"password_reset:token:{token_hash}"))
        return False
    if db.engine.dialect.name == "postgresql":
        # Don't wait for the disk at commit: an unknown address writes nothing, so this keeps the two answers'
        # times alike (and a reset email lost to a crash is simply requested again).
        db.session.execute(text("SET LOCAL synchronous_commit = off"))
    row = AccountToken(purpose=TokenPurpose.PASSWORD_RESET, token_hash=token_hash, tenant_id=user.tenant_id,
                       user_id=user.id, email=user.email, created_at=now, expires_at=now + RESET_TTL)
    db.session.add(row)
    db.session.flush()
    queue_rows([outbox_row(user.tenant_id, TokenPurpose.PASSWORD_RESET.value,
                           f"password_reset:user:{user.id}:token:{row.id}", user.email, mail, now)])
    return True


def check_link(plaintext: str, purpose: TokenPurpose, *, now: datetime | None = None,
               lock: bool = False) -> Link:
    """The usable link this token names, or LinkError; `lock` holds its row until commit (to redeem it)."""
    now = now or utcnow()
    if not plaintext or len(plaintext) > 128:
        raise LinkError(LinkProblem.UNKNOWN)
    query = (select(AccountToken)
             .where(AccountToken.token_hash == hash_token(plaintext), AccountToken.purpose == purpose)
             .execution_options(skip_tenant_scope=True, populate_existing=True))
    if lock:
        query = query.with_for_update()  # two submits of one link: the second waits, then sees used_at
    row = db.session.scalar(query)
    if row is None:
        raise LinkError(LinkProblem.UNKNOWN)
    if row.used_at is not None:
        raise LinkError(LinkProblem.USED)
    if row.cancelled_at is not None:
        # A reset link is cancelled when another one was used; to its reader that is "used".
        raise LinkError(LinkProblem.CANCELLED if purpose == TokenPurpose.INVITATION else LinkProblem.USED)
    if row.expires_at <= now:
        raise LinkError(LinkProblem.EXPIRED)
    tenant = (db.session.get(Tenant, row.tenant_id, execution_options={"skip_tenant_scope": True})
              if row.tenant_id else None)
    if purpose == TokenPurpose.PASSWORD_RESET:
        user = db.session.get(User, row.user_id)
        if not _can_sign_in(user) or user.email != row.email:
            raise LinkError(LinkProblem.UNKNOWN)
    elif tenant is None or tenant.status != TenantStatus.ACTIVE:
        raise LinkError(LinkProblem.UNKNOWN)
    return Link(row, tenant)


def reset_password(plaintext: str, password: str, confirm: str, *, now: datetime | None = None) -> User:
    """Set a new password through a reset link and end the user's sessions everywhere (not committed).

    Raises LinkError for a link that cannot be used, FormError for a password to correct (the link stays valid).
    """
    now = now or utcnow()
    link = check_link(plaintext, TokenPurpose.PASSWORD_RESET, now=now, lock=True)
    errors = password_errors(password, confirm)
    if errors:
        raise FormError(errors)
    user = db.session.get(User, link.token.user_id)
    user.password_hash = hash_password(password)
    ended = end_all_sessions(user, now=now)
    link.token.used_at = now
    # Any other reset link of this user (an older email) dies with this one.
    db.session.execute(
        update(AccountToken)
        .where(AccountToken.user_id == user.id, AccountToken.purpose == TokenPurpose.PASSWORD_RESET,
               AccountToken.used_at.is_(None), AccountToken.cancelled_at.is_(None), AccountToken.id != link.token.id)
        .values(cancelled_at=now)
        .execution_options(synchronize_session=False)
    )
    _audit("user.password_reset", actor_user_id=user.id, tenant_id=user.tenant_id, now=now,
           details={"sessions_ended": ended})
    return user


# -- invitations -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PendingInvitation:
    id: int
    email: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    expired: bool


@dataclass(frozen=True)
class Team:
    members: list[User]
    invitations: list[PendingInvitation]


def team_of(tenant_id: int, *, now: datetime | None = None) -> Team:
    """The tenant's admins and its open invitations (expired ones included, marked)."""
    now = now or utcnow()
    members = list(db.session.scalars(
        select(User).where(User.tenant_id == tenant_id, User.role == Role.TENANT_ADMIN).order_by(User.email)))
    rows = db.session.execute(
        select(AccountToken, User.email)
        .outerjoin(User, User.id == AccountToken.created_by_user_id)
        .where(AccountToken.tenant_id == tenant_id, AccountToken.purpose == TokenPurpose.INVITATION,
               AccountToken.used_at.is_(None), AccountToken.cancelled_at.is_(None))
        .order_by(AccountToken.created_at, AccountToken.id)
    ).all()
    invitations = [PendingInvitation(t.id, t.email, inviter, t.created_at, t.expires_at, t.expires_at <= now)
                   for t, inviter in rows]
    return Team(members, invitations)


def _open_invitation(tenant_id: int, invitation_id: int) -> AccountToken | None:
    return db.session.scalar(
        select(AccountToken)
        .where(AccountToken.id == invitation_id, AccountToken.tenant_id == tenant_id,
               AccountToken.purpose == TokenPurpose.INVITATION, AccountToken.used_at.is_(None),
               AccountToken.cancelled_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _send_invitation(tenant: Tenant, email: str, inviter: User, now: datetime) -> AccountToken:
    plaintext, token_hash = _new_token()
    row = AccountToken(purpose=TokenPurpose.INVITATION, token_hash=token_hash, tenant_id=tenant.id, email=email,
                       created_by_user_id=inviter.id, created_at=now, expires_at=now + INVITATION_TTL)
    try:
        with db.session.begin_nested():
            db.session.add(row)
            db.session.flush()
    except IntegrityError:
        # Another request invited the same address a moment ago (the open-invitation index).
        raise FormError({"email": f"An invitation to {email} was just sent."}) from None
    mail = render_email("invitation", tenant=tenant, inviter=inviter.email, link=invitation_url(plaintext),
                        expires_at=row.expires_at)
    queue_rows([outbox_row(tenant.id, TokenPurpose.INVITATION.value, f"invitation:tenant:{tenant.id}:token:{row.id}",
                           email, mail, now)])
    return row


def invite_admin(tenant: Tenant, email: str, *, inviter: User, now: datetime | None = None) -> AccountToken:
    """Email `email` a link to become an admin of `tenant` (not committed); FormError for a bad or taken address.

    Inviting an address that already has an open invitation replaces it (a fresh link, a fresh week).
    """
    now = now or utcnow()
    email = normalize_email(email)
    problem = email_error(email)
    if problem:
        raise FormError({"email": problem})
    if _user_by_email(email) is not None:
        raise FormError({"email": f"{email} already has a ServicePro account, so it cannot be invited."})
    db.session.execute(
        update(AccountToken)
        .where(AccountToken.tenant_id == tenant.id, AccountToken.email == email,
               AccountToken.purpose == TokenPurpose.INVITATION, AccountToken.used_at.is_(None),
               AccountToken.cancelled_at.is_(None))
        .values(cancelled_at=now)
        .execution_options(synchronize_session=False)
    )
    row = _send_invitation(tenant, email, inviter, now)
    _audit("team.invite", actor_user_id=inviter.id, tenant_id=tenant.id, now=now, details={"email": email})
    return row


def resend_invitation(tenant: Tenant, invitation_id: int, *, inviter: User,
                      now: datetime | None = None) -> AccountToken | None:
    """Replace an open invitation of `tenant` with a fresh link and email it (not committed); None if none."""
    now = now or utcnow()
    old = _open_invitation(tenant.id, invitation_id)
    if old is None:
        return None
    if _user_by_email(old.email) is not None:
        raise FormError({"email": f"{old.email} already has a ServicePro account, so it cannot be invited."})
    old.cancelled_at = now
    db.session.flush()
    row = _send_invitation(tenant, old.email, inviter, now)
    _audit("team.invitation_resent", actor_user_id=inviter.id, tenant_id=tenant.id, now=now,
           details={"email": old.email})
    return row


def cancel_invitation(tenant: Tenant, invitation_id: int, *, actor: User,
                      now: datetime | None = None) -> AccountToken | None:
    """Cancel an open invitation of `tenant` so its link stops working (not committed); None if none."""
    now = now or utcnow()
    row = _open_invitation(tenant.id, invitation_id)
    if row is None:
        return None
    row.cancelled_at = now
    _audit("team.invitation_cancelled", actor_user_id=actor.id, tenant_id=tenant.id, now=now,
           details={"email": row.email})
    return row


def accept_invitation(plaintext: str, password: str, confirm: str, *, now: datetime | None = None) -> User:
    """Create the invited admin with this password (not committed); LinkError or FormError as reset_password."""
    now = now or utcnow()
    link = check_link(plaintext, TokenPurpose.INVITATION, now=now, lock=True)
    errors = password_errors(password, confirm)
    if errors:
        raise FormError(errors)
    try:
        with db.session.begin_nested():
            user = create_user(link.token.email, password, Role.TENANT_ADMIN, link.tenant)
            db.session.flush()
    except (TenantError, IntegrityError):
        raise LinkError(LinkProblem.TAKEN) from None  # the address signed up elsewhere since it was invited
    link.token.used_at = now
    _audit("team.invitation_accepted", actor_user_id=user.id, tenant_id=link.tenant.id, now=now,
           details={"email": user.email, "invited_by": link.token.created_by_user_id})
    return user


# -- billing email ---------------------------------------------------------------------------------------

def change_billing_email(tenant: Tenant, email: str, *, actor_user_id: int | None,
                         now: datetime | None = None) -> bool:
    """Set where the tenant's billing emails go (audit-logged, not committed); False when unchanged.

    The Stripe customer follows through a job (queue.enqueue_customer_email), so Stripe being down never
    blocks the edit.
    """
    now = now or utcnow()
    email = normalize_email(email)
    problem = email_error(email)
    if problem:
        raise FormError({"billing_email": problem})
    if email == tenant.billing_email:
        return False
    _audit("tenant.billing_email_changed", actor_user_id=actor_user_id, tenant_id=tenant.id, now=now,
           details={"from": tenant.billing_email, "to": email})
    tenant.billing_email = email
    return True


def push_billing_email(tenant_id: int) -> str | None:
    """Copy the tenant's current billing email to its Stripe customer; the email set, or None if nothing to do.

    It reads the email when it runs, so a late or repeated job sets the latest value. Raises GatewayError when
    Stripe refuses or is down (the job fails and can be requeued from the Jobs page).
    """
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None or not tenant.stripe_customer_id or not tenant.billing_email:
        return None  # a customer created later is created with the current email
    customer_id, email = tenant.stripe_customer_id, tenant.billing_email
    db.session.rollback()  # hold no transaction open across the Stripe call
    stripe_gateway.update_customer_email(customer_id, email)
    return email
