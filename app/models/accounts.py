"""Account tokens: single-use emailed links that set a password (password resets and team invitations)."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, UTCDateTime

# An invitation nobody accepted or cancelled yet (expired ones included: "Resend" replaces them).
OPEN_INVITATION = "purpose = 'invitation' AND used_at IS NULL AND cancelled_at IS NULL"


class TokenPurpose(StrEnum):
    PASSWORD_RESET = "password_reset"
    INVITATION = "invitation"


class AccountToken(TenantScoped, db.Model):
    """One emailed link. Only the token's SHA-256 is stored; used_at makes it single-use.

    A password reset names its user; an invitation names the tenant and the address it was sent to (the user is
    created when the invitation is accepted).
    """

    __tablename__ = "account_tokens"
    __table_args__ = (
        CheckConstraint("purpose in ('password_reset','invitation')", name="purpose_known"),
        CheckConstraint("purpose <> 'password_reset' OR user_id IS NOT NULL", name="reset_has_user"),
        CheckConstraint("purpose <> 'invitation' OR tenant_id IS NOT NULL", name="invitation_has_tenant"),
        # One open invitation per tenant and address: a double-clicked "Invite" cannot mail two live links.
        Index("uq_account_tokens_open_invitation", "tenant_id", "email", unique=True,
              postgresql_where=text(OPEN_INVITATION), sqlite_where=text(OPEN_INVITATION)),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def is_open(self) -> bool:
        return self.used_at is None and self.cancelled_at is None
