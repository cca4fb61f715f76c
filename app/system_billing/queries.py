"""The system billing pages' read models: the tenants table, the overview, runs, force-runs and one tenant.

The system page reads any page of any number of tenants with a constant number of statements:
- `tenant_page`: ONE statement — an inner SELECT filters, sorts and pages the tenants (with `count(*) OVER ()`
  for the total and, only when the sort or filter needs it, a GROUP BY over open invoices), and the outer SELECT
  adds, for the page's rows only, the balance, oldest unpaid invoice, last payment error and last invoice
  through correlated subqueries on the (tenant_id, status) index;
- `overdue_as_of`: ONE statement — the day the stored overdue days were counted to (the last dunning pass);
- `overview`: ONE statement — the aged open balance as of that day and the money collected this month
  (conditional sums over invoices) UNION ALL the number of tenants per dunning stage.
Both run on PostgreSQL and on SQLite (the development database).

One "as of" per page: overdue days and stages are what the last dunning pass stored (`tenants.overdue_days`), so
the aged buckets, the "since" dates and the as-of date the page prints are all read against that pass's day —
never against the wall clock, which may be days apart (a pass run with `--as-of`, or a scheduler that stopped).

A force-run is the tenant's invoice job for a month (app/queue.py: the id the monthly tick also uses, so a
force-run and a scheduled run of the same tenant and month are one job); its state is read from RQ, and each
tenant's latest force-run is shown again after a reload for as long as RQ keeps the job's result.
The words the pages show live in components.py and the templates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import String, and_, case, func, literal, or_, select, union_all

from app import queue
from app.extensions import db
from app.models import (AuditLog, BillingRun, BillingRunOutcome, DunningEvent, DunningStage, Invoice,
                        InvoiceSequence, InvoiceStatus, PaymentAttempt, Plan, Tenant, owed, utcnow)
from app.paging import Paged
from app.services import clock
from app.services.webhooks import processing as webhook_processing
from app.services.invoicing import NUMBER_PREFIX, RunResult, RunSummary, period_end_utc

log = logging.getLogger(__name__)

# -- the system billing table: query parameters --------------------------------------------------------------

SORTS: dict[str, str] = {  # query value → column label shown in the header
    "name": "Tenant", "plan": "Plan", "balance": "Balance due", "oldest_due": "Oldest unpaid",
    "overdue": "Overdue days", "stage": "Stage",
}
DEFAULT_SORT, DEFAULT_DIR = "overdue", "desc"
FLAGS: dict[str, str] = {
    "balance": "Has a balance due", "billing_error": "Billing error", "disputed": "Disputed",
    "exempt": "Exempt (payment arrangement)",
}
PER_PAGE_CHOICES = (25, 50, 100)
DEFAULT_PER_PAGE = 25
STAGES = [s.value for s in DunningStage]
_STAGE_RANK = {DunningStage.OK.value: 0, DunningStage.REMINDER.value: 1, DunningStage.SUSPENDED.value: 2,
               DunningStage.RESTRICTED.value: 3}


@dataclass(frozen=True)
class TenantQuery:
    """Search, filter, sort and page of the system billing table (all from GET query arguments)."""

    q: str = ""
    stage: str = ""
    flag: str = ""
    sort: str = DEFAULT_SORT
    direction: str = DEFAULT_DIR
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> TenantQuery:
        """Read the table's query arguments; anything unknown falls back to its default (never an error)."""
        sort = args.get("sort", DEFAULT_SORT)
        sort = sort if sort in SORTS else DEFAULT_SORT
        direction = args.get("dir", "")
        if direction not in ("asc", "desc"):
            direction = DEFAULT_DIR if sort == DEFAULT_SORT else ("desc" if sort in ("balance", "overdue", "stage")
                                                                  else "asc")
        stage = args.get("stage", "")
        flag = args.get("flag", "")
        per_page = _int(args.get("per_page"), DEFAULT_PER_PAGE)
        return cls(q=(args.get("q") or "").strip()[:100], stage=stage if stage in STAGES else "",
                   flag=flag if flag in FLAGS else "", sort=sort, direction=direction,
                   page=max(1, min(_int(args.get("page"), 1), 1_000_000)),
                   per_page=per_page if per_page in PER_PAGE_CHOICES else DEFAULT_PER_PAGE)

    def args(self, **changes: Any) -> dict[str, Any]:
        """Query arguments for a link to this view with some changes (defaults left out of the URL)."""
        merged = replace(self, **changes)
        out: dict[str, Any] = {}
        if merged.q:
            out["q"] = merged.q
        if merged.stage:
            out["stage"] = merged.stage
        if merged.flag:
            out["flag"] = merged.flag
        if (merged.sort, merged.direction) != (DEFAULT_SORT, DEFAULT_DIR):
            out["sort"], out["dir"] = merged.sort, merged.direction
        if merged.per_page != DEFAULT_PER_PAGE:
            out["per_page"] = merged.per_page
        if merged.page != 1:
            out["page"] = merged.page
        return out

    def sort_args(self, column: str) -> dict[str, Any]:
        """Arguments for a header link: sort by `column`, toggling direction when it is already the sort."""
        if column == self.sort:
            return self.args(direction="asc" if self.direction == "desc" else "desc", page=1)
        first = "desc" if column in ("balance", "overdue", "stage") else "asc"
        return self.args(sort=column, direction=first, page=1)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# -- the system billing table: rows ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LastInvoice:
    id: int
    number: str | None
    status: str
    amount_due: int
    currency: str
    period_start: date
    paid_at: datetime | None


