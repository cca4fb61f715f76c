"""The billing pages in a real browser (Debian's Chromium via Playwright) against the live test server.

After every action — force-run from the list and from a tenant's page, run all, Pay now, the portal's return, the
root controls — the page is compared with a fresh load of its own address (`assert_equals_reload`): every figure
the action changed must already be there, without a reload.

Invoice jobs are real RQ jobs: the test enqueues them through the page, then works the queue in this process
(`run_jobs`, inside the test app's context) while the page keeps polling on its own.
"""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from playwright.sync_api import expect

from app import stripe_gateway
from app.extensions import db
from app.models import Invoice, Tenant
from app.services import clock
from app.services.dunning import reevaluate_tenant, run_pass
from app.services.invoicing import invoice_and_charge
from app.system_billing.queries import default_period, period_choices
from tests.billing_support import add_usage
from tests.factories import PASSWORD, admin_email, at, make_invoice, make_root, make_tenant, tenant_with_card, utc
from tests.support.browser_pages import assert_equals_reload, assert_no_reload, mark_no_reload, screenshot, sign_in
from tests.support.queues import run_jobs

pytestmark = pytest.mark.browser

LONG_AGO = utc(2020, 1, 1)


def last_month() -> tuple[str, date]:
    period = default_period()
    year, month = clock.parse_period(period)
    return period, date(year, month, 5)


def card_tenant(card: str, name: str, *, minutes: int = 0, plan: str = "starter") -> Tenant:
    tenant = tenant_with_card(card, name=name, created_at=LONG_AGO, plan=plan)
    if minutes:
        add_usage(tenant.id, last_month()[1], voice_minutes=minutes)
    return tenant


def overdue_tenant(name: str, days: int, **fields) -> Tenant:
    """A tenant whose open invoice fell due `days` days ago, with its dunning stage derived now."""
    tenant = make_tenant(name, created_at=LONG_AGO, **fields)
    make_invoice(tenant, at(clock.today() - timedelta(days=days)), amount=4900, number=f"SP-DEMO-{tenant.id}")
    reevaluate_tenant(tenant.id)
    return db.session.get(Tenant, tenant.id)


def long_date(day: date) -> str:
    return f"{day:%b} {day.day}, {day.year}"


# -- root: force-run ------------------------------------------------------------------------------------------------

def test_force_run_from_the_list_updates_the_row_the_cards_and_the_counts_without_a_reload(page, emulator, plans):
    make_root()
    tenant = card_tenant("pm_card_visa", "Acme Plumbing", minutes=800)
    overdue_tenant("Brightside HVAC", 20, plan="pro")
    make_tenant("Evergreen Landscaping", created_at=LONG_AGO)
    period, _ = last_month()

    sign_in(page, "root@example.com", PASSWORD)
    assert page.url.endswith("/admin/system-billing")
    row = page.locator(f"#tenant-row-{tenant.id}")
    expect(row.locator("[data-col=last-invoice]")).to_contain_text("none")
    expect(page.locator("#collected")).to_contain_text("$0.00")
    mark_no_reload(page)

    expect(page.get_by_label("Month for Force-run")).to_have_value(period)  # one select for the whole table
    row.get_by_role("button", name="Force-run Acme Plumbing").click()
    status = page.locator(f"#force-run-{tenant.id}")
    expect(status).to_contain_text("Queued")
    expect(status).to_have_attribute("hx-trigger", "every 1s")

    run_jobs(("billing",))  # the worker takes the job; the page notices by itself within a second

    expect(row.locator(".fr-status")).to_contain_text("Invoiced and paid.", timeout=10_000)
    expect(row.locator("[data-col=last-invoice] .badge")).to_have_text("paid")
    expect(row.locator("[data-col=last-invoice]")).to_contain_text(f"{period} · $33.50")
    expect(page.locator("#collected")).to_contain_text("$33.50")  # the summary card followed
    expect(page.locator(f"#fr-status-{tenant.id}")).to_be_focused()  # focus followed the status, not lost
    assert_equals_reload(page)
    assert_no_reload(page)
    assert db.session.scalar(db.select(Invoice.status).where(Invoice.tenant_id == tenant.id)) == "paid"


def test_force_run_of_a_declined_tenant_shows_the_failure_and_the_open_balance(page, emulator, plans):
    make_root()
    tenant = card_tenant("pm_card_chargeCustomerFail", "Dunmore Roofing")
    sign_in(page, "root@example.com", PASSWORD)
    row = page.locator(f"#tenant-row-{tenant.id}")
    expect(page.locator("#aged-balance")).to_contain_text("Nothing is open.")
    mark_no_reload(page)
    row.get_by_role("button", name="Force-run Dunmore Roofing").click()
    expect(page.locator(f"#force-run-{tenant.id}")).to_contain_text("Queued")

    run_jobs(("billing",))

    expect(row.locator(".fr-status")).to_contain_text("payment failed: Your card was declined.", timeout=10_000)
    expect(row.locator("[data-col=last-invoice] .badge")).to_have_text("open")
    expect(row.locator("[data-col=oldest-unpaid]")).to_contain_text("$29.00")
    expect(page.locator("#aged-balance tfoot")).to_contain_text("$29.00")
    assert_equals_reload(page)
    assert_no_reload(page)


