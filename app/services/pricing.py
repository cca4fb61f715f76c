"""How an invoice is computed (CONTRACT §4).

`compute_lines` is pure: plan terms and usage in, line drafts out. `period_lines` computes every tenant's lines
for a month from ONE aggregate over usage_rollups_daily (GROUP BY tenant, metric), then applies the same pure
function per tenant, so a single tenant's invoice and the monthly run for 10,000 tenants share one code path.

Money: amounts are integers in the currency's minor units; unit prices are Decimals in major units;
each usage line is rounded exactly once, half-up.

Plan changes (CONTRACT §8.1): a month's fee lines are one per plan in force during it, each
`round_half_up(monthly_fee × days_in_force / days_in_month)`; usage is priced by the plan in force on the
month's last day. `plan_spans` (pure) reads the plan history; `period_lines` loads it for every tenant at once.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from sqlalchemy import func, select

# ISO 4217 minor-unit exponents that differ from 2 (Stripe's zero- and three-decimal currencies).
_EXPONENTS: dict[str, int] = {
    **{c: 0 for c in ("bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
                      "xaf", "xof", "xpf")},
    **{c: 3 for c in ("bhd", "jod", "kwd", "omr", "tnd")},
}

METRIC_LABELS: dict[str, str] = {
    "voice_minutes": "Voice minutes",
    "sms_outbound": "Outbound SMS",
    "sms_inbound": "Inbound SMS",
}


class PlanTerms(Protocol):
    code: str
    name: str
    currency: str
    monthly_fee: int


class PriceTerms(Protocol):
    metric: str
    included: int
    unit_price: Decimal


@dataclass(frozen=True)
class Terms:
    """A plain plan or price record (what `period_lines` builds from SQL rows)."""

    code: str = ""
    name: str = ""
    currency: str = "usd"
    monthly_fee: int = 0
    metric: str = ""
    included: int = 0
    unit_price: Decimal = Decimal(0)


@dataclass(slots=True)
class LineDraft:
    """One invoice line before it is stored: metric None is the plan fee line."""

    metric: str | None
    quantity: int  # billable quantity (1 for the plan fee)
    used_quantity: int
    included: int
    unit_price: Decimal  # major units
    amount: int  # minor units, rounded once
    description: str
    period_start: date
    period_end: date  # inclusive


def currency_exponent(currency: str) -> int:
    """Return the number of minor-unit digits of a currency (2 for USD, 0 for JPY)."""
    return _EXPONENTS.get(currency.lower(), 2)


def usage_amount(billable: int, unit_price: Decimal, currency: str) -> int:
    """Return billable × unit price in minor units, rounded half-up once."""
    return _round_amount(billable, Decimal(unit_price), _scale(currency))


def _scale(currency: str) -> Decimal:
    return Decimal(10) ** currency_exponent(currency)


def _round_amount(billable: int, unit_price: Decimal, scale: Decimal) -> int:
    # The exact product (Decimal multiplication of these magnitudes is exact), rounded once.
    return int((billable * unit_price * scale).to_integral_value(rounding=ROUND_HALF_UP))


@lru_cache(maxsize=1024)
def format_major(amount: Decimal | int, currency: str, *, minor: bool = False) -> str:
    """Format an amount for a line description: minor units (minor=True) or a major-unit unit price."""
    exp = currency_exponent(currency)
    value = Decimal(amount).scaleb(-exp) if minor else Decimal(amount)
    if not minor:
        # Unit prices keep their significant sub-cent digits but never show fewer than the currency's.
        value = value.normalize()
        if -value.as_tuple().exponent < exp:  # type: ignore[operator]
            value = value.quantize(Decimal(1).scaleb(-exp))
    else:
        value = value.quantize(Decimal(1).scaleb(-exp))
    return f"{value:,f} {currency.upper()}"


@lru_cache(maxsize=256)
def _month_label(day: date) -> str:
    return day.strftime("%B %Y")


@dataclass(frozen=True)
class Span:
    """A plan in force for some days of a period: `days` days in all, the first on `first`, the last on `last`."""

    plan: str
    days: int
    first: date
    last: date


@dataclass(frozen=True)
class Change:
    """One plan change: `to_plan` from the start of `effective_on` (what `plan_spans` reads)."""

    effective_on: date
    from_plan: str
    to_plan: str


def plan_on(day: date, changes: Sequence[Change], current_plan: str) -> str:
    """The plan in force on a day: the latest change on or before it, else the plan the first change left."""
    ordered = sorted(changes, key=lambda c: c.effective_on)
    before = [c for c in ordered if c.effective_on <= day]
    if before:
        return before[-1].to_plan
    return ordered[0].from_plan if ordered else current_plan


def plan_spans(changes: Sequence[Change], current_plan: str, period_start: date, period_end: date) -> list[Span]:
    """Each plan in force during a period with its days in force, in the order each first applied."""
    days: dict[str, list[date]] = {}
    ordered = sorted(changes, key=lambda c: c.effective_on)
    day = period_start
    while day <= period_end:
        days.setdefault(plan_on(day, ordered, current_plan), []).append(day)
        day += timedelta(days=1)
    return [Span(code, len(ds), ds[0], ds[-1]) for code, ds in days.items()]


def prorated_fee(monthly_fee: int, days_in_force: int, days_in_period: int) -> int:
    """round_half_up(monthly_fee × days_in_force / days_in_period), in minor units (CONTRACT §8.1)."""
    exact = Decimal(int(monthly_fee)) * days_in_force / Decimal(days_in_period)
    return int(exact.to_integral_value(rounding=ROUND_HALF_UP))


def fee_lines(spans: Sequence[tuple[PlanTerms, Span]], period_start: date, period_end: date) -> list[LineDraft]:
    """One fee line per plan in force: the whole fee for a whole period, else its prorated share."""
    month = _month_label(period_start)
    period_days = (period_end - period_start).days + 1
    lines = []
    for plan, span in spans:
        exp = currency_exponent(plan.currency)
        if span.days >= period_days:
            amount, description = int(plan.monthly_fee), f"{plan.name} plan, {month}"
        else:
            amount = prorated_fee(plan.monthly_fee, span.days, period_days)
            description = (f"{plan.name} plan, {month}: {span.days} of {period_days} days "
                           f"({span.first:%b} {span.first.day}–{span.last:%b} {span.last.day})")
        lines.append(LineDraft(metric=None, quantity=1, used_quantity=0, included=0,
                               unit_price=Decimal(amount).scaleb(-exp), amount=amount, description=description,
                               period_start=span.first, period_end=span.last))
    return lines


def compute_lines(plan: PlanTerms, prices: Iterable[PriceTerms], usage_by_metric: Mapping[str, int],
                  period_start: date, period_end: date, *,
                  fees: Sequence[tuple[PlanTerms, Span]] | None = None) -> list[LineDraft]:
    """Compute a month's invoice lines: the fee line(s), then one line per priced metric with usage (CONTRACT §4).

    `plan` (the plan in force on the period's last day) prices the usage; `fees` are the plans in force and
    their days (see plan_spans) — without it, `plan` was in force all month.
    """
    month = _month_label(period_start)
    currency = plan.currency
    exp = currency_exponent(currency)
    scale = Decimal(10) ** exp
    whole = Span(plan.code, (period_end - period_start).days + 1, period_start, period_end)
    lines = fee_lines(fees or [(plan, whole)], period_start, period_end)
    for price in sorted(prices, key=lambda p: p.metric):
        used = int(usage_by_metric.get(price.metric, 0) or 0)
        if used <= 0:
            continue  # no usage in the month: no line for this metric
        included = int(price.included)
        billable = max(0, used - included)
        unit = Decimal(price.unit_price)
        label = METRIC_LABELS.get(price.metric) or price.metric.replace("_", " ").capitalize()
        lines.append(LineDraft(
            metric=price.metric, quantity=billable, used_quantity=used, included=included,
            unit_price=unit, amount=_round_amount(billable, unit, scale),
            description=(f"{label}, {month}: {used:,} used, {included:,} included, "
                         f"{billable:,} billable × {format_major(unit, currency)}"),
            period_start=period_start, period_end=period_end,
        ))
    return lines


def total(lines: Iterable[LineDraft]) -> int:
    """Return the invoice total: the sum of the already-rounded line amounts."""
    return sum(line.amount for line in lines)


@dataclass(frozen=True)
class TenantLines:
    tenant_id: int
    plan: Terms
    lines: list[LineDraft]

    @property
    def amount_due(self) -> int:
        return total(self.lines)


def period_lines(period_start: date, period_end: date, *, tenant_ids: Iterable[int] | None = None,
                 created_before: datetime | None = None) -> dict[int, TenantLines]:
    """Compute every tenant's lines for a period with one aggregate over the rollups; keyed by tenant id.

    tenant_ids narrows the run (one tenant for a single invoice); created_before leaves out tenants that did
    not exist yet. Tenants with no usage get their plan fee line only.
    """
    from app.extensions import db
    from app.models import Plan, PlanPrice, Tenant, UsageRollupDaily

    r = UsageRollupDaily.__table__
    t = Tenant.__table__
    ids = None if tenant_ids is None else list(tenant_ids)

    usage = (
        select(r.c.tenant_id, r.c.metric, func.sum(r.c.quantity).label("used"))
        .where(r.c.day >= period_start, r.c.day <= period_end)
        .group_by(r.c.tenant_id, r.c.metric)
    )
    if ids is not None:
        usage = usage.where(r.c.tenant_id.in_(ids))
    usage = usage.subquery("u")
    # Tenants without usage still come out (once, metric NULL): they owe the plan fee.
    stmt = (
        select(t.c.id, t.c.plan, usage.c.metric, usage.c.used)
        .select_from(t)
        .outerjoin(usage, usage.c.tenant_id == t.c.id)
    )
    if ids is not None:
        stmt = stmt.where(t.c.id.in_(ids))
    if created_before is not None:
        stmt = stmt.where(t.c.created_at < created_before)

    plans = {p.code: Terms(code=p.code, name=p.name, currency=p.currency, monthly_fee=p.monthly_fee)
             for p in db.session.execute(select(Plan.code, Plan.name, Plan.currency, Plan.monthly_fee))}
    prices: dict[tuple[str, str], Terms] = {
        (p.plan_code, p.metric): Terms(metric=p.metric, included=p.included, unit_price=p.unit_price)
        for p in db.session.execute(select(PlanPrice.plan_code, PlanPrice.metric, PlanPrice.included,
                                           PlanPrice.unit_price))}
    history = plan_history(ids)
    grouped: dict[int, tuple[list[Span], str, list[Terms], dict[str, int]]] = {}
    for tenant_id, current_plan, metric, used in db.session.execute(stmt).all():
        entry = grouped.get(tenant_id)
        if entry is None:
            changes = history.get(tenant_id, [])
            spans = (plan_spans(changes, current_plan, period_start, period_end) if changes
                     else [Span(current_plan, (period_end - period_start).days + 1, period_start, period_end)])
            entry = grouped[tenant_id] = (spans, plan_on(period_end, changes, current_plan), [], {})
        usage_plan = entry[1]
        if metric is not None and (usage_plan, metric) in prices:  # a metric the plan does not price: not billed
            entry[2].append(prices[(usage_plan, metric)])
            entry[3][metric] = int(used)
    return {
        tenant_id: TenantLines(tenant_id, plans[usage_plan],
                               compute_lines(plans[usage_plan], terms, used, period_start, period_end,
                                             fees=[(plans[sp.plan], sp) for sp in spans]))
        for tenant_id, (spans, usage_plan, terms, used) in grouped.items()
    }


def plan_history(tenant_ids: Iterable[int] | None = None) -> dict[int, list[Change]]:
    """Every recorded plan change of the given tenants (all when None), oldest first, keyed by tenant id."""
    from app.extensions import db
    from app.models import PlanChange

    stmt = select(PlanChange.tenant_id, PlanChange.effective_on, PlanChange.from_plan, PlanChange.to_plan
                  ).order_by(PlanChange.tenant_id, PlanChange.effective_on)
    if tenant_ids is not None:
        stmt = stmt.where(PlanChange.tenant_id.in_(list(tenant_ids)))
    out: dict[int, list[Change]] = {}
    for tenant_id, effective_on, from_plan, to_plan in db.session.execute(stmt):
        out.setdefault(tenant_id, []).append(Change(effective_on, from_plan, to_plan))
    return out