@dataclass(frozen=True)
class OldestUnpaid:
    """A tenant's oldest open invoice: the one dunning counts overdue days from."""

    id: int
    number: str | None
    due_on: date | None  # billing-zone date
    balance: int
    currency: str


@dataclass(frozen=True)
class TenantRow:
    id: int
    name: str
    status: str
    plan_code: str
    plan_name: str
    currency: str
    balance: int
    oldest_due: date | None  # billing-zone date of the oldest open invoice's due date
    overdue_days: int
    stage: str
    exempt_until: date | None
    billing_error: str | None
    disputed: bool
    last_payment_error: str | None
    last_invoice: LastInvoice | None
    oldest_unpaid: OldestUnpaid | None = None


@dataclass(frozen=True)
class TenantPage(Paged):
    query: TenantQuery
    rows: list[TenantRow]
    total: int


def _open_aggregate():
    i = Invoice.__table__
    return (select(i.c.tenant_id, func.sum(owed(i.c)).label("balance"),
                   func.min(i.c.due_at).label("oldest_due"))
            .where(i.c.status == InvoiceStatus.OPEN.value).group_by(i.c.tenant_id).subquery("oa"))


def _rows_statement(query: TenantQuery, *, tenant_id: int | None = None, today: date | None = None):
    """The one SELECT behind the table (or behind one tenant's row when tenant_id is given)."""
    t, p, i = Tenant.__table__, Plan.__table__, Invoice.__table__
    need_agg = query.sort in ("balance", "oldest_due") or query.flag == "balance"
    oa = _open_aggregate() if need_agg else None

    stage_rank = case(_STAGE_RANK, value=t.c.dunning_stage, else_=0)
    sort_columns = {
        "name": func.lower(t.c.name), "plan": p.c.monthly_fee, "overdue": t.c.overdue_days, "stage": stage_rank,
        "balance": func.coalesce(oa.c.balance, 0) if oa is not None else None,
        "oldest_due": oa.c.oldest_due if oa is not None else None,
    }

    def ordering(key, name_key, id_key):
        primary = key.desc() if query.direction == "desc" else key.asc()
        if query.sort == "oldest_due":
            primary = primary.nulls_last()
        return [primary, name_key, id_key]

    source = t.join(p, p.c.code == t.c.plan) if query.sort == "plan" else t
    if oa is not None:
        source = source.outerjoin(oa, oa.c.tenant_id == t.c.id)
    # Narrow rows (id and sort keys) are filtered, counted and paged; the outer SELECT then reads the page's
    # ≤ per_page tenants in full and re-sorts them. (A row_number() window would force a full sort of every
    # tenant; ORDER BY ... LIMIT lets the database keep only the top rows.)
    inner = select(
        t.c.id.label("tid"), sort_columns[query.sort].label("sort_key"), func.lower(t.c.name).label("name_key"),
        func.count().over().label("total"),
    ).select_from(source)
    if tenant_id is not None:
        inner = inner.where(t.c.id == tenant_id)
    else:
        if query.q:
            escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            inner = inner.where(t.c.name.ilike(f"%{escaped}%", escape="\\"))
        if query.stage:
            inner = inner.where(t.c.dunning_stage == query.stage)
        if query.flag == "balance":
            inner = inner.where(oa.c.balance > 0)
        elif query.flag == "billing_error":
            inner = inner.where(t.c.billing_error.is_not(None))
        elif query.flag == "disputed":
            inner = inner.where(t.c.disputed.is_(True))
        elif query.flag == "exempt":
            inner = inner.where(t.c.dunning_exempt_until >= (today or clock.today()))
        inner = (inner.order_by(*ordering(sort_columns[query.sort], func.lower(t.c.name), t.c.id))
                 .limit(query.per_page).offset((query.page - 1) * query.per_page))
    k = inner.subquery("k")
    pt, pp = t.alias("pt"), p.alias("pp")
    pg = (select(k.c.tid.label("id"), k.c.sort_key, k.c.name_key, k.c.total, pt.c.name, pt.c.status, pt.c.plan,
                 pp.c.name.label("plan_name"), pp.c.currency, pt.c.overdue_days, pt.c.dunning_stage,
                 pt.c.dunning_exempt_until, pt.c.billing_error, pt.c.disputed)
          .select_from(k.join(pt, pt.c.id == k.c.tid).join(pp, pp.c.code == pt.c.plan))
          .subquery("pg"))

    # Per-row details, evaluated for the page's rows only (≤ per_page index look-ups each).
    is_open = and_(i.c.tenant_id == pg.c.id, i.c.status == InvoiceStatus.OPEN.value)
    balance = select(func.coalesce(func.sum(owed(i.c)), 0)).where(is_open) \
        .scalar_subquery()
    last_error = (select(i.c.last_payment_error).where(is_open, i.c.last_payment_error.is_not(None))
                  .order_by(i.c.period_start.desc(), i.c.id.desc()).limit(1).scalar_subquery())
    last_id = (select(i.c.id).where(i.c.tenant_id == pg.c.id, i.c.status != InvoiceStatus.DRAFT.value)
               .order_by(i.c.period_start.desc(), i.c.id.desc()).limit(1).scalar_subquery())
    # The oldest unpaid invoice is the one overdue days count from (the same order dunning uses: min(due_at)).
    oldest_id = (select(i.c.id).where(is_open).order_by(i.c.due_at.asc().nulls_last(), i.c.id).limit(1)
                 .scalar_subquery())
    li, oi = i.alias("li"), i.alias("oi")
    return (select(pg, balance.label("balance"), last_error.label("last_error"),
                   li.c.id.label("li_id"), li.c.number.label("li_number"), li.c.status.label("li_status"),
                   li.c.amount_due.label("li_amount"), li.c.currency.label("li_currency"),
                   li.c.period_start.label("li_period"), li.c.paid_at.label("li_paid_at"),
                   oi.c.id.label("oi_id"), oi.c.number.label("oi_number"), oi.c.due_at.label("oldest_due"),
                   owed(oi.c).label("oi_balance"), oi.c.currency.label("oi_currency"))
            .select_from(pg.outerjoin(li, li.c.id == last_id).outerjoin(oi, oi.c.id == oldest_id))
            .order_by(*ordering(pg.c.sort_key, pg.c.name_key, pg.c.id)))