def test_force_run_from_the_tenant_page_updates_balance_and_invoices_and_keeps_the_month(page, emulator, plans):
    make_root()
    tenant = card_tenant("pm_card_chargeCustomerFail", "Dunmore Roofing")
    period = period_choices()[1]  # not the default month: the select must keep it
    sign_in(page, "root@example.com", PASSWORD)
    page.goto(f"/admin/system-billing/tenants/{tenant.id}")
    expect(page.locator("#tenant-balance")).to_have_text("$0.00")
    expect(page.locator("#tenant-invoices")).to_contain_text("No invoices yet.")
    mark_no_reload(page)
    page.get_by_label("Month to invoice for Dunmore Roofing").select_option(period)
    page.get_by_role("button", name="Force-run Dunmore Roofing").click()
    expect(page.locator(f"#force-run-{tenant.id}")).to_contain_text("Queued")

    run_jobs(("billing",))

    expect(page.locator(".fr-status")).to_contain_text("payment failed", timeout=10_000)
    expect(page.locator("#tenant-balance")).to_have_text("$29.00")
    expect(page.locator("#tenant-invoices tbody tr")).to_have_count(1)
    expect(page.locator("#tenant-invoices")).to_contain_text("open")
    expect(page.get_by_label("Month to invoice for Dunmore Roofing")).to_have_value(period)
    assert_equals_reload(page)
    assert_no_reload(page)
    # A reload offers the month of the force-run it shows, not another one.
    page.reload()
    expect(page.get_by_label("Month to invoice for Dunmore Roofing")).to_have_value(period)


# -- root: run all --------------------------------------------------------------------------------------------------

def test_run_all_names_the_declined_tenant_and_the_whole_page_follows(page, emulator, plans):
    make_root()
    for name in ("Acme Plumbing", "Brightside HVAC", "Citywide Electric"):
        card_tenant("pm_card_visa", name, minutes=600)
    decliner = card_tenant("pm_card_chargeCustomerFail", "Dunmore Roofing")
    period, _ = last_month()
    sign_in(page, "root@example.com", PASSWORD)
    expect(page.locator("#stage-count-ok")).to_have_text("4")
    mark_no_reload(page)
    page.once("dialog", lambda dialog: dialog.accept())  # "Invoice and charge every tenant for the chosen month?"
    page.get_by_role("button", name="Run all tenants").click()
    expect(page.locator("#billing-run")).to_contain_text("of 4 tenants")

    run_jobs(("billing",))

    run = page.locator("#billing-run")
    expect(run).to_contain_text("4 of 4 tenants", timeout=10_000)
    expect(run.locator("[data-run-headline]")).to_have_text(
        "3 paid · 1 payment declined: Dunmore Roofing — Your card was declined.")
    expect(run.get_by_role("link", name="Dunmore Roofing")).to_have_attribute(
        "href", f"/admin/system-billing/tenants/{decliner.id}")
    # Every row shows its new invoice, and the cards their new totals, without a reload.
    expect(page.locator("#tenant-table [data-col=last-invoice]").filter(has_text="none")).to_have_count(0)
    expect(page.locator("#collected")).to_contain_text("$")
    expect(page.locator("#collected")).not_to_contain_text("$0.00")
    expect(page.locator("#aged-balance tfoot")).to_contain_text("$29.00")
    assert_equals_reload(page)
    assert_no_reload(page)
    assert period in run.inner_text()


# -- tenants: Pay now, the portal's return ---------------------------------------------------------------------------

