"""The billing pages in a real browser (Debian's Chromium via Playwright) against the live test server.

Invoice jobs are real RQ jobs: the test enqueues them through the page, then works the queue in this process
(`run_jobs`, inside the test app's context) while the page keeps polling on its own.
Set UPDATE_SCREENSHOTS=1 to refresh docs/screenshots/ (otherwise screenshots go to a temporary folder).
"""
from __future__ import annotations

import os
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app import stripe_gateway
from app.extensions import db
from app.models import Invoice, Tenant
from app.services import billing_views, clock
from app.services.dunning import reevaluate_tenant
from app.services.invoicing import invoice_and_charge
from tests.billing_support import add_usage, tenant_with_card
from tests.browser.conftest import screenshot, sign_in
from tests.conftest import run_jobs
from tests.factories import PASSWORD, admin_email, make_root, make_tenant, utc
from tests.test_dunning import at, make_invoice

pytestmark = pytest.mark.browser

LONG_AGO = utc(2020, 1, 1)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def save_screenshot(page, name: str) -> None:
    """A full-page screenshot; into docs/screenshots/ when UPDATE_SCREENSHOTS=1."""
    path = screenshot(page, name)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
    assert os.path.getsize(path) > 10_000


def last_month() -> tuple[str, date]:
    period = billing_views.default_period()
    year, month = clock.parse_period(period)
    return period, date(year, month, 5)


def card_tenant(card: str, name: str, *, minutes: int = 0) -> Tenant:
    tenant = tenant_with_card(card, name=name, created_at=LONG_AGO)
    if minutes:
        add_usage(tenant.id, last_month()[1], voice_minutes=minutes)
    return tenant


def overdue_tenant(name: str, days: int, **fields) -> Tenant:
    """A tenant whose open invoice fell due `days` days ago, with its dunning stage derived now."""
    tenant = make_tenant(name, created_at=LONG_AGO, **fields)
    make_invoice(tenant, at(clock.today() - timedelta(days=days)), amount=4900, number=f"SP-DEMO-{tenant.id}")
    reevaluate_tenant(tenant.id)
    return db.session.get(Tenant, tenant.id)


def mark_no_reload(page) -> None:
    page.evaluate("window.__sameDocument = true")


