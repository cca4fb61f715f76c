"""Read models for the billing pages: what the tenant billing page and the root system billing page show.

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

Force-run status is read from the RQ job with the deterministic id the monthly tick also uses, so a force-run
and a scheduled run of the same tenant and month are one job; each tenant's latest force-run is remembered
(as long as RQ keeps the job's result) so the pages show it again after a reload.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import String, and_, case, func, literal, or_, select, union_all

from app.extensions import db
from app.models import (AuditLog, BillingRun, BillingRunOutcome, DunningStage, Invoice, InvoiceSequence,
                        InvoiceStatus, Plan, PlanPrice, Tenant, owed, utcnow)
from app.services import clock, pricing
from app.services.usage import month_usage

#: The HX-Trigger event an action's answer raises when billing figures changed: every region of the page marked
#: `data-live` then refreshes from one fresh render of the page (app/static/app.js), so the page equals a reload.
BILLING_CHANGED = "billing-changed"

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
class TenantPage:
    query: TenantQuery
    rows: list[TenantRow]
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))

    @property
    def first_index(self) -> int:
        return (self.query.page - 1) * self.query.per_page + 1 if self.rows else 0

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.rows) - 1 if self.rows else 0


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
        from datetime import timezone

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


def overview(*, now: datetime | None = None, as_of: date | None = None) -> Overview:
    """Aged open balance (by days overdue as of `as_of`, default overdue_as_of()), money collected this month,
    tenants per stage and the month that has work (see work_period): one statement (two without as_of)."""
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
    choices = period_choices(today)
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
    from app.services.invoicing import period_end_utc

    return period_end_utc(*clock.parse_period(period))


def _number_prefix(period: str) -> str:
    from app.services.invoicing import NUMBER_PREFIX

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


def tenant_work_period(tenant: Tenant, invoices: list[Invoice], today: date | None = None) -> str:
    """The month a force-run of one tenant defaults to: its newest billable month without a live invoice, else
    the previous month (from invoices already loaded: no query)."""
    done = {inv.period_start.strftime("%Y-%m") for inv in invoices
            if inv.status not in (InvoiceStatus.VOID, InvoiceStatus.DRAFT)}
    choices = period_choices(today)
    for period in choices:
        if tenant.created_at < _period_end(period) and period not in done:
            return period
    return choices[0]

def latest_run() -> BillingRun | None:
    """The most recent "run all tenants" (for its progress bar)."""
    return db.session.scalar(select(BillingRun).order_by(BillingRun.id.desc()).limit(1))


def run_with_summary(run_id: int | None = None):
    """A billing run (the latest when no id is given) and its tenants by result and reason: one statement.

    Returns (run, summary) — (None, empty summary) when there is no such run.
    """
    from app.services.invoicing import RunSummary

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
    from app.models import PaymentAttempt

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
        out.setdefault(reason, []).append(NamedOutcome(tenant_id, name, _sentence(text)))
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
    from app.services.invoicing import RunResult

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


def failed_webhook_events(limit: int = 20) -> list[Any] | None:
    """Failed Stripe webhook events for the replay list, or None while the webhook service is not installed."""
    try:
        from app.services import webhooks
    except ImportError:
        return None
    fn = getattr(webhooks, "failed_events", None)
    return None if fn is None else list(fn(limit))


# -- periods and force-runs ------------------------------------------------------------------------------------

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


def parse_period_input(text: str | None, today: date | None = None) -> str:
    """Validate a YYYY-MM period a root admin asked to invoice; ValueError with a message people can read."""
    text = (text or "").strip()
    try:
        year, month = clock.parse_period(text)
    except ValueError:
        raise ValueError("Enter the month as YYYY-MM, for example 2026-09.") from None
    if len(text) != 7 or year < 2000:
        raise ValueError("Enter the month as YYYY-MM, for example 2026-09.")
    latest = default_period(today)
    period = f"{year:04d}-{month:02d}"
    if period > latest:
        raise ValueError(f"{period} has not ended yet: the latest month you can invoice is {latest}.")
    return period


POLLING_STATES = ("queued", "started", "deferred", "scheduled")


@dataclass(frozen=True)
class ForceRun:
    """What the force-run status component shows for one tenant and month."""

    tenant_id: int
    period: str
    state: str  # idle (no job), queued, started, deferred, scheduled, finished, failed
    message: str = ""
    tone: str = "info"  # info, ok, bad — the badge colour

    @property
    def polling(self) -> bool:
        return self.state in POLLING_STATES

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")


def force_run_job_id(tenant_id: int, period: str) -> str:
    """The invoice job's id for a tenant and month (shared with the monthly tick: one job, never two)."""
    return f"invoice-{tenant_id}-{period}"


