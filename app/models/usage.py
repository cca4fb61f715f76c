"""Raw usage events and their daily rollups."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, UTCDateTime, utcnow


class UsageEvent(TenantScoped, db.Model):
    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_event_id"),
        CheckConstraint("quantity >= 0", name="quantity_nonneg"),
        Index("ix_usage_events_tenant_day", "tenant_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    client_event_id: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The billing-zone calendar day of occurred_at, fixed at ingestion so rollups are one GROUP BY.
    day: Mapped[date] = mapped_column(Date)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRollupDaily(TenantScoped, db.Model):
    __tablename__ = "usage_rollups_daily"
    __table_args__ = (
        UniqueConstraint("tenant_id", "day", "metric"),
        Index("ix_usage_rollups_daily_day", "day"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    metric: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
