"""Pricing (CONTRACT §4) checked against an independent computation with exact fractions."""
from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.services import pricing
from app.services.pricing import Terms, compute_lines, currency_exponent
from app.services.usage import record_events, rollup_day
from tests.billing_support import add_usage
from tests.factories import make_tenant, utc

OCT = (date(2026, 10, 1), date(2026, 10, 31))
STARTER = Terms(code="starter", name="Starter", currency="usd", monthly_fee=2900)
STARTER_PRICES = [Terms(metric="voice_minutes", included=500, unit_price=Decimal("0.0150")),
                  Terms(metric="sms_outbound", included=500, unit_price=Decimal("0.0125")),
                  Terms(metric="sms_inbound", included=1000, unit_price=Decimal("0.0050"))]


def expected_amount(used: int, included: int, unit_price: str, exponent: int = 2) -> int:
    """The contract's formula with exact rationals and a hand-written half-up (amounts are never negative)."""
    exact = Fraction(max(0, used - included)) * Fraction(unit_price) * 10 ** exponent
    floor = exact.numerator // exact.denominator
    return floor + (1 if exact - floor >= Fraction(1, 2) else 0)


def by_metric(lines):
    return {line.metric: line for line in lines}


def test_plan_fee_line_comes_first_and_no_usage_means_only_the_fee():
    lines = compute_lines(STARTER, STARTER_PRICES, {}, *OCT)
    assert len(lines) == 1
    fee = lines[0]
    assert (fee.metric, fee.quantity, fee.amount) == (None, 1, 2900)
    assert "Starter" in fee.description and "October 2026" in fee.description


def test_usage_within_the_included_quantity_keeps_a_zero_line():
    lines = by_metric(compute_lines(STARTER, STARTER_PRICES, {"voice_minutes": 500, "sms_inbound": 10}, *OCT))
    assert lines["voice_minutes"].amount == 0 and lines["voice_minutes"].quantity == 0
    assert lines["voice_minutes"].used_quantity == 500 and lines["voice_minutes"].included == 500
    assert lines["sms_inbound"].amount == 0
    assert "sms_outbound" not in lines  # no usage at all: no line


@pytest.mark.parametrize("used, unit, expected_cents", [
    (502, "0.0125", 3),  # 2 billable x 1.25 cents = 2.5 -> 3 (half-up, not half-even)
    (506, "0.0125", 8),  # 7.5 -> 8
    (504, "0.0125", 5),  # 5.0 exactly
    (501, "0.0125", 1),  # 1.25 -> 1
    (503, "0.0125", 4),  # 3.75 -> 4
    (500 + 10**9, "0.0125", 1_250_000_000),
])
def test_sub_cent_unit_prices_round_half_up_once(used, unit, expected_cents):
    prices = [Terms(metric="sms_outbound", included=500, unit_price=Decimal(unit))]
    [_fee, line] = compute_lines(STARTER, prices, {"sms_outbound": used}, *OCT)
    assert line.amount == expected_cents == expected_amount(used, 500, unit)


def test_rounding_is_per_line_not_per_invoice():
    # Three lines of 0.5 cent each: rounded per line they are 1 cent each (3), never round(1.5) = 2.
    prices = [Terms(metric=m, included=0, unit_price=Decimal("0.005")) for m in ("a", "b", "c")]
    lines = compute_lines(STARTER, prices, {"a": 1, "b": 1, "c": 1}, *OCT)
    assert [ln.amount for ln in lines[1:]] == [1, 1, 1]
    assert pricing.total(lines) == 2903


@pytest.mark.parametrize("currency, unit, used, expected", [
    ("jpy", "1.5", 3, 5),  # zero-decimal: 4.5 yen -> 5
    ("usd", "1.5", 3, 450),
    ("kwd", "0.0005", 3, 2),  # three-decimal: 1.5 fils -> 2
])
def test_currency_exponent_is_respected(currency, unit, used, expected):
    plan = Terms(code="x", name="X", currency=currency, monthly_fee=1000)
    [_fee, line] = compute_lines(plan, [Terms(metric="m", included=0, unit_price=Decimal(unit))], {"m": used}, *OCT)
    assert line.amount == expected == expected_amount(used, 0, unit, currency_exponent(currency))


