"""The demo as a newcomer gets it (`flask seed demo`, webhooks delivered to the app as under `make run`), walked
in a real browser: the root admin runs last month for every tenant, the declining tenant's admin updates the
card. The README's screenshots are taken here: `UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest
tests/browser/test_demo_screens.py` refreshes docs/screenshots/.
"""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.services.seed import seed_demo
from app.system_billing.queries import default_period
from tests.support.browser_pages import assert_equals_reload, assert_no_reload, mark_no_reload, save_screenshot, sign_in
from tests.support.queues import run_jobs

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("fast_stripe_retries")]

PASSWORD = "demo-password"


def test_the_demo_story_runs_last_month_and_the_decliner_pays(page, emulator, hook):
    hook()  # the emulator delivers its events to the app, as under `make run`
    seed_demo(PASSWORD)
    run_jobs(("webhooks", "billing", "default"))
    period = default_period()

    sign_in(page, "root@example.com", PASSWORD)
    expect(page.get_by_label("Month", exact=True)).to_have_value(period)  # the month left for the newcomer
    mark_no_reload(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Run all tenants").click()
    run = page.locator("#billing-run")
    expect(run).to_contain_text("of 4 tenants")  # queued: now the worker may take the jobs
    run_jobs(("billing",))
    expect(run).to_contain_text("4 of 4 tenants", timeout=15_000)
    expect(run.locator("[data-run-headline]")).to_have_text(
        "3 paid · 1 payment declined: Dunmore Roofing — Your card was declined.")
    assert_equals_reload(page)
    assert_no_reload(page)
    page.evaluate("window.scrollTo(0, 0)")
    save_screenshot(page, "system-billing")
    run_jobs(("webhooks", "default"))
    page.context.clear_cookies()

    sign_in(page, "admin@dunmore-roofing.example.com", PASSWORD)
    assert page.url.endswith("/admin/billing")  # restricted: billing is all there is
    expect(page.locator("#overdue-banner")).to_contain_text("restricted because of an unpaid balance")
    expect(page.locator("#invoices .badge").filter(has_text="open")).to_have_count(3)
    page.get_by_role("button", name="Update Payment Method").click()
    page.wait_for_url(re.compile(r"/portal/"))
    page.locator("#choose-pm_card_visa").click()
    page.wait_for_url(re.compile(r"/admin/billing$"))
    expect(page.get_by_role("status").filter(has_text="every open invoice is paid")).to_be_visible()
    expect(page.locator("#overdue-banner")).to_have_count(0)
    expect(page.locator("#balance-due")).to_contain_text("$0.00")
    expect(page.locator("#main-nav").get_by_role("link", name="Usage")).to_be_visible()
    assert_equals_reload(page)
    save_screenshot(page, "tenant-billing")
