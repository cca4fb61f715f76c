"""Integrations: service tokens for other services, push endpoints, and the entitlements outbox."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, UTCDateTime


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"


class ServiceToken(db.Model):
    """A credential of another service (telephony, SMS): root-issued, scoped, stored hashed."""

    __tablename__ = "service_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated, e.g. "entitlements:read"
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class IntegrationEndpoint(db.Model):
    """A URL that receives signed `entitlements.updated` events."""

    __tablename__ = "integration_endpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    # Kept in clear: it signs every delivery (HMAC needs the secret itself, as Stripe's whsec_ does).
    secret: Mapped[str] = mapped_column(String(200))
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # One deliverer at a time per endpoint (events go out in order): whoever holds an unexpired lease.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def active(self) -> bool:
        return self.disabled_at is None


class EntitlementEvent(TenantScoped, db.Model):
    """One `entitlements.updated` event; `body` is the exact JSON every delivery sends (same id on retries)."""

    __tablename__ = "entitlement_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "evt_…", public
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(60))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IntegrationDelivery(db.Model):
    """One event to one endpoint: retried with back-off until a 2xx; each endpoint's deliveries go out in id order."""

    __tablename__ = "integration_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        # The deliverer reads each endpoint's oldest pending row: this index holds just those.
        Index("ix_integration_deliveries_pending", "endpoint_id", "id",
              postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("entitlement_events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("integration_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
