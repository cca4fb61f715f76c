"""How an invoice is computed (CONTRACT §4).

`compute_lines` is pure: plan terms and usage in, line drafts out. `period_lines` computes every tenant's lines
for a month from ONE aggregate over usage_rollups_daily (GROUP BY tenant, metric), then applies the same pure
function per tenant, so a single tenant's invoice and the monthly run for 10,000 tenants share one code path.

Money: amounts are integers in the currency's minor units; unit prices are Decimals in major units;
each usage line is rounded exactly once, half-up.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from sqlalchemy import and_, func, select

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


def compute_lines(plan: PlanTerms, prices: Iterable[PriceTerms], usage_by_metric: Mapping[str, int],
                  period_start: date, period_end: date) -> list[LineDraft]:
    """Compute a month's invoice lines: the plan fee, then one line per priced metric with usage (CONTRACT §4)."""
    month = _month_label(period_start)
    currency = plan.currency
    exp = currency_exponent(currency)
    scale = Decimal(10) ** exp
    lines = [LineDraft(
        metric=None, quantity=1, used_quantity=0, included=0,
        unit_price=Decimal(plan.monthly_fee).scaleb(-exp),
        amount=int(plan.monthly_fee),
        description=f"{plan.name} plan, {month}",
        period_start=period_start, period_end=period_end,
    )]
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
    pp = PlanPrice.__table__
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
        select(t.c.id, t.c.plan, pp.c.metric, usage.c.used)
        .select_from(t)
        .outerjoin(usage, usage.c.tenant_id == t.c.id)
        .outerjoin(pp, and_(pp.c.plan_code == t.c.plan, pp.c.metric == usage.c.metric))
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
    grouped: dict[int, tuple[str, list[Terms], dict[str, int]]] = {}
    for tenant_id, plan_code, metric, used in db.session.execute(stmt).all():
        entry = grouped.get(tenant_id)
        if entry is None:
            entry = grouped[tenant_id] = (plan_code, [], {})
        if metric is not None:  # usage of a metric the plan does not price is not billed
            entry[1].append(prices[(plan_code, metric)])
            entry[2][metric] = int(used)
    return {
        tenant_id: TenantLines(tenant_id, plans[plan_code],
                               compute_lines(plans[plan_code], terms, used, period_start, period_end))
        for tenant_id, (plan_code, terms, used) in grouped.items()
    }