def _row(r: Any) -> TenantRow:
    last = None
    if r.li_id is not None:
        last = LastInvoice(id=r.li_id, number=r.li_number, status=r.li_status, amount_due=int(r.li_amount),
                           currency=r.li_currency, period_start=r.li_period, paid_at=_aware(r.li_paid_at))
    oldest = _aware(r.oldest_due)
    oldest_day = clock.local_day(oldest) if oldest else None
    unpaid = None
    if r.oi_id is not None:
        unpaid = OldestUnpaid(id=r.oi_id, number=r.oi_number, due_on=oldest_day,
                              balance=max(0, int(r.oi_balance or 0)), currency=r.oi_currency)
    return TenantRow(
        id=r.id, name=r.name, status=r.status, plan_code=r.plan, plan_name=r.plan_name, currency=r.currency,
        balance=max(0, int(r.balance or 0)), oldest_due=oldest_day,
        overdue_days=r.overdue_days or 0, stage=r.dunning_stage, exempt_until=r.dunning_exempt_until,
        billing_error=r.billing_error, disputed=bool(r.disputed), last_payment_error=r.last_error,
        last_invoice=last, oldest_unpaid=unpaid)


def _aware(value: Any) -> datetime | None:
    # Scalar subqueries come back untyped: SQLite returns a string, PostgreSQL an aware datetime.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def tenant_page(query: TenantQuery, *, now: datetime | None = None) -> TenantPage:
    """One page of the system billing table: one statement (two only when the page is past the end)."""
    today = clock.today(now)
    rows = db.session.execute(_rows_statement(query, today=today)).all()
    if rows:
        total = int(rows[0].total)
    elif query.page > 1:  # past the last page: count so the pager can lead back
        total = _count(query, today)
    else:
        total = 0
    return TenantPage(query=query, rows=[_row(r) for r in rows], total=total)


