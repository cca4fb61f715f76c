"""The demo tells a true story: `flask seed demo` on PostgreSQL against the Stripe emulator.

Tenants exist since the first day of their usage; the months before last month are invoiced through the real
invoicing path (paid, except the declining tenant's: open, overdue, on the dunning stage its days call for); last
month is left for the user's first Run all, which then invoices every demo tenant at the amounts of CONTRACT §4 —
computed here from the raw usage events and the plans' rows, without the pricing code.
"""
from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import (BillingRun, Invoice, OutboxEmail, PaymentAttempt, Plan, PlanPrice, Tenant, UsageEvent,
                        User, WebhookEvent)
from app.services import clock
from app.services.seed import DEMO_TENANTS, seed_demo, tick_time
from tests.support.queues import run_jobs
from tests.support.web import Browser, csrf_from, login

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

PASSWORD = "demo-password"
DECLINER = "dunmore-roofing"


@pytest.fixture
def config_overrides():
    return {"DEMO_PASSWORD": PASSWORD}


def visible(html: str) -> str:
    """Text as read on the page: tags dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def month_add(first: date, months: int) -> date:
    n = first.year * 12 + first.month - 1 + months
    return date(n // 12, n % 12 + 1, 1)


def months_of(today: date) -> tuple[list[date], date]:
    """(months the seed invoices, last month), as first days: usage starts three months before this one."""
    this = today.replace(day=1)
    return [month_add(this, -3), month_add(this, -2)], month_add(this, -1)


def by_slug() -> dict[str, Tenant]:
    db.session.expire_all()
    return {t.slug: t for t in db.session.scalars(select(Tenant))}


def invoices_by_month(tenant_id: int) -> dict[date, Invoice]:
    return {inv.period_start: inv for inv in db.session.scalars(
        select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.status != "void"))}


def expected_amount(tenant: Tenant, first: date) -> int:
    """CONTRACT §4 by hand: plan fee + per metric round_half_up(max(0, used − included) × unit price × 100)."""
    last = month_add(first, 1) - timedelta(days=1)
    used: dict[str, int] = defaultdict(int)
    for metric, qty in db.session.execute(
            select(UsageEvent.metric, func.sum(UsageEvent.quantity))
            .where(UsageEvent.tenant_id == tenant.id, UsageEvent.day >= first, UsageEvent.day <= last)
            .group_by(UsageEvent.metric)):
        used[metric] = int(qty)
    fee = db.session.scalar(select(Plan.monthly_fee).where(Plan.code == tenant.plan))
    total = fee
    for price in db.session.scalars(select(PlanPrice).where(PlanPrice.plan_code == tenant.plan)):
        billable = max(0, used[price.metric] - price.included)
        total += int((Decimal(billable) * Decimal(price.unit_price) * 100).quantize(Decimal(1), ROUND_HALF_UP))
    return total


def snapshot() -> dict:
    """What a person can see of the demo: invoices, tenants' dunning state, the mail queued for them."""
    db.session.expire_all()
    invoices = sorted((i.tenant_id, i.period_start, i.status, i.amount_due, i.amount_paid, i.number, i.issued_at,
                       i.due_at, i.paid_at, i.last_payment_error, i.next_payment_attempt_at)
                      for i in db.session.scalars(select(Invoice)))
    tenants = sorted((t.slug, t.created_at, t.dunning_stage, t.overdue_days, t.billing_error, t.stripe_customer_id)
                     for t in db.session.scalars(select(Tenant)))
    mail = sorted((m.tenant_id, m.kind, m.subject) for m in db.session.scalars(select(OutboxEmail)))
    return {"invoices": invoices, "tenants": tenants, "mail": mail}


