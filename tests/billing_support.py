"""Helpers for the invoicing and payment tests: usage, stored invoices and attempts, what the emulator saw."""
from __future__ import annotations

from datetime import date

from app.extensions import db
from app.models import Invoice, PaymentAttempt, UsageRollupDaily


def add_usage(tenant_id: int, day: date, **quantities: int) -> None:
    """Store rollups for one day directly (the rollup job's output)."""
    for metric, qty in quantities.items():
        db.session.add(UsageRollupDaily(tenant_id=tenant_id, day=day, metric=metric, quantity=qty))
    db.session.commit()


def invoices_of(tenant_id: int) -> list[Invoice]:
    db.session.expire_all()
    return list(db.session.scalars(db.select(Invoice).where(Invoice.tenant_id == tenant_id).order_by(Invoice.id)))


def attempts_of(invoice_id: int) -> list[PaymentAttempt]:
    db.session.expire_all()
    return list(db.session.scalars(db.select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice_id)
                                   .order_by(PaymentAttempt.id)))


def stripe_invoices(emulator, customer_id: str) -> list[dict]:
    """Every Stripe invoice the emulator holds for a customer (read through the real API)."""
    client = emulator.stripe_client()
    return [inv.to_dict() for inv in client.v1.invoices.list(params={"customer": customer_id, "limit": 100})
            .auto_paging_iter()]


def charges_for(emulator, customer_id: str, include_failed: bool = False) -> list[dict]:
    return [c for c in emulator.charges(include_failed=include_failed) if c["customer"] == customer_id]