def _count(query: TenantQuery, today: date) -> int:
    stmt = _rows_statement(replace(query, page=1, per_page=1), today=today)
    row = db.session.execute(stmt).first()
    return int(row.total) if row else 0


def tenant_row(tenant_id: int) -> TenantRow | None:
    """One tenant's row of the system billing table (the same statement, narrowed to the tenant)."""
    r = db.session.execute(_rows_statement(TenantQuery(), tenant_id=tenant_id)).first()
    return _row(r) if r else None


# -- the system billing overview: aged balance, collected this month, tenants per stage -----------------------

BUCKETS = [("0–14 days", 0, 14), ("14–30 days", 14, 30), ("30–45 days", 30, 45), ("45+ days", 45, None)]


@dataclass(frozen=True)
class Bucket:
    label: str
    amount: int
    invoices: int
    share: float  # of the currency's open balance, 0..100 (for the bar's width)


@dataclass(frozen=True)
class AgedBalance:
    currency: str
    buckets: list[Bucket]
    open_total: int
    collected_this_month: int


@dataclass(frozen=True)
class Overview:
    aged: list[AgedBalance]
    stage_counts: dict[str, int]
    month_start: date
    work_period: str | None = None  # the latest month of the pickers that still has tenants to invoice
    as_of: date | None = None  # the day the buckets count overdue days to (see overdue_as_of)

    @property
    def tenants(self) -> int:
        return sum(self.stage_counts.values())


