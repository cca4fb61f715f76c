"""Plans, tenants, users, their sign-in sessions and API keys."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, Date, ForeignKey, Index, Integer, Numeric, String, Text,
                        text, UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, TimestampMixin, UTCDateTime, utcnow

# A tenant whose status or dunning stage differs from what services were last told about.
ENTITLEMENTS_STALE = "entitlements_state <> (status || ':' || dunning_stage)"


class TenantStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class DunningStage(StrEnum):
    OK = "ok"
    REMINDER = "reminder"
    SUSPENDED = "suspended"
    RESTRICTED = "restricted"


class Role(StrEnum):
    ROOT_ADMIN = "root_admin"
    TENANT_ADMIN = "tenant_admin"


class Plan(db.Model):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    monthly_fee: Mapped[int] = mapped_column(BigInteger, CheckConstraint("monthly_fee >= 0", name="fee_nonneg"))

    prices: Mapped[list["PlanPrice"]] = relationship(
        back_populates="plan_obj", order_by="PlanPrice.metric", cascade="all, delete-orphan"
    )


class PlanPrice(db.Model):
    __tablename__ = "plan_prices"
    __table_args__ = (UniqueConstraint("plan_code", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code", onupdate="CASCADE"))
    metric: Mapped[str] = mapped_column(String(40))
    included: Mapped[int] = mapped_column(BigInteger, default=0)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(18, 6))

    plan_obj: Mapped[Plan] = relationship(back_populates="prices")


class Tenant(TimestampMixin, db.Model):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("overdue_days >= 0", name="overdue_nonneg"),
        # Tenants whose entitlements changed since services were last told (app/services/entitlements.py).
        Index("ix_tenants_entitlements_stale", "id", postgresql_where=text(ENTITLEMENTS_STALE),
              sqlite_where=text(ENTITLEMENTS_STALE)),
        Index("ix_tenants_entitlements_updated_at", "entitlements_updated_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    plan: Mapped[str] = mapped_column(ForeignKey("plans.code", onupdate="CASCADE"))
    billing_email: Mapped[str | None] = mapped_column(String(254))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=TenantStatus.ACTIVE)
    overdue_days: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dunning_stage: Mapped[str] = mapped_column(String(20), default=DunningStage.OK, server_default="ok")
    dunning_stage_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dunning_exempt_until: Mapped[date | None] = mapped_column(Date)
    billing_error: Mapped[str | None] = mapped_column(Text)
    billing_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disputed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # "<status>:<dunning_stage>" as services were last told, and when their entitlements last changed.
    entitlements_state: Mapped[str] = mapped_column(String(60), server_default="active:ok")
    entitlements_updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow,
                                                              server_default=text("CURRENT_TIMESTAMP"))

    plan_obj: Mapped[Plan] = relationship(foreign_keys=[plan], lazy="joined")
    users: Mapped[list["User"]] = relationship(back_populates="tenant")

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE


class User(TimestampMixin, db.Model):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role in ('root_admin','tenant_admin')", name="role_known"),
        CheckConstraint("role = 'root_admin' OR tenant_id IS NOT NULL", name="tenant_admin_has_tenant"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant | None] = relationship(back_populates="users")

    # Flask-Login's view of the user. Not UserMixin: its __eq__ compares get_id(), which names a session here.
    is_authenticated = True
    is_anonymous = False
    session_key = None  # "<session id>:<version>:<secret>", set by app.services.sessions for the signed-in user

    @property
    def is_root(self) -> bool:
        return self.role == Role.ROOT_ADMIN

    @property
    def is_active(self) -> bool:  # Flask-Login: disabled users cannot hold a session
        return self.active

    def get_id(self) -> str:
        """The signed-in session's key (what the session cookie carries); see app.services.sessions."""
        if self.session_key is None:
            raise RuntimeError("start a session with app.services.sessions.start_session before login_user")
        return self.session_key


class UserSession(db.Model):
    """One signed-in browser. The cookie holds its id and a secret; sign-out sets revoked_at.

    A row ends only its own browser; bumping users.session_version (sessions.end_all_sessions) ends every
    session of the user at once.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    user_agent: Mapped[str | None] = mapped_column(String(255))
    ip_address: Mapped[str | None] = mapped_column(String(45))


class ApiKey(TenantScoped, db.Model):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(120), default="default")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
