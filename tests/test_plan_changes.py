"""Plan changes with proration (CONTRACT §8.1), checked against an oracle written from the contract's words.

The oracle below does not call the pricing code: for month M of D days, one fee line per plan in force during M,
amount = round_half_up(monthly_fee × days_in_force / D) (a whole month on one plan: the fee itself); usage is
priced by the plan in force on M's last day (CONTRACT §4's rule for each metric).
"""
from __future__ import annotations

import calendar
from datetime import date, timedelta
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Invoice, InvoiceStatus, PlanChange, Tenant
from app.services import invoicing, plans as plan_service, pricing
from app.services.plans import PlanChangeError
from tests.billing_support import add_usage, invoices_of
from tests.factories import make_tenant, tenant_with_card, utc

# The seeded plans (app/services/seed.py), restated: fee in cents, {metric: (included, unit price in dollars)}.
PLANS = {
    "starter": (2900, {"voice_minutes": (500, "0.0150"), "sms_outbound": (500, "0.0125"),
                       "sms_inbound": (1000, "0.0050")}),
    "pro": (9900, {"voice_minutes": (3000, "0.0120"), "sms_outbound": (3000, "0.0095"),
                   "sms_inbound": (5000, "0.0040")}),
    "enterprise": (49900, {"voice_minutes": (20000, "0.0090"), "sms_outbound": (20000, "0.0075"),
                           "sms_inbound": (50000, "0.0025")}),
}
EARLY = utc(2026, 8, 1)


def half_up(value: Fraction) -> int:
    """Round a non-negative exact value to the nearest integer, halves up."""
    floor = value.numerator // value.denominator
    return floor + (1 if value - floor >= Fraction(1, 2) else 0)


def oracle(initial: str, changes: list[tuple[date, str]], year: int, month: int,
           usage: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """({plan: fee amount}, {metric: usage amount}) for month M, straight from CONTRACT §4 and §8.1."""
    days_in_month = calendar.monthrange(year, month)[1]
    in_force: dict[str, int] = {}
    for d in range(1, days_in_month + 1):
        day = date(year, month, d)
        plan = initial
        for effective_on, to_plan in sorted(changes):
            if effective_on <= day:  # a change takes effect at the start of its day
                plan = to_plan
        in_force[plan] = in_force.get(plan, 0) + 1
    fees = {plan: half_up(Fraction(PLANS[plan][0] * days, days_in_month)) for plan, days in in_force.items()}
    last_plan = initial
    for effective_on, to_plan in sorted(changes):
        if effective_on <= date(year, month, days_in_month):
            last_plan = to_plan
    amounts = {}
    for metric, used in usage.items():
        included, unit = PLANS[last_plan][1][metric]
        amounts[metric] = half_up(max(0, used - included) * Fraction(unit) * 100)
    return fees, amounts


def record(tenant_id: int, plan: str, day: date, now=None):
    return plan_service.change_plan(tenant_id, plan, day, source="cli", now=now or utc(2026, 10, 1))


def fee_lines(inv: Invoice) -> dict[str, int]:
    names = {"Starter": "starter", "Pro": "pro", "Enterprise": "enterprise"}
    return {names[ln.description.split(" plan")[0]]: ln.amount for ln in inv.lines if ln.metric is None}


# -- the rule, end to end --------------------------------------------------------------------------------------

def test_a_mid_month_upgrade_bills_each_plan_for_its_days_and_usage_at_the_new_plan(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 3), voice_minutes=4000)
    record(tenant.id, "pro", date(2026, 10, 12))

    inv = invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))

    # Starter Oct 1–11 (11 days): 2900 × 11/31 = 1029.03 → 1029; Pro Oct 12–31 (20 days): 9900 × 20/31 = 6387.10
    # → 6387; 4000 voice minutes at Pro's terms: (4000 − 3000) × 0.0120 = 12.00.
    assert [(ln.metric, ln.amount) for ln in inv.lines] == [(None, 1029), (None, 6387), ("voice_minutes", 1200)]
    assert "11 of 31 days" in inv.lines[0].description and "20 of 31 days" in inv.lines[1].description
    assert inv.amount_due == 1029 + 6387 + 1200
    assert inv.plan_code == "pro"