def overdue_as_of(*, now: datetime | None = None) -> date:
    """The day the stored overdue days were counted to: the last dunning pass's as-of; today when none is overdue.

    Read back from the data the pass wrote (a tenant's overdue days = as-of − the billing-zone due date of its
    oldest open invoice), from the most overdue tenant: one statement, nothing extra to keep in step.
    """
    t, i = Tenant.__table__, Invoice.__table__
    oldest = (select(func.min(i.c.due_at)).where(i.c.tenant_id == t.c.id, i.c.status == InvoiceStatus.OPEN.value)
              .scalar_subquery())
    row = db.session.execute(select(t.c.overdue_days, oldest).where(t.c.overdue_days > 0, oldest.is_not(None))
                             .order_by(t.c.overdue_days.desc(), t.c.id).limit(1)).first()
    due = _aware(row[1]) if row else None
    if due is None:
        return clock.today(now)
    return clock.local_day(due) + timedelta(days=int(row[0]))


def tenant_as_of(row: TenantRow, *, now: datetime | None = None) -> date:
    """The day one tenant's overdue days were counted to (its last dunning evaluation); today when not overdue."""
    if row.overdue_days > 0 and row.oldest_due is not None:
        return row.oldest_due + timedelta(days=row.overdue_days)
    return clock.today(now)


def overview(*, now: datetime | None = None, as_of: date | None = None, periods: list[str] | None = None
             ) -> Overview:
    """Aged open balance (by days overdue as of `as_of`, default overdue_as_of()), money collected this month,
    tenants per stage and the month of `periods` (default period_choices()) that has work (see work_period):
    one statement (two without as_of)."""
    now = now or utcnow()
    today = clock.today(now)
    as_of = as_of or overdue_as_of(now=now)
    tz = clock.billing_tz()
    month_start, month_end = clock.month_bounds(today.year, today.month)
    m0, m1 = clock.day_start_utc(month_start, tz), clock.day_start_utc(month_end + timedelta(days=1), tz)
    i, t = Invoice.__table__, Tenant.__table__

    def not_yet_overdue(days: int):
        # overdue days < N ⟺ the billing-zone due date is after as_of − N ⟺ due at or after that day's end.
        return i.c.due_at >= clock.day_start_utc(as_of - timedelta(days=days - 1), tz)

    paid_this_month = and_(i.c.status == InvoiceStatus.PAID.value, i.c.paid_at >= m0, i.c.paid_at < m1)
    # One CASE per invoice picks its bucket (-1: paid this month); the sums are then per (currency, bucket).
    is_paid = i.c.status == InvoiceStatus.PAID.value
    whens = [(is_paid, -1), (or_(i.c.due_at.is_(None), not_yet_overdue(BUCKETS[0][2])), 0)]
    whens += [(not_yet_overdue(high), n) for n, (_label, _low, high) in enumerate(BUCKETS[1:-1], start=1)]
    bucket = case(*whens, else_=len(BUCKETS) - 1)
    amount = case((is_paid, i.c.amount_paid), else_=owed(i.c))
    money = (select(literal("money", String).label("kind"), i.c.currency.label("key"), bucket.label("bucket"),
                    func.sum(amount), func.count())
             .where(or_(i.c.status == InvoiceStatus.OPEN.value, paid_this_month))
             .group_by(i.c.currency, bucket))
    # Tenants per stage, split by the oldest picker month each was billable for (see work_period).
    choices = periods or period_choices(today)
    born = case(*[(t.c.created_at < _period_end(p), n) for n, p in reversed(list(enumerate(choices)))], else_=-1)
    tb = select(t.c.dunning_stage, born.label("born")).subquery("tb")
    stages = select(literal("stage", String), tb.c.dunning_stage, tb.c.born, func.count(), literal(0)) \
        .group_by(tb.c.dunning_stage, tb.c.born)
    seq = InvoiceSequence.__table__
    numbered = select(literal("numbered", String), seq.c.prefix, literal(0), seq.c.last_value, literal(0)) \
        .where(seq.c.prefix.in_([_number_prefix(p) for p in choices]))
    counts = {s: 0 for s in STAGES}
    sums: dict[str, dict[int, tuple[int, int]]] = {}
    billable_from: dict[int, int] = {}
    numbers: dict[str, int] = {}
    for kind, key, bkt, total, number in db.session.execute(union_all(money, stages, numbered)).all():
        if kind == "stage":
            counts[key] = counts.get(key, 0) + int(total or 0)
            billable_from[int(bkt)] = billable_from.get(int(bkt), 0) + int(total or 0)
        elif kind == "numbered":
            numbers[key] = int(total or 0)
        else:
            sums.setdefault(key, {})[int(bkt)] = (int(total or 0), int(number or 0))
    aged: list[AgedBalance] = []
    for currency, by_bucket in sorted(sums.items()):
        open_total = sum(v[0] for b, v in by_bucket.items() if b >= 0)
        buckets = [Bucket(label, by_bucket.get(n, (0, 0))[0], by_bucket.get(n, (0, 0))[1],
                          (100.0 * by_bucket.get(n, (0, 0))[0] / open_total) if open_total else 0.0)
                   for n, (label, _lo, _hi) in enumerate(BUCKETS)]
        aged.append(AgedBalance(currency=currency, buckets=buckets, open_total=open_total,
                                collected_this_month=by_bucket.get(-1, (0, 0))[0]))
    return Overview(aged=aged, stage_counts=counts, month_start=month_start,
                    work_period=work_period(choices, billable_from, numbers), as_of=as_of)


