"""The tenant billing page's read model: plan, usage so far priced as the next invoice, a page of invoices.

`tenant_billing` is invoicing.billing_status (plan, balance due, next invoice date) plus the usage estimate and
one page of invoices; overdue days on the page count to the day the tenant's last dunning evaluation counted to
(`tenant_billing_as_of`), never to the wall clock. The words the page shows live in components.py and the
templates.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from app.extensions import db
from app.models import Invoice, InvoiceStatus, Plan, PlanPrice, Tenant, utcnow
from app.paging import Paged
from app.services import clock, pricing
from app.services.invoicing import billing_status
from app.services.usage import month_usage


@dataclass(frozen=True)
class UsageEstimate:
    month_start: date
    month_end: date
    through: date | None  # the last day whose usage is counted (rollups are built nightly up to yesterday)
    lines: list[pricing.LineDraft]  # the invoice as it would be if the month ended with today's usage
    so_far: int
    projected: int | None  # the month's invoice at the current daily pace (None on the month's first day)
    currency: str


INVOICES_PER_PAGE = 6  # CONTRACT §5: the billing page shows the last 6 invoices; a pager leads to the rest


@dataclass(frozen=True)
class InvoiceQuery:
    """Which page of a tenant's invoices the billing page shows (from GET query arguments)."""

    page: int = 1
    tenant_id: int | None = None  # a root admin's read-only look at a tenant (?tenant_id=)
    per_page: int = INVOICES_PER_PAGE

    @classmethod
    def from_args(cls, args: MultiDict[str, str], tenant_id: int | None = None) -> InvoiceQuery:
        """Read ?page=; anything unusable is page 1 (never an error)."""
        return cls(page=max(1, min(args.get("page", 1, type=int), 1_000_000)), tenant_id=tenant_id)

    def args(self, **changes: Any) -> dict[str, Any]:
        """Query arguments for a link to this view with some changes (page 1 left out of the URL)."""
        merged = replace(self, **changes)
        out: dict[str, Any] = {}
        if merged.tenant_id is not None:
            out["tenant_id"] = merged.tenant_id
        if merged.page != 1:
            out["page"] = merged.page
        return out


@dataclass(frozen=True)
class InvoicePage(Paged):
    """One page of a tenant's invoices, newest first; page 1 also lists older invoices still open (to pay them)."""

    query: InvoiceQuery
    rows: list[Invoice]
    total: int
    older_open: list[Invoice] = field(default_factory=list)


def invoice_page(tenant_id: int, query: InvoiceQuery) -> InvoicePage:
    """A page of a tenant's issued invoices (drafts are not shown) with the total: one statement, two on page 1."""
    i = Invoice.__table__
    stmt = (select(Invoice, func.count().over().label("total"))
            .where(Invoice.tenant_id == tenant_id, Invoice.status != InvoiceStatus.DRAFT)
            .order_by(Invoice.period_start.desc(), Invoice.id.desc())
            .limit(query.per_page).offset((query.page - 1) * query.per_page))
    found = db.session.execute(stmt).all()
    if found:
        total = int(found[0].total)
    else:
        total = int(db.session.scalar(select(func.count()).select_from(i).where(
            i.c.tenant_id == tenant_id, i.c.status != InvoiceStatus.DRAFT.value)) or 0)
    rows = [r[0] for r in found]
    older: list[Invoice] = []
    if query.page == 1 and len(rows) == query.per_page:
        shown = {inv.id for inv in rows}
        older = [inv for inv in db.session.scalars(
            select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)
            .order_by(Invoice.period_start.desc(), Invoice.id.desc())) if inv.id not in shown]
    return InvoicePage(query=query, rows=rows, total=total, older_open=older)


@dataclass
class TenantBilling:
    tenant: Tenant
    plan: Plan
    prices: list[PlanPrice]
    balance_due: int
    currency: str
    next_invoice_date: date
    invoices: InvoicePage
    usage: UsageEstimate
    as_of: date  # the day overdue days are counted to (see tenant_billing_as_of)


def usage_estimate(tenant: Tenant, plan: Plan, prices: list[PlanPrice], *, now: datetime | None = None
                   ) -> UsageEstimate:
    """Usage so far this month priced as the next invoice would be (pricing.compute_lines), and a projection."""
    today = clock.today(now)
    first, last = clock.month_bounds(today.year, today.month)
    used = month_usage(tenant.id, today.year, today.month)
    lines = pricing.compute_lines(plan, prices, used, first, last)
    elapsed = (today - first).days  # whole days counted so far (today's usage is not rolled up yet)
    projected = None
    if elapsed > 0:
        days = (last - first).days + 1
        pace = {metric: (qty * days + elapsed // 2) // elapsed for metric, qty in used.items()}
        projected = pricing.total(pricing.compute_lines(plan, prices, pace, first, last))
    return UsageEstimate(month_start=first, month_end=last, through=today - timedelta(days=1) if elapsed else None,
                         lines=lines, so_far=pricing.total(lines), projected=projected, currency=plan.currency)


def tenant_billing(tenant: Tenant, query: InvoiceQuery | None = None, *, now: datetime | None = None
                   ) -> TenantBilling:
    """Everything the tenant billing page shows (invoicing.billing_status plus usage and a page of invoices)."""
    now = now or utcnow()
    status = billing_status(tenant, now=now, limit=0)
    prices = list(status.plan.prices)
    return TenantBilling(tenant=tenant, plan=status.plan, prices=prices, balance_due=status.balance_due,
                         currency=status.currency, next_invoice_date=status.next_invoice_date,
                         invoices=invoice_page(tenant.id, query or InvoiceQuery()),
                         usage=usage_estimate(tenant, status.plan, prices, now=now),
                         as_of=tenant_billing_as_of(tenant, now=now))


def tenant_billing_as_of(tenant: Tenant, *, now: datetime | None = None) -> date:
    """The day a tenant's overdue days were counted to: its oldest open invoice's due day + the stored overdue
    days (what its last dunning evaluation used); today when it is not overdue."""
    if tenant.overdue_days > 0:
        oldest = db.session.scalar(select(func.min(Invoice.due_at)).where(
            Invoice.tenant_id == tenant.id, Invoice.status == InvoiceStatus.OPEN))
        if oldest is not None:
            return clock.local_day(oldest) + timedelta(days=tenant.overdue_days)
    return clock.today(now)


def days_overdue(invoice: Invoice, as_of: date) -> int:
    """Days an open invoice is overdue as of a day (0 when not open or not yet due)."""
    if invoice.status != InvoiceStatus.OPEN or invoice.due_at is None:
        return 0
    return max(0, (as_of - clock.local_day(invoice.due_at)).days)