def test_months_before_last_are_invoiced_and_the_decliner_is_in_dunning(app, emulator):
    now = clock.utcnow()
    today = clock.today(now)
    report = seed_demo(PASSWORD, now=now)
    history, last_month = months_of(today)
    tenants = by_slug()
    assert len(tenants) == len(DEMO_TENANTS) == 4

    for slug, tenant in tenants.items():
        # The tenant exists from the first moment of its first day of usage, not from "now".
        first_usage = db.session.scalar(select(func.min(UsageEvent.day)).where(UsageEvent.tenant_id == tenant.id))
        assert first_usage == history[0] and tenant.created_at == clock.day_start_utc(history[0])
        invoices = invoices_by_month(tenant.id)
        assert sorted(invoices) == history  # last month is left for the user's first run
        for first in history:
            inv = invoices[first]
            tick = tick_time(first.year, first.month)
            assert inv.issued_at == tick and inv.due_at == tick  # when the nightly tick would have run
            assert inv.amount_due == expected_amount(tenant, first)
            assert inv.number.startswith(f"SP-{first:%Y-%m}-")
            remote = emulator.stripe_client().v1.invoices.retrieve(inv.stripe_invoice_id)
            assert remote.status == inv.status and remote.total == inv.amount_due  # the real path, in Stripe too
            if slug == DECLINER:
                assert (inv.status, inv.amount_paid, inv.paid_at) == ("open", 0, None)
                assert inv.last_payment_error and inv.next_payment_attempt_at is None  # every retry made
                triggers = [a.trigger for a in db.session.scalars(
                    select(PaymentAttempt).where(PaymentAttempt.invoice_id == inv.id).order_by(PaymentAttempt.id))]
                assert triggers == ["scheduled", "retry", "retry", "retry"]  # retried on days 3, 7 and 12
            else:
                assert (inv.status, inv.amount_paid, inv.paid_at) == ("paid", inv.amount_due, tick)

    decliner = tenants[DECLINER]
    overdue = (today - month_add(history[0], 1)).days  # its oldest invoice was due when that month ended
    assert decliner.overdue_days == overdue
    stage = "restricted" if overdue >= 45 else "suspended" if overdue >= 30 else "reminder"
    assert decliner.dunning_stage == stage
    assert all(t.dunning_stage == "ok" and t.overdue_days == 0 for s, t in tenants.items() if s != DECLINER)
    kinds = sorted(m.kind for m in db.session.scalars(select(OutboxEmail).where(OutboxEmail.tenant_id == decliner.id)))
    assert kinds == sorted(["invoice_issued", "invoice_issued", "payment_failed", "payment_failed", f"dunning_{stage}"])

    assert f"In dunning: Dunmore Roofing, {overdue} days overdue, stage {stage}" in "\n".join(report.story)
    assert f"Left for you: {last_month:%Y-%m}." in "\n".join(report.story)

    # The declining tenant's admin sees the overdue banner on first sign-in.
    browser = Browser(app)
    with app.app_context():
        login(browser.client, f"admin@{DECLINER}.example.com", PASSWORD)
    page = browser.get("/admin/billing").get_data(as_text=True)
    assert re.search(rf'<div id="overdue-banner"[^>]*data-stage="{stage}"', page)
    assert f"{overdue} days overdue" in page


def test_a_second_seed_changes_nothing_and_prints_the_same_logins(app, emulator):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed", "demo"])
    assert first.exit_code == 0, first.output
    before = snapshot()
    calls = len(emulator.requests())
    counts = {m: db.session.scalar(select(func.count()).select_from(m)) for m in (User, UsageEvent, PaymentAttempt)}

    second = runner.invoke(args=["seed", "demo"])
    assert second.exit_code == 0, second.output
    assert snapshot() == before
    assert {m: db.session.scalar(select(func.count()).select_from(m)) for m in counts} == counts
    writes = [r for r in emulator.requests()[calls:] if r["method"] != "GET"]
    assert writes == []  # nothing made in Stripe either: only reads

    def logins(output: str) -> list[str]:
        return [line for line in output.splitlines() if line.startswith("  ") and "@" in line]

    assert logins(second.output) == logins(first.output) and len(logins(first.output)) == 5
    assert "API key for acme-plumbing" in first.output and "API key" not in second.output  # shown once
    story = [line for line in first.output.splitlines() if line.startswith(("Invoiced history", "In dunning",
                                                                              "Left for you"))]
    assert len(story) == 3 and story == [line for line in second.output.splitlines() if line in story]


