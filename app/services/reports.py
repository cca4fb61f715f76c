"""What finance reads: the revenue report and the invoice exports (CONTRACT §8.4).

Set-based throughout, whatever the number of tenants:
- `revenue_report`: ONE statement — UNION ALL of five GROUP BYs, each per currency: invoiced and tenants per
  period, recurring fees per period (fee lines), money collected per calendar month of payment, credit notes
  issued per month, and what is still owed (after credits, app.models.owed) per aging bucket. Months are
  billing-zone months, turned into UTC ranges here, so the SQL is the same on PostgreSQL and SQLite;
- `invoice_rows` / `invoice_line_rows`: one statement each, read through a server-side cursor (`yield_per`),
  so an export of any size holds one batch of rows in memory.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import String, and_, case, func, literal, or_, select, union_all

from app.extensions import db
from app.models import CreditNote, CreditNoteStatus, Invoice, InvoiceLine, InvoiceStatus, Tenant, owed, utcnow
from app.services import clock

DEFAULT_MONTHS = 12
MAX_MONTHS = 120
#: Periods whose invoicing and the open balance give days sales outstanding (the last complete ones).
DSO_PERIODS = 3
#: Open balance by days past due: (label, most days overdue; None = no upper bound). 0 = not yet due.
AGING = [("Not yet due", 0), ("1–30 days", 30), ("31–60 days", 60), ("61–90 days", 90), ("90+ days", None)]
#: Rows fetched per round trip by the exports (and held in memory at once).
EXPORT_BATCH = 1000

INVOICE_CSV_HEADER = ["number", "tenant_id", "tenant_name", "period_start", "period_end", "currency", "amount_due",
                      "amount_paid", "amount_credited", "status", "issued_at", "paid_at"]
LINE_CSV_HEADER = ["invoice_number", "invoice_id", "tenant_id", "tenant_name", "period_start", "period_end",
                   "currency", "metric", "description", "quantity", "used_quantity", "included", "unit_price",
                   "amount"]


# -- the revenue report ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MonthFigures:
    month: str  # YYYY-MM
    invoiced: int
    collected: int
    credited: int
    recurring: int
    tenants_invoiced: int


@dataclass(frozen=True)
class AgingBucket:
    label: str
    amount: int
    invoices: int
    share: float  # of the outstanding balance, 0..100 (a bar's width)


@dataclass(frozen=True)
class RevenueReport:
    currency: str
    months: list[MonthFigures]
    outstanding: int
    aging: list[AgingBucket]
    as_of: date
    #: Outstanding ÷ what the last DSO_PERIODS complete periods invoiced × their days; None without invoicing.
    days_sales_outstanding: Decimal | None
    currencies: list[str] = field(default_factory=list)  # every currency with figures, for the picker

    def as_json(self) -> dict[str, Any]:
        """The contract's JSON shape (CONTRACT §8.4)."""
        return {"currency": self.currency, "months": [asdict(m) for m in self.months],
                "outstanding": self.outstanding}

    @property
    def totals(self) -> MonthFigures:
        """The months summed (tenants_invoiced: the most in any one month)."""
        m = self.months
        return MonthFigures("total", sum(x.invoiced for x in m), sum(x.collected for x in m),
                            sum(x.credited for x in m), sum(x.recurring for x in m),
                            max((x.tenants_invoiced for x in m), default=0))