def _period_end(period: str) -> datetime:
    return period_end_utc(*clock.parse_period(period))


def _number_prefix(period: str) -> str:
    return f"{NUMBER_PREFIX}-{period}"


def work_period(choices: list[str], billable_from: dict[int, int], numbers: dict[str, int]) -> str | None:
    """The newest month in `choices` (newest first) with more billable tenants than numbered invoices.

    billable_from[n] counts the tenants billable from choices[n] on (created before its end; -1: none), so
    month n has Σ billable_from[k ≥ n] billable tenants. Numbered invoices are counted from invoice_sequences
    (one row per month), not from the invoices table: a voided and never re-issued invoice keeps its number, so
    such a month does not count as having work — a deliberate void is not work left undone.
    """
    billable = 0
    per_month = []
    for n in range(len(choices) - 1, -1, -1):
        billable += billable_from.get(n, 0)
        per_month.append((n, billable))
    for n, tenants in sorted(per_month):
        if tenants > numbers.get(_number_prefix(choices[n]), 0):
            return choices[n]
    return None


def tenant_work_period(tenant: Tenant, invoices: list[Invoice], periods: list[str]) -> str:
    """The month of `periods` (newest first) a force-run of one tenant defaults to: its newest billable month
    without a live invoice, else the newest (from invoices already loaded: no query)."""
    done = {inv.period_start.strftime("%Y-%m") for inv in invoices
            if inv.status not in (InvoiceStatus.VOID, InvoiceStatus.DRAFT)}
    for period in periods:
        if tenant.created_at < _period_end(period) and period not in done:
            return period
    return periods[0]


# -- billing runs ----------------------------------------------------------------------------------------------


def run_with_summary(run_id: int | None = None):
    """A billing run (the latest when no id is given) and its tenants by result and reason: one statement.

    Returns (run, summary) — (None, empty summary) when there is no such run.
    """
    wanted = run_id if run_id is not None else (
        select(BillingRun.id).order_by(BillingRun.id.desc()).limit(1).scalar_subquery())
    rows = db.session.execute(
        select(BillingRun, BillingRunOutcome.result, BillingRunOutcome.reason, BillingRunOutcome.tenants)
        .outerjoin(BillingRunOutcome, BillingRunOutcome.run_id == BillingRun.id)
        .where(BillingRun.id == wanted)).all()
    summary = RunSummary()
    for _run, result, reason, tenants in rows:
        if result is not None:
            summary.add(result, reason, tenants)
    return (rows[0][0] if rows else None), summary