def test_a_whole_month_on_one_plan_is_one_line_equal_to_the_fee(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 1))
    inv = invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    assert [(ln.metric, ln.amount, ln.description) for ln in inv.lines] == [(None, 9900, "Pro plan, October 2026")]
    september = invoicing.generate_invoice(tenant.id, 2026, 9, now=utc(2026, 11, 1))
    assert [ln.amount for ln in september.lines] == [2900]  # before the change: still Starter


def test_a_change_inside_an_invoiced_month_is_refused_clearly(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    inv = invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    with pytest.raises(PlanChangeError, match=r"October 2026 is already invoiced .* 2026-11-01 at the earliest"):
        record(tenant.id, "pro", date(2026, 10, 20), now=utc(2026, 11, 2))
    assert db.session.scalars(select(PlanChange)).all() == []
    assert db.session.get(Tenant, tenant.id).plan == "starter"
    # Once that invoice is void the month is open again.
    inv.status = InvoiceStatus.VOID
    db.session.commit()
    assert record(tenant.id, "pro", date(2026, 10, 20), now=utc(2026, 11, 2)).from_plan == "starter"


def test_a_second_change_the_same_day_replaces_the_first_and_back_cancels_it(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 15))
    record(tenant.id, "enterprise", date(2026, 10, 15))
    [row] = db.session.scalars(select(PlanChange)).all()
    assert (row.from_plan, row.to_plan) == ("starter", "enterprise")
    assert record(tenant.id, "starter", date(2026, 10, 15)) is None
    assert db.session.scalars(select(PlanChange)).all() == []
    with pytest.raises(PlanChangeError, match="already on Starter"):
        record(tenant.id, "starter", date(2026, 10, 16))


def test_an_earlier_change_after_a_later_one_is_refused_and_unknown_plans_too(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 20))
    with pytest.raises(PlanChangeError, match="already recorded for 2026-10-20"):
        record(tenant.id, "enterprise", date(2026, 10, 10))
    with pytest.raises(PlanChangeError, match="no plan 'platinum'"):
        record(tenant.id, "platinum", date(2026, 10, 25))


def test_tenants_plan_is_the_plan_in_force_today_and_moves_on_the_day(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 20), now=utc(2026, 10, 10))
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).plan == "starter"  # not yet
    plan_service.sync_current_plans(date(2026, 10, 19))
    db.session.commit()
    assert db.session.get(Tenant, tenant.id).plan == "starter"
    plan_service.sync_current_plans(date(2026, 10, 20))
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).plan == "pro"
    # The bill for October still prorates: 19 days of Starter, 12 of Pro.
    inv = invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    assert fee_lines(inv) == {"starter": half_up(Fraction(2900 * 19, 31)), "pro": half_up(Fraction(9900 * 12, 31))}


def test_a_change_is_audited_and_announced_to_the_tenant(app, plans):
    from app.models import OutboxEmail

    tenant = make_tenant(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 12))
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "plan_change"))
    assert audit.details["to_plan"] == "pro" and audit.tenant_id == tenant.id
    mail = db.session.scalar(select(OutboxEmail).where(OutboxEmail.kind == "plan_changed"))
    assert "Starter to Pro" in mail.body_text and "2026-10-12" in mail.subject


# -- the oracle against the real invoices ------------------------------------------------------------------------

changes_st = st.lists(st.tuples(st.integers(1, 31), st.sampled_from(sorted(PLANS))), max_size=4)
usage_st = st.fixed_dictionaries({}, optional={"voice_minutes": st.integers(0, 40000),
                                               "sms_outbound": st.integers(0, 40000)})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.sampled_from(sorted(PLANS)), raw=changes_st, usage=usage_st,
       month=st.sampled_from([(2026, 2), (2026, 4), (2026, 10), (2028, 2)]))
