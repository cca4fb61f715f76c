"""Invoices, their lines, payment attempts and billing runs."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, Date, ForeignKey, Index, Integer, Numeric, String,
                        Text, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import BigIntPK, TenantScoped, TimestampMixin, UTCDateTime, utcnow


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class AttemptStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ACTION_REQUIRED = "action_required"
    ERROR = "error"


class Invoice(TenantScoped, TimestampMixin, db.Model):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint("status in ('draft','open','paid','void','uncollectible')", name="status_known"),
        CheckConstraint("amount_due >= 0", name="amount_nonneg"),
        # CONTRACT §8.1: credit notes never total more than the invoice (issue 17; app/models/credits.py).
        CheckConstraint("amount_credited >= 0 AND amount_credited <= amount_due", name="credited_within_due"),
        CheckConstraint("balance_applied >= 0", name="balance_applied_nonneg"),
        # CONTRACT §3: at most one non-void invoice per tenant and period, enforced by the database.
        Index(
            "uq_invoices_tenant_period_live",
            "tenant_id", "period_start", "period_end",
            unique=True,
            postgresql_where=text("status <> 'void'"),
            sqlite_where=text("status <> 'void'"),
        ),
        Index("ix_invoices_tenant_status", "tenant_id", "status"),
        # The pages, dunning and reconciliation read open balances and this month's collections constantly.
        Index("ix_invoices_open_tenant", "tenant_id", postgresql_where=text("status = 'open'"),
              sqlite_where=text("status = 'open'")),
        Index("ix_invoices_paid_at", "paid_at", postgresql_where=text("status = 'paid'"),
              sqlite_where=text("status = 'paid'")),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)  # inclusive last day of the period
    plan_code: Mapped[str | None] = mapped_column(String(40))
    amount_due: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=InvoiceStatus.DRAFT)
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_out_of_band: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    last_payment_error: Mapped[str | None] = mapped_column(Text)
    last_payment_error_code: Mapped[str | None] = mapped_column(String(64))
    hard_decline: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    next_payment_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disputed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The latest Stripe dispute on the charge that paid this invoice and its Stripe status (needs_response,
    # under_review, won, lost, ...); `disputed` stays true while it is open or once it is lost.
    stripe_dispute_id: Mapped[str | None] = mapped_column(String(64))
    dispute_status: Mapped[str | None] = mapped_column(String(40))
    # Refunded on Stripe's side (the paying charge's amount_refunded), whoever issued the refund.
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Stripe's own invoice number and PDF link (ours is `number`), recorded when Stripe finalizes it.
    stripe_number: Mapped[str | None] = mapped_column(String(64))
    invoice_pdf_url: Mapped[str | None] = mapped_column(Text)
    # When a webhook last re-read this invoice from Stripe: later events created before it need no re-read.
    stripe_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Issue 17: Σ of its credit notes (pending or issued), and the tenant's credit balance Stripe applied to it.
    amount_credited: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    balance_applied: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    lines: Mapped[list["InvoiceLine"]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.id", cascade="all, delete-orphan"
    )
    attempts: Mapped[list["PaymentAttempt"]] = relationship(back_populates="invoice", order_by="PaymentAttempt.id")

    @property
    def unpaid(self) -> int:
        """What the columns leave unpaid, whatever the status (app.models.credits.owed in SQL; never negative)."""
        return max(0, self.amount_due - self.amount_paid - (self.amount_credited or 0) - (self.balance_applied or 0))

    @property
    def balance(self) -> int:
        """What is still owed: what is unpaid while open, else 0."""
        return self.unpaid if self.status == InvoiceStatus.OPEN else 0

    @property
    def amount_remaining(self) -> int:
        return self.balance


class InvoiceLine(db.Model):
    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    metric: Mapped[str | None] = mapped_column(String(40))  # None for the plan fee line
    quantity: Mapped[int] = mapped_column(BigInteger)  # billable quantity
    used_quantity: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    included: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    unit_price: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    amount: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(String(255))
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    stripe_invoice_item_id: Mapped[str | None] = mapped_column(String(64))

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class PaymentAttempt(TenantScoped, db.Model):
    __tablename__ = "payment_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    trigger: Mapped[str] = mapped_column(String(30))  # scheduled, retry, card_updated, manual, pay_now
    status: Mapped[str] = mapped_column(String(20), default=AttemptStatus.PENDING)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    invoice: Mapped[Invoice] = relationship(back_populates="attempts")


class InvoiceSequence(db.Model):
    """Gapless invoice numbers: one counter per prefix, incremented under a row lock at finalization."""

    __tablename__ = "invoice_sequences"

    prefix: Mapped[str] = mapped_column(String(20), primary_key=True)
    last_value: Mapped[int] = mapped_column(Integer, default=0)


class BillingRun(db.Model):
    """A root admin's "run all tenants for a period": progress for the live bar."""

    __tablename__ = "billing_runs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    started_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BillingRunOutcome(db.Model):
    """How many tenants of a billing run ended with each result and reason (the run's "why" breakdown)."""

    __tablename__ = "billing_run_outcomes"

    run_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("billing_runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    result: Mapped[str] = mapped_column(String(20), primary_key=True)  # invoicing.RunResult
    reason: Mapped[str] = mapped_column(String(40), primary_key=True)  # invoicing.Reason
    tenants: Mapped[int] = mapped_column(Integer, default=0)