# Charge attempts of a run that did not take the money, by the reason the run counted them under.
_ATTEMPT_REASONS = {"failed": "payment_failed", "action_required": "action_required", "error": "charge_retry"}


@dataclass(frozen=True)
class NamedOutcome:
    """One tenant a billing run could not settle, named, with what went wrong (for the run's result)."""

    tenant_id: int
    name: str
    message: str


def run_problems(run: BillingRun | None, summary: Any, *, limit: int = 50) -> dict[str, list[NamedOutcome]]:
    """The tenants behind a run's declines, authentications, retries and failures, by reason code.

    Read from what the run wrote, within the run's time window: its charge attempts (trigger "manual") on the
    run's month, and the billing errors it recorded ("invoice YYYY-MM: …", under the key "failed"). One
    statement, made only when the run counted such a tenant.
    """
    if run is None or not (summary.total("failed") or any(summary.count(r) for r in _ATTEMPT_REASONS.values())):
        return {}
    first = date(*clock.parse_period(run.period), 1)
    end = run.finished_at or utcnow()
    a, i, t = PaymentAttempt.__table__, Invoice.__table__, Tenant.__table__
    attempts = (select(t.c.id, t.c.name, a.c.status.label("kind"), a.c.error_message.label("message"),
                       a.c.created_at.label("at"))
                .select_from(a.join(i, i.c.id == a.c.invoice_id).join(t, t.c.id == a.c.tenant_id))
                .where(a.c.trigger == "manual", a.c.status.in_(list(_ATTEMPT_REASONS)), i.c.period_start == first,
                       a.c.created_at >= run.started_at, a.c.created_at <= end))
    prefix = f"invoice {run.period}: "
    failures = (select(t.c.id, t.c.name, literal("billing_error", String).label("kind"), t.c.billing_error,
                       t.c.billing_error_at)
                .where(t.c.billing_error.startswith(prefix, autoescape=True),
                       t.c.billing_error_at >= run.started_at, t.c.billing_error_at <= end))
    both = union_all(attempts, failures).subquery("p")
    rows = db.session.execute(select(both).order_by(both.c.at.desc()).limit(limit)).all()
    out: dict[str, list[NamedOutcome]] = {}
    seen: set[tuple[str, int]] = set()
    for tenant_id, name, kind, message, _at in rows:
        reason = _ATTEMPT_REASONS.get(kind, "failed")
        if (reason, tenant_id) in seen:  # the latest attempt says it
            continue
        seen.add((reason, tenant_id))
        text = (message or "").removeprefix(prefix).strip() or "no detail recorded"
        out.setdefault(reason, []).append(NamedOutcome(tenant_id, name, text))
    for named in out.values():
        named.sort(key=lambda n: n.name.lower())
    return out


@dataclass(frozen=True)
class HeadlinePart:
    """One reason of a run's one-line result: "1 payment declined: Dunmore Roofing — Your card was declined."."""

    code: str
    label: str
    tenants: int
    named: list[NamedOutcome]

    @property
    def unnamed(self) -> int:
        return max(0, self.tenants - len(self.named)) if self.named else 0


def run_headline(summary: Any, problems: Mapping[str, list[NamedOutcome]]) -> list[HeadlinePart]:
    """A run's result as one line of reasons, most telling first, naming the tenants it could not settle."""
    parts: list[HeadlinePart] = []
    failed = summary.reasons(RunResult.FAILED)
    for result in RunResult:
        for code, label, n in summary.reasons(result):
            named = list(problems.get(code, []))
            if result == RunResult.FAILED and len(failed) == 1:
                named = list(problems.get("failed", []))  # billing errors carry no reason code: one reason, theirs
            parts.append(HeadlinePart(code, label, n, named))
    if len(failed) > 1 and problems.get("failed"):
        parts.append(HeadlinePart("failed", "failed", summary.total(RunResult.FAILED), list(problems["failed"])))
    return parts