def test_invoices_match_the_contract_oracle(app, plans, initial, raw, usage, month):
    year, mon = month
    days = calendar.monthrange(year, mon)[1]
    tenant = make_tenant(plan=initial, created_at=utc(2025, 1, 1))
    changes, current = [], initial
    for day_n, plan in sorted({min(d, days): p for d, p in raw}.items()):
        if plan != current:
            record(tenant.id, plan, date(year, mon, day_n), now=utc(year, mon, 1))
            changes.append((date(year, mon, day_n), plan))
            current = plan
    if usage:
        add_usage(tenant.id, date(year, mon, days), **usage)
    inv = invoicing.generate_invoice(tenant.id, year, mon, now=utc(year, mon, days) + timedelta(days=1))
    fees, amounts = oracle(initial, changes, year, mon, usage)
    assert fee_lines(inv) == fees
    assert {ln.metric: ln.amount for ln in inv.lines if ln.metric} == {m: a for m, a in amounts.items()
                                                                       if usage.get(m)}
    assert inv.amount_due == sum(fees.values()) + sum(a for m, a in amounts.items() if usage.get(m))


@settings(max_examples=300, deadline=None)
@given(initial=st.sampled_from(sorted(PLANS)), raw=changes_st,
       month=st.sampled_from([(2026, 2), (2026, 4), (2026, 10), (2028, 2)]))
def test_the_pure_proration_matches_the_oracle(initial, raw, month):
    year, mon = month
    days = calendar.monthrange(year, mon)[1]
    changes, hist, current = [], [], initial
    for day_n, plan in sorted({min(d, days): p for d, p in raw}.items()):
        if plan != current:
            changes.append((date(year, mon, day_n), plan))
            hist.append(pricing.Change(date(year, mon, day_n), current, plan))
            current = plan
    first, last = date(year, mon, 1), date(year, mon, days)
    terms = {code: pricing.Terms(code=code, name=code.title(), monthly_fee=fee) for code, (fee, _) in PLANS.items()}
    spans = pricing.plan_spans(hist, "enterprise" if hist else initial, first, last)
    lines = pricing.fee_lines([(terms[s.plan], s) for s in spans], first, last)
    fees, _ = oracle(initial, changes, year, mon, {})
    assert {ln.description.split(" plan")[0].lower(): ln.amount for ln in lines} == fees


# -- the CLI -------------------------------------------------------------------------------------------------------