def test_pay_now_declines_then_pays_and_the_page_follows_each_time(page, emulator, plans):
    tenant = card_tenant("pm_card_chargeCustomerFail", "Gamma Gas")
    outcome = invoice_and_charge(tenant.id, last_month()[0])
    # Fifty days later it is restricted: one message, and a navigation with only what it may open.
    db.session.get(Invoice, outcome.invoice_id).due_at -= timedelta(days=50)
    db.session.commit()
    reevaluate_tenant(tenant.id)
    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/usage")  # sent to billing
    assert page.url.endswith("/admin/billing")
    expect(page.get_by_text("restricted because of an unpaid balance")).to_have_count(1)
    expect(page.locator("#main-nav").get_by_role("link", name="Usage")).to_have_count(0)
    expect(page.locator("#main-nav").get_by_role("link", name="API keys")).to_have_count(0)
    expect(page.locator("#main-nav").get_by_role("link", name="Billing")).to_be_visible()
    mark_no_reload(page)

    row = page.locator(f"#invoice-row-{outcome.invoice_id}")
    expect(row.locator("[data-col=due]")).to_contain_text("50 days overdue")
    row.get_by_role("button", name=re.compile("Pay now")).click()
    result = row.locator(".pay-result")
    expect(result).to_contain_text("The payment was declined")
    expect(result).to_be_focused()
    expect(page.locator("#balance-due")).to_contain_text("$29.00")
    assert_equals_reload(page)

    stripe_gateway.attach_default_card(tenant.stripe_customer_id, "pm_card_visa", key=f"browser-{tenant.id}")
    row.get_by_role("button", name=re.compile("Pay now")).click()
    expect(row.locator(".pay-result")).to_contain_text("Paid — thank you.")
    expect(row.locator(".badge")).to_have_text("paid")
    expect(page.locator("#balance-due")).to_contain_text("$0.00")
    expect(page.locator("#overdue-banner")).to_have_count(0)
    expect(page.locator("#main-nav").get_by_role("link", name="Usage")).to_be_visible()  # service restored
    assert_equals_reload(page)
    assert_no_reload(page)


def test_portal_return_pays_the_open_invoice_and_says_so_truly(page, emulator, plans):
    tenant = card_tenant("pm_card_chargeCustomerFail", "Acme Plumbing")
    add_usage(tenant.id, clock.today(), voice_minutes=620, sms_outbound=340, sms_inbound=90)
    outcome = invoice_and_charge(tenant.id, last_month()[0])
    assert outcome.payment == "failed"

    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/billing")
    row = page.locator(f"#invoice-row-{outcome.invoice_id}")
    expect(row.locator(".badge")).to_have_text("open")
    page.get_by_role("button", name="Update Payment Method").click()
    page.wait_for_url(re.compile(r"/portal/"))
    page.locator("#choose-pm_card_visa").click()

    page.wait_for_url(re.compile(r"/admin/billing$"))
    expect(page.get_by_role("status").filter(has_text="every open invoice is paid")).to_be_visible()
    expect(row.locator(".badge")).to_have_text("paid")
    expect(page.locator("#balance-due")).to_contain_text("$0.00")
    assert_equals_reload(page)

    # Nothing open any more: a second card change does not claim to have paid anything.
    page.get_by_role("button", name="Update Payment Method").click()
    page.wait_for_url(re.compile(r"/portal/"))
    page.locator("#choose-pm_card_mastercard").click()
    page.wait_for_url(re.compile(r"/admin/billing$"))
    expect(page.get_by_role("status")).to_contain_text("Nothing was due, so nothing was charged.")
    expect(page.get_by_text("every open invoice is paid")).to_have_count(0)
    db.session.expire_all()
    assert db.session.get(Invoice, outcome.invoice_id).status == "paid"


# -- root controls ---------------------------------------------------------------------------------------------------

def test_root_controls_leave_the_tenant_page_equal_to_a_fresh_load(page, plans):
    make_root()
    tenant = overdue_tenant("Controls Co", 35)
    assert tenant.dunning_stage == "suspended"
    sign_in(page, "root@example.com", PASSWORD)
    page.goto(f"/admin/system-billing/tenants/{tenant.id}")

    until = (clock.today() + timedelta(days=30)).isoformat()
    page.get_by_label("Exempt until").fill(until)
    page.locator("#exempt-reason").fill("paying in two parts")
    page.get_by_role("button", name="Save arrangement").click()
    expect(page.get_by_role("status").filter(has_text="Exempt from dunning until")).to_be_visible()
    expect(page.locator("#tenant-heading .badge")).to_have_text("ok")
    assert_equals_reload(page)

    invoice_id = db.session.scalar(db.select(Invoice.id).where(Invoice.tenant_id == tenant.id))
    page.get_by_text("Actions for invoice").click()
    page.locator(f"#reason-{invoice_id}").fill("billed twice")
    page.get_by_role("button", name="Void invoice").click()
    expect(page.get_by_role("status").filter(has_text="voided")).to_be_visible()
    expect(page.locator("#tenant-balance")).to_have_text("$0.00")
    assert_equals_reload(page)


# -- one "as of" per page ---------------------------------------------------------------------------------------------