_LAST_FORCE_RUN_TTL = 3600  # as long as enqueue_unique keeps a finished job's result (result_ttl)


def _last_force_run_key(tenant_id: int) -> str:
    return f"servicepro:force-run-last:{tenant_id}"


def enqueue_force_run(tenant_id: int, period: str) -> ForceRun:
    """Queue the invoice job for a tenant and month, or return the one already queued or running."""
    from app.extensions import rq
    from app.jobs import enqueue_unique

    job = enqueue_unique("billing", "app.jobs.invoice_tenant", tenant_id, period, "force_run",
                         job_id=force_run_job_id(tenant_id, period))
    # Remembered so the pages show this force-run again after a reload, whichever month they offer by default.
    rq.connection.set(_last_force_run_key(tenant_id), period, ex=_LAST_FORCE_RUN_TTL)
    return _from_job(tenant_id, period, job)


def force_run_status(tenant_id: int, period: str) -> ForceRun:
    """The state of a tenant's invoice job for a month, read from RQ (idle when there is none)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from app.extensions import rq

    try:
        job = Job.fetch(force_run_job_id(tenant_id, period), connection=rq.connection)
    except NoSuchJobError:
        return ForceRun(tenant_id, period, "idle")
    return _from_job(tenant_id, period, job)


def last_force_runs(tenant_ids: list[int]) -> dict[int, ForceRun]:
    """Each tenant's latest force-run still known to RQ (two Redis round trips for any number of tenants).

    Redis trouble reads as "no force-run": the page still shows every tenant's billing state.
    """
    from rq.job import Job

    from app.extensions import rq

    if not tenant_ids:
        return {}
    try:
        periods = rq.connection.mget([_last_force_run_key(t) for t in tenant_ids])
        wanted = [(t, p.decode()) for t, p in zip(tenant_ids, periods, strict=True) if p]
        if not wanted:
            return {}
        jobs = Job.fetch_many([force_run_job_id(t, p) for t, p in wanted], connection=rq.connection)
        return {t: _from_job(t, p, job, refresh=False) for (t, p), job in zip(wanted, jobs, strict=True)
                if job is not None}
    except Exception:  # noqa: BLE001 - see the docstring
        import logging

        logging.getLogger(__name__).warning("could not read the latest force-runs", exc_info=True)
        return {}


def last_force_run(tenant_id: int) -> ForceRun | None:
    """A tenant's latest force-run still known to RQ, if any."""
    return last_force_runs([tenant_id]).get(tenant_id)


def _from_job(tenant_id: int, period: str, job: Any, *, refresh: bool = True) -> ForceRun:
    status = job.get_status(refresh=refresh)
    status = str(getattr(status, "value", status) or "queued")  # rq's JobStatus enum, or a plain string
    if status in POLLING_STATES:
        return ForceRun(tenant_id, period, status,
                        "Running…" if status == "started" else "Queued, waiting for a worker…")
    if status == "finished":
        message, tone = describe_outcome(job.return_value())
        return ForceRun(tenant_id, period, "finished", message, tone)
    return ForceRun(tenant_id, period, "failed", f"The job {status}: see the worker log.", "bad")