def test_cli_change_plan_records_and_refuses_clearly(app, plans):
    tenant = make_tenant(plan="starter", created_at=EARLY)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["billing", "change-plan", "--tenant", str(tenant.id), "--plan", "pro",
                                 "--effective", "2026-10-12"])
    assert result.exit_code == 0, result.output
    assert "starter -> pro from 2026-10-12" in result.output
    invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    result = runner.invoke(args=["billing", "change-plan", "--tenant", str(tenant.id), "--plan", "enterprise",
                                 "--effective", "2026-10-30"])
    assert result.exit_code == 1 and "October 2026 is already invoiced" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(args=["billing", "change-plan", "--tenant", str(tenant.id), "--plan", "pro",
                                 "--effective", "30/10/2026"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output


def test_a_charged_invoice_after_a_plan_change_charges_the_prorated_total(app, plans, emulator):
    tenant = tenant_with_card(plan="starter", created_at=EARLY)
    record(tenant.id, "pro", date(2026, 10, 16))
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=utc(2026, 11, 1, 1))
    assert outcome.payment == "succeeded", outcome
    [inv] = invoices_of(tenant.id)
    expected = half_up(Fraction(2900 * 15, 31)) + half_up(Fraction(9900 * 16, 31))
    assert (inv.amount_due, inv.amount_paid, inv.status) == (expected, expected, "paid")


# -- the pages -------------------------------------------------------------------------------------------------------

def test_root_changes_a_plan_on_the_tenant_page_and_sees_the_history(app, plans, client, auth):
    from tests.support.web import page_csrf
    from tests.factories import make_root

    tenant = make_tenant(plan="starter", created_at=EARLY)
    make_root()
    auth.login("root@example.com")
    page = f"/admin/system-billing/tenants/{tenant.id}"
    token = page_csrf(client, page)
    resp = client.post(f"{page}/plan-change", data={"csrf_token": token, "plan": "pro", "effective": "2099-01-05",
                                                    "reason": "sales call"})
    assert resp.status_code == 303
    html = client.get(page).get_data(as_text=True)
    assert 'id="plan-history"' in html and "starter → pro" in html and "2099" in html
    # Refused: a bad date, then an already invoiced month, re-rendered with the message at 422.
    bad = client.post(f"{page}/plan-change", data={"csrf_token": token, "plan": "pro", "effective": "05/01/2099"})
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.get_data(as_text=True)
    invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    refused = client.post(f"{page}/plan-change", data={"csrf_token": token, "plan": "enterprise",
                                                       "effective": "2026-10-05"})
    assert refused.status_code == 422 and "already invoiced" in refused.get_data(as_text=True)
    assert len(db.session.scalars(select(PlanChange)).all()) == 1


def test_a_tenant_admin_previews_the_prorated_fee_then_confirms(app, plans, client, auth, monkeypatch):
    from app.services import clock
    from tests.support.web import page_csrf
    from tests.factories import admin_email

    tenant = make_tenant(plan="starter", created_at=EARLY)
    monkeypatch.setattr(clock, "utcnow", lambda: utc(2026, 10, 12, 9))
    monkeypatch.setattr(plan_service, "utcnow", lambda: utc(2026, 10, 12, 9))
    auth.login(admin_email(tenant))
    billing = client.get("/admin/billing").get_data(as_text=True)
    assert 'id="change-plan"' in billing
    preview = client.get("/admin/billing/plan?plan=pro")
    html = preview.get_data(as_text=True)
    # Starter Oct 1–11: 2900 × 11/31 → $10.29; Pro Oct 12–31: 9900 × 20/31 → $63.87; without: $29.00.
    assert preview.status_code == 200 and "$10.29" in html and "$63.87" in html
    assert 'id="preview-after">$74.16<' in html and "+$45.16" in html
    assert db.session.scalars(select(PlanChange)).all() == []  # a preview changes nothing
    token = page_csrf(client, "/admin/billing/plan?plan=pro")
    resp = client.post("/admin/billing/plan", data={"csrf_token": token, "plan": "pro"})
    assert resp.status_code == 303
    [row] = db.session.scalars(select(PlanChange)).all()
    assert (row.from_plan, row.to_plan, row.effective_on, row.source) == ("starter", "pro", date(2026, 10, 12),
                                                                          "tenant")
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).plan == "pro"
    inv = invoicing.generate_invoice(tenant.id, 2026, 10, now=utc(2026, 11, 1))
    assert sum(ln.amount for ln in inv.lines if ln.metric is None) == 7416  # what the preview said


def test_a_tenant_cannot_change_another_tenants_plan_or_pick_an_unknown_plan(app, plans, client, auth):
    from tests.support.web import page_csrf
    from tests.factories import admin_email

    mine, theirs = make_tenant(plan="starter"), make_tenant(plan="starter")
    auth.login(admin_email(mine))
    token = page_csrf(client, "/admin/billing/plan")
    resp = client.post("/admin/billing/plan", data={"csrf_token": token, "plan": "platinum"})
    assert resp.status_code == 422 and "no plan" in resp.get_data(as_text=True)
    client.post("/admin/billing/plan", data={"csrf_token": token, "plan": "pro", "tenant_id": theirs.id})
    db.session.expire_all()
    assert db.session.get(Tenant, theirs.id).plan == "starter"
    assert client.post(f"/admin/system-billing/tenants/{theirs.id}/plan-change",
                       data={"csrf_token": token, "plan": "pro"}).status_code == 403