def test_run_all_for_last_month_invoices_every_demo_tenant_at_contract_amounts(app, client, auth, emulator):
    now = clock.utcnow()
    seed_demo(PASSWORD, now=now)
    _history, last_month = months_of(clock.today(now))
    period = f"{last_month:%Y-%m}"
    auth.login("root@example.com", PASSWORD)

    page = client.get("/admin/system-billing").get_data(as_text=True)
    # Both month pickers start on the month that has work: last month.
    assert re.search(rf'<select id="run-period" name="period">.*?<option value="{period}" selected>', page, re.S)
    assert re.search(rf'<select id="force-run-period" name="period">.*?<option value="{period}" selected>', page,
                     re.S)

    token = csrf_from(page)
    resp = client.post("/admin/system-billing/runs", data={"period": period, "csrf_token": token})
    assert resp.status_code == 303
    run_jobs(("billing",))
    run = db.session.scalar(select(BillingRun))
    db.session.refresh(run)
    assert (run.period, run.total, run.done, run.failed) == (period, 4, 4, 0) and run.finished_at

    for slug, tenant in by_slug().items():
        inv = invoices_by_month(tenant.id)[last_month]
        assert inv.amount_due == expected_amount(tenant, last_month), slug
        assert inv.status == ("open" if slug == DECLINER else "paid"), slug

    html = client.get(f"/admin/system-billing/runs/{run.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Invoiced: 4 — paid 3, payment declined 1" in visible(html)
    # Last month done, the month with work is gone: the picker falls back to the previous month (the same).
    page = client.get("/admin/system-billing").get_data(as_text=True)
    assert re.search(rf'<select id="run-period" name="period">.*?<option value="{period}" selected>', page, re.S)


def test_the_story_is_the_same_whether_webhooks_are_processed_or_not(app, emulator, hook):
    hook()  # the emulator delivers every event of the seed to the running app, as in `make run`
    now = clock.utcnow()
    seed_demo(PASSWORD, now=now)
    seeded = snapshot()
    assert emulator.flush_webhooks(30)
    run_jobs(("webhooks", "billing", "default"))
    db.session.expire_all()
    events = list(db.session.scalars(select(WebhookEvent)))
    assert events and {e.status for e in events} <= {"processed", "ignored"}, \
        [(e.type, e.status, e.last_error) for e in events if e.status not in ("processed", "ignored")]
    assert {e.type for e in events} >= {"invoice.paid", "invoice.payment_failed", "customer.updated"}
    # A card change's event, processed after the invoices, retries the decliner's open ones once more (declined
    # again, no new email): attempts differ, nothing a person sees does.
    assert snapshot() == seeded


def test_a_restarted_emulator_gets_the_demo_customers_again(app, emulator):
    now = clock.utcnow()
    seed_demo(PASSWORD, now=now)
    before = {s: t.stripe_customer_id for s, t in by_slug().items()}
    emulator.reset()  # what stopping and starting `make run` does to the emulator's memory
    report = seed_demo(PASSWORD, now=now)
    after = by_slug()
    assert all(after[s].stripe_customer_id and after[s].stripe_customer_id != before[s] for s in before)
    customers = emulator.stripe_client().v1.customers.list(params={"limit": 100}).data
    assert sorted(c.id for c in customers) == sorted(t.stripe_customer_id for t in after.values())
    assert any("emulator had been restarted" in line for line in report.story)


def test_tenants_of_an_older_seed_are_backdated_and_their_history_invoiced(app, emulator):
    now = clock.utcnow()
    seed_demo(PASSWORD, now=now, with_stripe=False)
    for tenant in db.session.scalars(select(Tenant)):
        tenant.created_at = now  # what the seed used to do: "created" after its own three months of usage
    db.session.commit()
    seed_demo(PASSWORD, now=now)
    history, _last = months_of(clock.today(now))
    for tenant in by_slug().values():
        assert tenant.created_at == clock.day_start_utc(history[0])
        assert sorted(invoices_by_month(tenant.id)) == history