def assert_no_reload(page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


# -- root: force-run ------------------------------------------------------------------------------------------------

def test_root_force_runs_a_tenant_and_watches_its_row_turn_paid(page, emulator, plans):
    make_root()
    tenant = card_tenant("pm_card_visa", "Acme Plumbing", minutes=800)
    # Company for the screenshot: tenants at each dunning stage.
    overdue_tenant("Brightside HVAC", 20, plan="pro")
    overdue_tenant("Citywide Electric", 33, plan="enterprise")
    overdue_tenant("Dunmore Roofing", 50)
    make_tenant("Evergreen Landscaping", created_at=LONG_AGO)
    period, _ = last_month()

    sign_in(page, "root@example.com", PASSWORD)
    assert page.url.endswith("/admin/system-billing")
    row = page.locator(f"#tenant-row-{tenant.id}")
    expect(row).to_contain_text("Acme Plumbing")
    expect(row.locator("[data-col=last-invoice]")).to_contain_text("none")
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
    expect(page.locator(f"#fr-status-{tenant.id}")).to_be_focused()  # focus followed the status, not lost
    assert_no_reload(page)
    assert db.session.scalar(db.select(Invoice.status).where(Invoice.tenant_id == tenant.id)) == "paid"
    save_screenshot(page, "system-billing")


def test_force_run_of_a_declined_tenant_shows_the_failure_in_the_row(page, emulator, plans):
    make_root()
    tenant = card_tenant("pm_card_chargeCustomerFail", "Dunmore Roofing")
    sign_in(page, "root@example.com", PASSWORD)
    row = page.locator(f"#tenant-row-{tenant.id}")
    mark_no_reload(page)
    row.get_by_role("button", name="Force-run Dunmore Roofing").click()
    expect(page.locator(f"#force-run-{tenant.id}")).to_contain_text("Queued")

    run_jobs(("billing",))

    expect(row.locator(".fr-status")).to_contain_text("payment failed: Your card was declined.", timeout=10_000)
    expect(row.locator("[data-col=last-invoice] .badge")).to_have_text("open")
    expect(row).to_contain_text("$29.00")
    assert_no_reload(page)


def test_search_and_sort_swap_the_table_and_update_the_address(page, plans):
    make_root()
    for name in ("Alpha Air", "Beta Boilers", "Gamma Gas"):
        make_tenant(name)
    sign_in(page, "root@example.com", PASSWORD)
    mark_no_reload(page)
    page.get_by_label("Search by name").fill("bet")
    expect(page.locator("#tenant-table tbody tr")).to_have_count(1)
    expect(page.locator("#tenant-table")).to_contain_text("Beta Boilers")
    assert "q=bet" in page.url
    page.get_by_label("Search by name").fill("")
    expect(page.locator("#tenant-table tbody tr")).to_have_count(3)
    page.locator("#tenant-table").get_by_role("link", name="Tenant").click()
    expect(page.locator("#tenant-table th[aria-sort]")).to_have_attribute("aria-sort", "ascending")
    names = page.locator("#tenant-table tbody th a").all_inner_texts()
    assert names == ["Alpha Air", "Beta Boilers", "Gamma Gas"]
    assert "sort=name" in page.url
    assert_no_reload(page)


# -- tenants: banner, restriction, Pay now, Update Payment Method ---------------------------------------------------

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


def test_restricted_tenant_is_confined_to_billing(page, plans):
    tenant = overdue_tenant("Dunmore Roofing", 46)
    assert tenant.dunning_stage == "restricted"
    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/usage")
    assert page.url.endswith("/admin/billing")
    expect(page.get_by_role("alert").filter(has_text="restricted because of an unpaid balance")).to_be_visible()
    expect(page.get_by_role("heading", name="Billing · Dunmore Roofing")).to_be_visible()
    page.goto("/admin/api-keys")
    assert page.url.endswith("/admin/billing")


def test_pay_now_shows_the_decline_in_place_then_pays_with_a_new_card(page, emulator, plans):
    tenant = card_tenant("pm_card_chargeCustomerFail", "Gamma Gas")
    outcome = invoice_and_charge(tenant.id, last_month()[0])
    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/billing")
    mark_no_reload(page)
    row = page.locator(f"#invoice-row-{outcome.invoice_id}")
    row.get_by_role("button", name=re.compile("Pay now")).click()
    result = row.locator(".pay-result")
    expect(result).to_contain_text("The payment was declined")
    expect(result).to_be_focused()
    expect(page.locator("#balance-due")).to_contain_text("$29.00")

    stripe_gateway.attach_default_card(tenant.stripe_customer_id, "pm_card_visa", key=f"browser-{tenant.id}")
    row.get_by_role("button", name=re.compile("Pay now")).click()
    expect(row.locator(".pay-result")).to_contain_text("Paid — thank you.")
    expect(row.locator(".badge")).to_have_text("paid")
    expect(page.locator("#balance-due")).to_contain_text("$0.00")  # swapped out of band
    assert_no_reload(page)


def test_update_payment_method_through_the_portal_pays_the_open_invoice(page, emulator, plans):
    tenant = card_tenant("pm_card_chargeCustomerFail", "Acme Plumbing")
    today = clock.today()
    for months_back, minutes in ((3, 300), (2, 650)):  # history for the screenshot, paid
        first = (today.replace(day=1) - timedelta(days=28 * months_back)).replace(day=1)
        make_invoice(tenant, at(first + timedelta(days=40)), status="paid", amount=2900 + minutes,
                     number=f"SP-{first:%Y-%m}-0000{months_back}")
    add_usage(tenant.id, today, voice_minutes=620, sms_outbound=340, sms_inbound=90)
    outcome = invoice_and_charge(tenant.id, last_month()[0])
    assert outcome.payment == "failed"

    sign_in(page, admin_email(tenant), PASSWORD)
    page.goto("/admin/billing")
    row = page.locator(f"#invoice-row-{outcome.invoice_id}")
    expect(row.locator(".badge")).to_have_text("open")
    page.get_by_role("button", name="Update Payment Method").click()

    # The emulator's Customer Portal (payment-method update flow).
    page.wait_for_url(re.compile(r"/portal/"))
    expect(page.get_by_role("heading", name="Update your payment method")).to_be_visible()
    page.locator("#choose-pm_card_visa").click()

    page.wait_for_url(re.compile(r"/admin/billing$"))
    expect(page.get_by_role("status").filter(has_text="every open invoice is paid")).to_be_visible()
    expect(row.locator(".badge")).to_have_text("paid")
    expect(page.locator("#balance-due")).to_contain_text("$0.00")
    db.session.expire_all()
    assert db.session.get(Invoice, outcome.invoice_id).status == "paid"
    save_screenshot(page, "tenant-billing")


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
