"""Money that moves after the invoice (CONTRACT §8, §8.1): plan changes and credit notes.

`owed` is THE expression of what is still owed on an invoice row — every open-balance query (pages, banner,
dunning, reports, the API) sums it, so credits and applied credit balance count everywhere alike.
"""
from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, UTCDateTime, utcnow


def owed(c: Any) -> Any:
    """What is still owed on invoice rows, as SQL: amount_due − paid − credited − credit balance applied.

    `c` is the Invoice class or an invoices table's columns (`table.c`). Sum it over open invoices only: on a
    paid, void or uncollectible invoice nothing is owed whatever the columns say.
    """
    return c.amount_due - c.amount_paid - c.amount_credited - c.balance_applied


class CreditKind(StrEnum):
    REDUCE = "reduce"  # an open invoice: lowers what is still owed (to 0 → paid)
    REFUND = "refund"  # a paid invoice: money back to the card
    ACCOUNT_CREDIT = "account_credit"  # a paid invoice: adds to the tenant's credit balance


class CreditNoteStatus(StrEnum):
    PENDING = "pending"  # recorded and its amount reserved; Stripe not (yet) known to have it
    ISSUED = "issued"  # Stripe has it
    FAILED = "failed"  # Stripe refused it; its amount is released


class PlanChange(TenantScoped, db.Model):
    """A tenant's plan from the start of `effective_on` (billing zone); the history that proration reads."""

    __tablename__ = "plan_changes"
    __table_args__ = (
        # One change per tenant and day: a second change the same day replaces the first.
        UniqueConstraint("tenant_id", "effective_on"),
        CheckConstraint("from_plan <> to_plan", name="changes_plan"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    from_plan: Mapped[str] = mapped_column(ForeignKey("plans.code", onupdate="CASCADE"))
    to_plan: Mapped[str] = mapped_column(ForeignKey("plans.code", onupdate="CASCADE"))
    effective_on: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(20), default="root")  # root, tenant, cli


class CreditNote(TenantScoped, db.Model):
    """A credit note on one invoice, mirrored by a Stripe credit note (idempotency key from our id)."""

    __tablename__ = "credit_notes"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("kind in ('reduce','refund','account_credit')", name="kind_known"),
        CheckConstraint("status in ('pending','issued','failed')", name="status_known"),
        CheckConstraint("length(trim(reason)) > 0", name="reason_given"),
        Index("ix_credit_notes_pending", "invoice_id", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units of `currency`
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=CreditNoteStatus.PENDING)
    stripe_credit_note_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_refund_id: Mapped[str | None] = mapped_column(String(64))
    number: Mapped[str | None] = mapped_column(String(64))  # Stripe's credit note number
    # A form's (or a caller's) one-time key: the same submission twice issues one credit note.
    request_key: Mapped[str | None] = mapped_column(String(80), unique=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