def test_a_dunning_pass_as_of_a_later_day_sets_the_one_as_of_of_every_page(page, plans):
    make_root()
    tenant = make_tenant("Dunmore Roofing", created_at=LONG_AGO)
    due = clock.today() - timedelta(days=5)
    make_invoice(tenant, at(due), amount=4900, number="SP-LATE-1")
    as_of = due + timedelta(days=50)
    run_pass(as_of)  # `flask billing dunning --as-of` fifty days past due

    sign_in(page, "root@example.com", PASSWORD)
    expect(page.locator("#as-of")).to_contain_text(long_date(as_of))
    row = page.locator(f"#tenant-row-{tenant.id}")
    expect(row).to_contain_text("50")
    expect(row.locator(".badge").filter(has_text="restricted")).to_have_count(1)
    aged = page.locator("#aged-balance")
    expect(aged.locator("tr", has_text="45+ days")).to_contain_text("$49.00")  # where 50 days belong
    expect(aged.locator("tr", has_text="0–14 days")).to_contain_text("$0.00")

    page.goto(f"/admin/system-billing/tenants/{tenant.id}")
    state = page.locator("#billing-state")
    expect(state).to_contain_text(re.compile(f"restricted since {long_date(as_of)}", re.I))
    expect(state).to_contain_text(f"50 as of {long_date(as_of)}")
    expect(state).to_contain_text(f"SP-LATE-1, due {long_date(due)}")


# -- addresses: search, filters, sort and pages in the URL; back and forward -------------------------------------------

def test_search_filter_sort_and_page_live_in_the_address_and_back_goes_back(page, plans):
    make_root()
    for name in ("Alpha Air", "Beta Boilers", "Gamma Gas"):
        make_tenant(name)
    sign_in(page, "root@example.com", PASSWORD)
    mark_no_reload(page)
    page.get_by_label("Search by name").fill("bet")
    expect(page.locator("#tenant-table tbody tr")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"q=bet"))
    page.get_by_label("Search by name").fill("")
    expect(page.locator("#tenant-table tbody tr")).to_have_count(3)
    page.locator("#tenant-table").get_by_role("link", name="Tenant").click()
    expect(page.locator("#tenant-table th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    assert page.locator("#tenant-table tbody th a").all_inner_texts() == ["Alpha Air", "Beta Boilers", "Gamma Gas"]
    expect(page).to_have_url(re.compile(r"sort=name"))
    assert_no_reload(page)
    page.get_by_label("Dunning stage").select_option("restricted")
    expect(page).to_have_url(re.compile(r"stage=restricted"))
    expect(page.locator("#tenant-table")).to_contain_text("No tenants match these filters.")

    # Back walks the same states again, each one as its address says.
    page.go_back()
    expect(page).to_have_url(re.compile(r"sort=name"))
    expect(page).not_to_have_url(re.compile(r"stage="))
    expect(page.locator("#tenant-table tbody tr")).to_have_count(3)
    page.go_back()
    expect(page).not_to_have_url(re.compile(r"sort="))
    page.go_forward()
    expect(page).to_have_url(re.compile(r"sort=name"))
    expect(page.locator("#tenant-table th[aria-sort]")).to_have_attribute("aria-sort", "ascending")


def test_a_tenant_sees_every_invoice_a_page_at_a_time_with_back_and_forward(page, plans):
    tenant = make_tenant("Archive Co", created_at=LONG_AGO)
    for month in range(1, 10):  # Jan..Sep 2026, paid: nine invoices, two pages of six
        make_invoice(tenant, date(2026, month, 2), status="paid", number=f"SP-2026-{month:02d}")
    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/billing")
    table = page.locator("#invoices")
    expect(table.locator("tbody tr")).to_have_count(6)
    expect(page.locator("#invoices-card")).to_contain_text("Invoices 1–6 of 9")
    mark_no_reload(page)
    page.locator("#invoices-card").get_by_role("link", name="Next →").click()
    expect(page).to_have_url(re.compile(r"page=2"))
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table).to_contain_text("SP-2026-01")
    assert_no_reload(page)
    page.go_back()
    expect(page).not_to_have_url(re.compile(r"page="))
    expect(page.locator("#invoices tbody tr")).to_have_count(6)
    expect(page.locator("#invoices")).to_contain_text("SP-2026-09")


# -- the banner, the phone ------------------------------------------------------------------------------------------

def test_tenant_twenty_days_overdue_sees_the_banner(page, plans):
    tenant = overdue_tenant("Brightside HVAC", 20)
    assert tenant.dunning_stage == "reminder"
    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/billing")
    banner = page.locator("#overdue-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("20 days overdue.")
    page.goto("/admin/usage")
    expect(page.locator("#overdue-banner")).to_be_visible()


def test_billing_pages_are_readable_on_a_phone(page, plans):
    make_root()
    for i in range(4):
        make_tenant(f"Narrow Screen Services {i}")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, "root@example.com", PASSWORD)
    page.goto("/admin/system-billing")
    # The page itself never scrolls sideways: wide tables scroll inside their wrapper.
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.parentElement.closest('.table-wrap'))
        .map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), wide
    expect(page.get_by_role("button", name="Force-run Narrow Screen Services 0")).to_be_visible()
    screenshot(page, "system-billing-phone")