def describe_outcome(outcome: Any) -> tuple[str, str]:
    """A sentence and a tone for an InvoiceOutcome (the invoice job's result)."""
    if outcome is None:
        return "Finished.", "info"
    from app.services.invoicing import REASON_LABELS, Reason

    result = str(getattr(outcome, "result", ""))
    payment = getattr(outcome, "payment", None)
    status = getattr(outcome, "invoice_status", None)
    reason = getattr(outcome, "reason", None)
    code = getattr(outcome, "code", None)  # absent from results of jobs queued before reasons existed
    if result == "failed":
        if code == Reason.STRIPE_UNREACHABLE:
            return "Stripe is not reachable: nothing was invoiced or charged; the next run retries.", "bad"
        label = REASON_LABELS.get(code) if code not in (None, Reason.ERROR) else None
        return f"Invoicing failed{f' ({label})' if label else ''}: {reason or 'unknown error'}", "bad"
    if payment == "succeeded" or (payment is None and status == InvoiceStatus.PAID.value and result == "invoiced"):
        return "Invoiced and paid.", "ok"
    if payment == "failed":
        return f"Invoiced; payment failed: {reason or 'declined'}", "bad"
    if payment == "action_required":
        return f"Invoiced; the customer must authenticate the payment: {reason or ''}".rstrip(": "), "bad"
    if payment == "error":
        return f"Invoiced; the charge could not be made now and will be retried ({reason or 'Stripe error'}).", \
            "bad"
    if result == "skipped":
        if code == Reason.CREATED_AFTER_PERIOD:
            period = getattr(outcome, "period", "")
            return f"Nothing to do: the tenant was created after {period}, so it is not billed for it.", "info"
        if code in (Reason.CHARGE_RETRY, Reason.STRIPE_REFUSED):
            return f"Not charged now: {reason}", "bad"
        shown = f" (invoice {status})" if status else ""
        why = REASON_LABELS.get(code) or reason or "already done"
        return f"Nothing to do: {why}{shown}.", "ok" if status == "paid" else "info"
    return f"Invoiced{f' ({status})' if status else ''}.", "ok" if status == "paid" else "info"


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
    from app.models import DunningEvent

    row = tenant_row(tenant_id)
    if row is None:
        return None
    tenant = db.session.get(Tenant, tenant_id)
    invs = list(db.session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id)
                                   .order_by(Invoice.period_start.desc(), Invoice.id.desc()).limit(invoices)))
    log = list(db.session.scalars(select(AuditLog).where(AuditLog.tenant_id == tenant_id)
                                  .order_by(AuditLog.id.desc()).limit(audits)))
    since = None
    if tenant.dunning_stage != DunningStage.OK:
        # The day the pass counted to, not the moment it ran: a pass run with --as-of dates its changes then.
        since = db.session.scalar(select(DunningEvent.as_of).where(
            DunningEvent.tenant_id == tenant_id, DunningEvent.to_stage == tenant.dunning_stage)
            .order_by(DunningEvent.id.desc()).limit(1))
        if since is None and tenant.dunning_stage_since is not None:
            since = clock.local_day(tenant.dunning_stage_since)
    return TenantDetail(row=row, tenant=tenant, invoices=invs, audits=log, as_of=tenant_as_of(row, now=now),
                        stage_since=since)


# -- the tenant billing page ------------------------------------------------------------------------------------

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
    def from_args(cls, args: Mapping[str, str], tenant_id: int | None = None) -> InvoiceQuery:
        """Read ?page=; anything unusable is page 1 (never an error)."""
        return cls(page=max(1, min(_int(args.get("page"), 1), 1_000_000)), tenant_id=tenant_id)

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
class InvoicePage:
    """One page of a tenant's invoices, newest first; page 1 also lists older invoices still open (to pay them)."""

    query: InvoiceQuery
    rows: list[Invoice]
    total: int
    older_open: list[Invoice] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))

    @property
    def first_index(self) -> int:
        return (self.query.page - 1) * self.query.per_page + 1 if self.rows else 0

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.rows) - 1 if self.rows else 0


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
    from app.services.invoicing import billing_status

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
        oldest = _aware(db.session.scalar(select(func.min(Invoice.due_at)).where(
            Invoice.tenant_id == tenant.id, Invoice.status == InvoiceStatus.OPEN)))
        if oldest is not None:
            return clock.local_day(oldest) + timedelta(days=tenant.overdue_days)
    return clock.today(now)


def days_overdue(invoice: Invoice, as_of: date) -> int:
    """Days an open invoice is overdue as of a day (0 when not open or not yet due)."""
    if invoice.status != InvoiceStatus.OPEN or invoice.due_at is None:
        return 0
    return max(0, (as_of - clock.local_day(invoice.due_at)).days)


def balance_due(tenant_id: int) -> int:
    """What a tenant owes on its open invoices now."""
    total = db.session.scalar(
        select(func.coalesce(func.sum(owed(Invoice)), 0))
        .where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN))
    return max(0, int(total or 0))


def can_pay_now(invoice: Invoice) -> bool:
    """Whether the tenant can retry an invoice's charge from the billing page."""
    return invoice.status == InvoiceStatus.OPEN and invoice.balance > 0 and bool(invoice.stripe_invoice_id)


# -- the tenant's own actions (views stay free of Stripe and payment logic) -----------------------------------

@dataclass(frozen=True)
class PayResult:
    """The outcome of a "Pay now" or a post-card-update retry, worded for the tenant."""

    ok: bool
    message: str
    invoice: Invoice | None = None
    hosted_url: str | None = None  # where to authenticate, when the bank asks for it
    tone: str = ""  # the flash category when neither success nor error fits ("info")

    @property
    def category(self) -> str:
        return self.tone or ("success" if self.ok else "error")