def month_keys(as_of: date, months: int) -> list[tuple[int, int]]:
    """(year, month) of the `months` months ending with the one containing `as_of`, oldest first."""
    index = as_of.year * 12 + as_of.month - 1
    return [(n // 12, n % 12 + 1) for n in range(index - months + 1, index + 1)]


def revenue_report(months: int = DEFAULT_MONTHS, currency: str | None = None, *,
                   now: datetime | None = None) -> RevenueReport:
    """Invoiced, collected, credited and recurring revenue per month, and the outstanding balance with its aging.

    `currency` defaults to the one with the most invoiced in the window. One statement.
    """
    if not 1 <= months <= MAX_MONTHS:
        raise ValueError(f"months must be between 1 and {MAX_MONTHS}")
    now = now or utcnow()
    tz = clock.billing_tz()
    today = clock.today(now)
    shown = month_keys(today, months)
    # DSO needs the last complete periods even when fewer months are shown.
    keys = month_keys(today, max(months, DSO_PERIODS + 1))
    firsts = [date(y, m, 1) for y, m in keys]
    after = _next_month(firsts[-1])
    starts_utc = [clock.day_start_utc(d, tz) for d in firsts] + [clock.day_start_utc(after, tz)]
    i, ln = Invoice.__table__, InvoiceLine.__table__

    def period_index(column):
        return case(*[(column < nxt, n) for n, nxt in enumerate(firsts[1:] + [after])], else_=-1)

    def paid_index(column):
        return case(*[(column < nxt, n) for n, nxt in enumerate(starts_utc[1:])], else_=-1)

    live_in_window = and_(i.c.status != InvoiceStatus.VOID.value, i.c.period_start >= firsts[0],
                          i.c.period_start < after)
    # Each CASE is built once and grouped by as that same object: SQLAlchemy then groups by its label, which
    # PostgreSQL needs (two copies of a CASE with bound parameters are different expressions to it).
    period = period_index(i.c.period_start).label("bucket")
    # count(*) counts tenants: one non-void invoice per tenant and period (uq_invoices_tenant_period_live), and
    # periods are calendar months. count(DISTINCT tenant_id) would sort every invoice of the window instead.
    invoiced = (select(literal("invoiced", String).label("kind"), i.c.currency, period,
                       func.sum(i.c.amount_due), func.count())
                .where(live_in_window).group_by(i.c.currency, period))
    recurring = (select(literal("recurring", String), i.c.currency, period, func.sum(ln.c.amount), func.count())
                 .select_from(ln.join(i, ln.c.invoice_id == i.c.id))
                 .where(live_in_window, ln.c.metric.is_(None))
                 .group_by(i.c.currency, period))
    paid_month = paid_index(i.c.paid_at).label("bucket")
    collected = (select(literal("collected", String), i.c.currency, paid_month, func.sum(i.c.amount_paid),
                        func.count())
                 .where(i.c.status == InvoiceStatus.PAID.value, i.c.paid_at >= starts_utc[0],
                        i.c.paid_at < starts_utc[-1])
                 .group_by(i.c.currency, paid_month))
    cn = CreditNote.__table__
    credit_month = paid_index(cn.c.issued_at).label("bucket")
    credited = (select(literal("credited", String), cn.c.currency, credit_month, func.sum(cn.c.amount),
                       func.count())
                .where(cn.c.status == CreditNoteStatus.ISSUED.value, cn.c.issued_at >= starts_utc[0],
                       cn.c.issued_at < starts_utc[-1])
                .group_by(cn.c.currency, credit_month))
    aging = _aging_index(i.c.due_at, today, tz).label("bucket")
    still_owed = case((owed(i.c) > 0, owed(i.c)), else_=0)  # after credits (issue 17)
    open_ = (select(literal("open", String), i.c.currency, aging, func.sum(still_owed), func.count())
             .where(i.c.status == InvoiceStatus.OPEN.value).group_by(i.c.currency, aging))

    sums: dict[str, dict[str, dict[int, tuple[int, int]]]] = {}
    statement = union_all(invoiced, recurring, collected, credited, open_)
    for kind, cur, bucket, amount, count in db.session.execute(statement):
        sums.setdefault(cur, {}).setdefault(kind, {})[int(bucket)] = (int(amount or 0), int(count or 0))
    currencies = sorted(sums)
    chosen = (currency or _busiest(sums) or "usd").lower()
    figures = sums.get(chosen, {})

    def get(kind: str, n: int) -> tuple[int, int]:
        return figures.get(kind, {}).get(n, (0, 0))

    rows = [MonthFigures(month=f"{y:04d}-{m:02d}", invoiced=get("invoiced", n)[0], collected=get("collected", n)[0],
                         credited=get("credited", n)[0], recurring=get("recurring", n)[0],
                         tenants_invoiced=get("invoiced", n)[1])
            for n, (y, m) in enumerate(keys)]
    outstanding = sum(amount for amount, _n in figures.get("open", {}).values())
    buckets = [AgingBucket(label, get("open", n)[0], get("open", n)[1],
                           100.0 * get("open", n)[0] / outstanding if outstanding else 0.0)
               for n, (label, _days) in enumerate(AGING)]
    complete = slice(-DSO_PERIODS - 1, -1)  # the last DSO_PERIODS months before the current one
    return RevenueReport(currency=chosen, months=rows[len(rows) - len(shown):], outstanding=outstanding,
                         aging=buckets, as_of=today, currencies=currencies,
                         days_sales_outstanding=_dso(outstanding, rows[complete], firsts[complete]))


def _next_month(first: date) -> date:
    return date(first.year + (first.month == 12), first.month % 12 + 1, 1)


def _aging_index(due_at, today: date, tz):
    # d days overdue ≤ N ⟺ the billing-zone due day ≥ today − N ⟺ due_at ≥ that day's start (UTC).
    whens = [(or_(due_at.is_(None), due_at >= clock.day_start_utc(today - timedelta(days=days), tz)), n)
             for n, (_label, days) in enumerate(AGING) if days is not None]
    return case(*whens, else_=len(AGING) - 1)


def _busiest(sums: dict[str, dict[str, dict[int, tuple[int, int]]]]) -> str | None:
    """The currency with the most invoiced (then open) money: the report's default."""
    def weight(cur: str) -> tuple[int, int]:
        kinds = sums[cur]
        return (sum(a for a, _n in kinds.get("invoiced", {}).values()),
                sum(a for a, _n in kinds.get("open", {}).values()))

    return max(sorted(sums), key=weight, default=None)


def _dso(outstanding: int, months: list[MonthFigures], firsts: list[date]) -> Decimal | None:
    invoiced = sum(m.invoiced for m in months)
    if invoiced <= 0:
        return None
    days = sum((_next_month(f) - f).days for f in firsts)
    return (Decimal(outstanding) * days / invoiced).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


# -- the exports -------------------------------------------------------------------------------------------

def period_bounds(period: str) -> tuple[date, date]:
    """First and last day of a YYYY-MM period; ValueError when malformed."""
    return clock.month_bounds(*clock.parse_period(period))


def invoice_rows(period: str) -> Iterator[tuple]:
    """Every issued invoice of a period (drafts have no number yet), in number order, as INVOICE_CSV_HEADER rows."""
    first, _last = period_bounds(period)
    i, t = Invoice.__table__, Tenant.__table__
    stmt = (select(i.c.number, i.c.tenant_id, t.c.name, i.c.period_start, i.c.period_end, i.c.currency,
                   i.c.amount_due, i.c.amount_paid, i.c.amount_credited, i.c.status, i.c.issued_at, i.c.paid_at)
            .select_from(i.join(t, t.c.id == i.c.tenant_id))
            .where(i.c.period_start == first, i.c.status != InvoiceStatus.DRAFT.value)
            .order_by(i.c.number, i.c.id))
    return _stream(stmt)


def invoice_line_rows(period: str) -> Iterator[tuple]:
    """Every line of the period's issued invoices, invoice by invoice, as LINE_CSV_HEADER rows."""
    first, _last = period_bounds(period)
    i, t, ln = Invoice.__table__, Tenant.__table__, InvoiceLine.__table__
    stmt = (select(i.c.number, i.c.id, i.c.tenant_id, t.c.name, ln.c.period_start, ln.c.period_end, i.c.currency,
                   ln.c.metric, ln.c.description, ln.c.quantity, ln.c.used_quantity, ln.c.included,
                   ln.c.unit_price, ln.c.amount)
            .select_from(ln.join(i, i.c.id == ln.c.invoice_id).join(t, t.c.id == i.c.tenant_id))
            .where(i.c.period_start == first, i.c.status != InvoiceStatus.DRAFT.value)
            .order_by(i.c.number, i.c.id, ln.c.id))
    return _stream(stmt)


def _stream(stmt) -> Iterator[tuple]:
    # yield_per: a server-side cursor on PostgreSQL, EXPORT_BATCH rows per fetch, never the whole result.
    result = db.session.execute(stmt, execution_options={"yield_per": EXPORT_BATCH})
    try:
        for partition in result.partitions():
            yield from partition
    finally:
        result.close()


#: A cell a spreadsheet would run as a formula (CSV injection): prefixed with "'" so it stays text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a safe CSV cell: ISO times, plain decimals, formula-looking text defused."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_chunks(header: list[str], rows: Iterable[tuple], *, batch: int = 500) -> Iterator[str]:
    """CSV text (header first) in chunks of `batch` rows: what a streamed response sends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    pending = 0
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
        pending += 1
        if pending >= batch:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
