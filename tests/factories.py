"""Factories: build real rows through the services, with sensible defaults."""
from __future__ import annotations

import itertools
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from app import stripe_gateway
from app.extensions import db
from app.models import Invoice, InvoiceLine, InvoiceStatus, Role, Tenant
from app.services import clock, invoicing
from app.services.customers import ensure_customer
from app.services.tenants import create_user, issue_api_key, slugify

PASSWORD = "correct-horse-battery"
_seq = itertools.count(1)


def make_tenant(name: str | None = None, plan: str = "starter", *, with_admin: bool = True,
                stripe_customer_id: str | None = None, **fields) -> Tenant:
    n = next(_seq)
    name = name or f"Tenant {n}"
    tenant = Tenant(name=name, slug=f"{slugify(name)}-{n}", plan=plan, billing_email=f"billing{n}@example.com",
                    stripe_customer_id=stripe_customer_id, **fields)
    db.session.add(tenant)
    db.session.flush()
    if with_admin:
        create_user(admin_email(tenant), PASSWORD, Role.TENANT_ADMIN, tenant)
    db.session.commit()
    return tenant


def admin_email(tenant: Tenant) -> str:
    return f"admin@{tenant.slug}.example.com"


def make_root(email: str = "root@example.com"):
    user = create_user(email, PASSWORD, Role.ROOT_ADMIN)
    db.session.commit()
    return user


def make_api_key(tenant: Tenant) -> str:
    key = issue_api_key(tenant)
    db.session.commit()
    return key


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


#: A creation date before any billing period a test looks at.
LONG_AGO = utc(2020, 1, 1)


def at(day: date, hour: int = 10, tz: str = "UTC") -> datetime:
    """An aware UTC instant on a calendar day in the given zone."""
    return datetime.combine(day, time(hour), tzinfo=ZoneInfo(tz)).astimezone(timezone.utc)


def tenant_with_card(card: str = "pm_card_visa", plan: str = "starter", **fields) -> Tenant:
    """A tenant with a Stripe customer whose default card is `card` (a Stripe test token)."""
    tenant = make_tenant(plan=plan, **fields)
    customer_id = ensure_customer(tenant.id)
    stripe_gateway.attach_default_card(customer_id, card, key=f"test-card-{tenant.id}-{card}")
    return tenant


def make_invoice(tenant: Tenant, issued: date | datetime, *, amount: int = 4900, status: str = InvoiceStatus.OPEN,
                 number: str | None = None, stripe_invoice_id: str | None = None, amount_paid: int = 0) -> Invoice:
    """An issued invoice row for the month before `issued`, due on its issue instant (no Stripe needed)."""
    issued_at = issued if isinstance(issued, datetime) else at(issued)
    month_end = issued_at.date().replace(day=1) - timedelta(days=1)
    inv = Invoice(tenant_id=tenant.id, period_start=month_end.replace(day=1), period_end=month_end,
                  plan_code=tenant.plan, amount_due=amount, amount_paid=amount_paid, currency="usd",
                  status=status, number=number or f"SP-{tenant.id}-{month_end:%Y%m}",
                  stripe_invoice_id=stripe_invoice_id, issued_at=issued_at, due_at=issued_at)
    if status == InvoiceStatus.PAID:
        inv.paid_at, inv.amount_paid = issued_at, amount
    db.session.add(inv)
    db.session.commit()
    return inv


def open_invoice_in_stripe(tenant: Tenant, year: int, month: int, *, now) -> Invoice:
    """Generate the tenant's invoice for a month and finalize it in Stripe WITHOUT charging it (open on both sides)."""
    customer_id = tenant.stripe_customer_id or ensure_customer(tenant.id)
    invoice = invoicing.generate_invoice(tenant.id, year, month, now=now)
    invoicing.finalize_in_stripe(invoice, customer_id, now=now)
    db.session.refresh(invoice)
    return invoice


def invoice_with_lines(tenant: Tenant, period: date, fee: int, usage: int, *, status: str = "paid",
                       paid_at: datetime | None = None, amount_paid: int | None = None, due_at: datetime | None = None,
                       currency: str = "usd", number: str | None = None) -> Invoice:
    """An issued invoice for the month `period` with a plan-fee line and a usage line (no Stripe needed)."""
    last = clock.month_bounds(period.year, period.month)[1]
    amount = fee + usage
    if amount_paid is None:
        amount_paid = amount if status == "paid" else 0
    inv = Invoice(tenant_id=tenant.id, period_start=period, period_end=last, plan_code=tenant.plan,
                  amount_due=amount, amount_paid=amount_paid, currency=currency, status=status,
                  number=number or f"SP-{period:%Y-%m}-{tenant.id:06d}-{status[:1]}",
                  issued_at=utc(last.year, last.month, last.day, 12) + timedelta(days=1),
                  due_at=due_at or utc(last.year, last.month, last.day, 12) + timedelta(days=1), paid_at=paid_at)
    inv.lines = [
        InvoiceLine(metric=None, quantity=1, unit_price=Decimal(fee) / 100, amount=fee, description="Plan fee",
                    period_start=period, period_end=last),
        InvoiceLine(metric="voice_minutes", quantity=usage, used_quantity=usage, unit_price=Decimal("0.01"),
                    amount=usage, description="Voice minutes", period_start=period, period_end=last),
    ]
    db.session.add(inv)
    db.session.commit()
    return inv


def stripe_backed_invoice(due: date, card: str = "pm_card_chargeCustomerFail") -> tuple[Tenant, Invoice]:
    """A tenant with a Stripe card, and a $49 invoice for the month before `due`, finalized in Stripe without being
    charged (open on both sides) and due at 10:00 on `due`."""
    tenant = tenant_with_card(card)
    customer = tenant.stripe_customer_id
    inv = make_invoice(tenant, at(due, 10), amount=4900)
    period = (int(at(inv.period_start, 0).timestamp()), int(at(inv.period_end, 0).timestamp()))
    s_inv = stripe_gateway.create_invoice(inv.id, customer, "usd", f"{inv.period_start:%Y-%m}", tenant.id, inv.number)
    stripe_gateway.add_invoice_item(inv.id, customer, s_inv.id, 4900, "usd", "Starter plan", *period)
    stripe_gateway.finalize_invoice(inv.id, s_inv.id)
    inv.stripe_invoice_id = s_inv.id
    db.session.commit()
    return tenant, inv