prices_st = st.lists(
    st.tuples(st.integers(0, 100_000), st.decimals(min_value=Decimal("0"), max_value=Decimal("5"), places=6,
                                                   allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(prices=prices_st, usage=st.lists(st.integers(0, 10**9), min_size=5, max_size=5),
       fee=st.integers(0, 10**7), currency=st.sampled_from(["usd", "jpy", "kwd", "eur"]))
def test_property_total_is_the_sum_of_lines_each_rounded_once(prices, usage, fee, currency):
    plan = Terms(code="p", name="P", currency=currency, monthly_fee=fee)
    terms = [Terms(metric=f"m{i}", included=inc, unit_price=unit) for i, (inc, unit) in enumerate(prices)]
    used = {f"m{i}": usage[i] for i in range(len(prices))}
    lines = compute_lines(plan, terms, used, *OCT)
    assert lines[0].amount == fee
    exp = currency_exponent(currency)
    for line in lines[1:]:
        term = next(t for t in terms if t.metric == line.metric)
        assert line.amount == expected_amount(used[line.metric], term.included, str(term.unit_price), exp)
        assert line.quantity == max(0, used[line.metric] - term.included)
    assert {ln.metric for ln in lines[1:]} == {m for m, q in used.items() if q > 0}
    assert pricing.total(lines) == sum(ln.amount for ln in lines)


# -- the set-based computation over the rollups (real PostgreSQL) --------------------------------------------

@pytest.mark.parametrize("year, month", [(2026, 2), (2028, 2), (2026, 4), (2026, 1), (2026, 12)])
def test_months_of_28_to_31_days_sum_exactly_their_own_days(app, plans, year, month):
    tenant = make_tenant(plan="starter", created_at=utc(2025, 1, 1))
    days = calendar.monthrange(year, month)[1]
    first = date(year, month, 1)
    last = first + timedelta(days=days - 1)
    for n in range(days):
        add_usage(tenant.id, first + timedelta(days=n), voice_minutes=30, sms_outbound=n)
    add_usage(tenant.id, first - timedelta(days=1), voice_minutes=10_000)  # the month before: not counted
    add_usage(tenant.id, last + timedelta(days=1), voice_minutes=10_000)  # the month after: not counted
    lines = by_metric(pricing.period_lines(first, last)[tenant.id].lines)
    assert lines["voice_minutes"].used_quantity == 30 * days
    assert lines["voice_minutes"].amount == expected_amount(30 * days, 500, "0.0150")
    assert lines["sms_outbound"].used_quantity == days * (days - 1) // 2
    assert lines[None].period_start == first and lines[None].period_end == last


@pytest.fixture
def config_overrides(request):
    return getattr(request, "param", {})


@pytest.mark.parametrize("config_overrides", [{"BILLING_TIMEZONE": "America/New_York"}], indirect=True)
def test_usage_at_23_59_on_the_last_day_in_the_billing_zone_lands_in_that_month(app, plans, config_overrides):
    tz = ZoneInfo("America/New_York")
    tenant = make_tenant(plan="starter", created_at=utc(2026, 1, 1))
    last_minute = datetime(2026, 10, 31, 23, 59, tzinfo=tz)  # 2026-11-01 03:59 UTC
    next_month = datetime(2026, 11, 1, 0, 0, tzinfo=tz)
    record_events(tenant, [
        {"id": "a", "metric": "voice_minutes", "quantity": 600, "occurred_at": last_minute.astimezone(timezone.utc)},
        {"id": "b", "metric": "voice_minutes", "quantity": 999, "occurred_at": next_month.astimezone(timezone.utc)},
    ])
    rollup_day(date(2026, 10, 31))
    rollup_day(date(2026, 11, 1))
    october = by_metric(pricing.period_lines(*OCT)[tenant.id].lines)
    assert october["voice_minutes"].used_quantity == 600
    assert october["voice_minutes"].amount == expected_amount(600, 500, "0.0150") == 150
    november = by_metric(pricing.period_lines(date(2026, 11, 1), date(2026, 11, 30))[tenant.id].lines)
    assert november["voice_minutes"].used_quantity == 999


def test_set_based_lines_equal_the_pure_function_per_tenant(app, plans):
    from app.models import Plan
    from app.services.usage import month_usage

    tenants = [make_tenant(plan=p, created_at=utc(2026, 1, 1)) for p in ("starter", "pro", "enterprise", "starter")]
    for i, tenant in enumerate(tenants[:3]):
        for d in range(1, 31, 3):
            add_usage(tenant.id, date(2026, 10, d), voice_minutes=100 * (i + 1) + d, sms_inbound=700 * i,
                      sms_outbound=333)
    everyone = pricing.period_lines(*OCT)
    assert set(everyone) == {t.id for t in tenants}
    from app.extensions import db

    for tenant in tenants:
        plan = db.session.scalar(db.select(Plan).where(Plan.code == tenant.plan))
        alone = compute_lines(plan, plan.prices, month_usage(tenant.id, 2026, 10), *OCT)
        assert everyone[tenant.id].lines == alone
    assert len(everyone[tenants[3].id].lines) == 1  # no usage: the plan fee only


def test_tenants_created_after_the_month_are_left_out(app, plans):
    early = make_tenant(created_at=utc(2026, 10, 31, 23, 59))
    late = make_tenant(created_at=utc(2026, 11, 1, 0, 0))
    lines = pricing.period_lines(*OCT, created_before=utc(2026, 11, 1))
    assert early.id in lines and late.id not in lines