def failed_webhook_events(limit: int = 20) -> list[Any]:
    """Failed Stripe webhook events for the replay list, newest first."""
    return webhook_processing.failed_events(limit)


# -- months and force-runs -------------------------------------------------------------------------------------

def default_period(today: date | None = None) -> str:
    """The month a force-run defaults to: the previous calendar month in the billing zone."""
    year, month = clock.previous_month(today or clock.today())
    return f"{year:04d}-{month:02d}"


def period_choices(today: date | None = None, count: int = 12) -> list[str]:
    """The last `count` complete months, newest first (the force-run select)."""
    year, month = clock.previous_month(today or clock.today())
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out


@dataclass(frozen=True)
class ForceRun:
    """A tenant's invoice job for a month, as RQ knows it."""

    tenant_id: int
    period: str
    status: str  # idle (no such job), or RQ's: queued, started, deferred, scheduled, finished, failed, stopped, …
    outcome: Any = None  # what the job returned once finished (an InvoiceOutcome)

    @classmethod
    def of(cls, tenant_id: int, period: str, state: queue.JobState | None) -> ForceRun:
        return cls(tenant_id, period, state.status, state.result) if state else cls(tenant_id, period, "idle")


def force_run(tenant_id: int, period: str) -> ForceRun:
    """The state of a tenant's invoice job for a month (idle when RQ knows none)."""
    return ForceRun.of(tenant_id, period, queue.job_state(queue.invoice_job_id(tenant_id, period)))


def latest_force_runs(tenant_ids: list[int]) -> dict[int, ForceRun]:
    """Each tenant's latest force-run still known to RQ (two Redis round trips for any number of tenants).

    Redis trouble reads as "no force-run": the page still shows every tenant's billing state.
    """
    try:
        found = queue.latest_force_runs(tenant_ids)
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("could not read the latest force-runs", exc_info=True)
        return {}
    return {t: ForceRun.of(t, period, state) for t, (period, state) in found.items()}


def latest_force_run(tenant_id: int) -> ForceRun | None:
    """A tenant's latest force-run still known to RQ, if any."""
    return latest_force_runs([tenant_id]).get(tenant_id)


# -- the root's tenant page -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantDetail:
    row: TenantRow
    tenant: Tenant
    invoices: list[Invoice]
    audits: list[AuditLog]
    as_of: date  # the day the overdue days were counted to (see tenant_as_of)
    stage_since: date | None  # the as-of day of the dunning evaluation that put the tenant on its stage


def tenant_detail(tenant_id: int, *, invoices: int = 24, audits: int = 20, now: datetime | None = None
                  ) -> TenantDetail | None:
    """Everything the root's tenant billing page shows: the row, recent invoices and the audit trail."""
    row = tenant_row(tenant_id)
    if row is None:
        return None
    tenant = db.session.get(Tenant, tenant_id)
    invs = list(db.session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id)
                                   .order_by(Invoice.period_start.desc(), Invoice.id.desc()).limit(invoices)))
    trail = list(db.session.scalars(select(AuditLog).where(AuditLog.tenant_id == tenant_id)
                                    .order_by(AuditLog.id.desc()).limit(audits)))
    since = None
    if tenant.dunning_stage != DunningStage.OK:
        # The day the pass counted to, not the moment it ran: a pass run with --as-of dates its changes then.
        since = db.session.scalar(select(DunningEvent.as_of).where(
            DunningEvent.tenant_id == tenant_id, DunningEvent.to_stage == tenant.dunning_stage)
            .order_by(DunningEvent.id.desc()).limit(1))
        if since is None and tenant.dunning_stage_since is not None:
            since = clock.local_day(tenant.dunning_stage_since)
    return TenantDetail(row=row, tenant=tenant, invoices=invs, audits=trail, as_of=tenant_as_of(row, now=now),
                        stage_since=since)