def pay_now(invoice_id: int, *, now: datetime | None = None) -> PayResult:
    """Retry the charge of one open invoice right now (trigger "pay_now"); never raises."""
    from app.services.payments import SKIPPED, charge_invoice

    try:
        attempt = charge_invoice(invoice_id, trigger="pay_now", now=now)
    except Exception:  # noqa: BLE001 - the page must answer even when Stripe or the database hiccups
        db.session.rollback()
        import logging

        logging.getLogger(__name__).exception("pay now of invoice %s failed", invoice_id)
        return PayResult(False, "We could not reach the payment provider. Nothing was charged; please try again "
                                "in a few minutes.", db.session.get(Invoice, invoice_id))
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice_id)
    status = attempt.status
    if invoice is not None and invoice.status == InvoiceStatus.PAID:
        return PayResult(True, "Paid — thank you." if status != SKIPPED else "This invoice is already paid.",
                         invoice)
    if status == "failed":
        return PayResult(False, f"The payment was declined: {_sentence(attempt.error_message or 'card declined')} "
                                "Update your payment method and try again.", invoice)
    if status == "action_required":
        return PayResult(False, "Your bank asks you to confirm this payment. Pay it on the secure invoice page.",
                         invoice, invoice.hosted_invoice_url if invoice else None)
    if status == "error":
        return PayResult(False, "The payment provider could not take the payment just now; it will be retried "
                                "automatically.", invoice)
    if status == SKIPPED:
        why = attempt.error_message or "nothing to charge"
        return PayResult(False, f"Not charged: {why}.", invoice)
    return PayResult(False, "The payment did not go through.", invoice)


def _open_invoice_ids(tenant_id: int) -> list[int]:
    return list(db.session.scalars(
        select(Invoice.id).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)
        .order_by(Invoice.period_start, Invoice.id).limit(50)))


def _default_card(tenant_id: int) -> str | None:
    """The tenant's default payment method in Stripe; None when unknown (no customer, or Stripe unreachable)."""
    from app import stripe_gateway

    customer = db.session.scalar(select(Tenant.stripe_customer_id).where(Tenant.id == tenant_id))
    if not customer:
        return None
    try:
        return stripe_gateway.default_payment_method(customer)
    except Exception:  # noqa: BLE001 - only used to word a message; never blocks the card update
        return None


def card_update_snapshot(tenant_id: int) -> dict[str, Any]:
    """What the tenant had before going to the portal (default card, open invoices): the return's message
    compares with it, so it tells what actually changed (a webhook may have charged in between)."""
    return {"card": _default_card(tenant_id), "open": _open_invoice_ids(tenant_id)}


def retry_after_card_update(tenant_id: int, before: Mapping[str, Any] | None = None, *,
                            now: datetime | None = None) -> PayResult:
    """Charge a tenant's open invoices at once after a card change; the result worded for the tenant, true to
    what happened since `before` (card_update_snapshot at the portal's opening)."""
    from app.services.payments import retry_open_invoices

    before = before or {}
    card_before = before.get("card")
    if card_before and _default_card(tenant_id) == card_before:
        count = len(_open_invoice_ids(tenant_id))
        still = f" {count} invoice{'s are' if count > 1 else ' is'} still open." if count else ""
        return PayResult(False, "Your payment method was not changed." + still, tone="info")
    were_open = set(before.get("open") or []) | set(_open_invoice_ids(tenant_id))
    try:
        retry_open_invoices(tenant_id, trigger="card_updated", now=now)
    except Exception:  # noqa: BLE001 - the new card is saved either way; the scheduled retries will follow
        db.session.rollback()
        import logging

        logging.getLogger(__name__).exception("retrying tenant %s's open invoices failed", tenant_id)
        return PayResult(False, "Your payment method was updated, but we could not reach the payment provider "
                                "to charge your open invoices. They will be retried automatically.")
    db.session.expire_all()
    still_open = list(db.session.scalars(
        select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)
        .order_by(Invoice.period_start)))
    if not still_open:
        if not were_open:
            return PayResult(True, "Your payment method was updated. Nothing was due, so nothing was charged.")
        return PayResult(True, "Your payment method was updated and every open invoice is paid. Thank you!")
    errors = [inv.last_payment_error for inv in still_open if inv.last_payment_error]
    detail = f" ({errors[-1].strip().rstrip('.')})" if errors else ""
    count = len(still_open)
    return PayResult(False, f"Your payment method was updated, but {count} invoice{'s' if count > 1 else ''} "
                            f"could not be charged{detail}. Try another card or pay on the invoice page.")


def payment_portal_url(tenant_id: int, return_url: str) -> str:
    """A fresh Stripe Customer Portal session (payment-method update) for a tenant; creates the customer if needed."""
    from app import stripe_gateway
    from app.services.customers import ensure_customer

    return stripe_gateway.portal_session_url(ensure_customer(tenant_id), return_url)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def format_unit_price(unit_price: Any, currency: str) -> str:
    """A plan's unit price for people: "$0.015" for USD, "0.015 EUR" otherwise (sub-cent digits kept)."""
    text = pricing.format_major(unit_price, currency)
    amount, _, code = text.partition(" ")
    return f"${amount}" if code.lower() == "usd" else text
