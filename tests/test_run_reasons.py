"""The system billing page says why nothing happened: run-all counts per reason, force-run messages, and month
pickers that start on the month with work."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import BillingRun, Invoice
from app.services import clock, invoicing, payments
from app.system_billing.queries import default_period, run_problems
from tests.factories import make_root, make_tenant, tenant_with_card
from tests.support.queues import run_jobs
from tests.support.web import csrf_from

HX = {"HX-Request": "true"}
LONG_AGO = clock.utcnow() - timedelta(days=3 * 365)


@pytest.fixture
def root(app, client, auth, plans):
    make_root()
    auth.login("root@example.com")
    return client


def visible(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def months_back(period: str, n: int) -> str:
    year, month = clock.parse_period(period)
    k = year * 12 + month - 1 - n
    return f"{k // 12:04d}-{k % 12 + 1:02d}"


def month_end(period: str):
    return invoicing.period_end_utc(*clock.parse_period(period))


def selected(html: str, select_id: str) -> str | None:
    m = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', html, re.S)
    assert m, f"no #{select_id}"
    chosen = re.search(r'<option value="([^"]+)" selected>', m.group(1))
    return chosen.group(1) if chosen else None


def run_all(client, period: str) -> str:
    token = csrf_from(client.get("/admin/system-billing").get_data(as_text=True))
    resp = client.post("/admin/system-billing/runs", data={"period": period}, headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return resp.get_data(as_text=True)


def test_run_all_result_counts_tenants_per_reason(root, emulator):
    period = default_period()
    tenant_with_card(name="Paid Co", created_at=LONG_AGO)
    done = tenant_with_card(name="Done Co", created_at=LONG_AGO)
    invoicing.invoice_and_charge(done.id, period)  # invoiced before the run
    broken = make_tenant("Broken Co", created_at=LONG_AGO, stripe_customer_id="cus_missing")  # Stripe: unknown
    make_tenant("Later Co", created_at=month_end(period) + timedelta(seconds=1))

    html = run_all(root, period)
    assert "3 tenants" in visible(html)  # the three that existed; Later Co is counted below, not run
    run_jobs(("billing",))
    run = db.session.scalar(select(BillingRun))
    text = visible(root.get(f"/admin/system-billing/runs/{run.id}", headers=HX).get_data(as_text=True))
    assert "3 of 3 tenants" in text
    assert "Invoiced: 1 — paid 1" in text
    assert "Skipped: 2 — already invoiced 1, created after the period 1" in text
    assert "Failed: 1 — no Stripe customer 1" in text
    # One line first, naming the tenant the run could not settle and why (its link leads to its page).
    headline = re.search(r'<p class="run-headline"[^>]*>(.*?)</p>', html_of_run(root, run.id), re.S).group(1)
    assert visible(headline).startswith(
        "1 paid · 1 already invoiced · 1 created after the period · 1 no Stripe customer: Broken Co — ")
    assert f'href="/admin/system-billing/tenants/{broken.id}"' in headline
    # The no-JS page of the run says the same.
    assert "Skipped: 2 — already invoiced 1, created after the period 1" in visible(
        root.get(f"/admin/system-billing/runs/{run.id}").get_data(as_text=True))


def html_of_run(client, run_id: int) -> str:
    return client.get(f"/admin/system-billing/runs/{run_id}", headers=HX).get_data(as_text=True)


def test_run_all_names_each_declined_tenant_with_the_decline(root, emulator):
    period = default_period()
    for name in ("Acme Plumbing", "Brightside HVAC", "Citywide Electric"):
        tenant_with_card(name=name, created_at=LONG_AGO)
    tenant_with_card("pm_card_chargeCustomerFail", name="Dunmore Roofing", created_at=LONG_AGO)
    run_all(root, period)
    run_jobs(("billing",))
    run = db.session.scalar(select(BillingRun))
    html = html_of_run(root, run.id)
    assert visible(re.search(r'<p class="run-headline".*?</p>', html, re.S).group(0)) == (
        "3 paid · 1 payment declined: Dunmore Roofing — Your card was declined.")
    # The system page says the same (the latest run), and so does the run's own page.
    assert "1 payment declined: Dunmore Roofing — Your card was declined." in visible(
        root.get("/admin/system-billing").get_data(as_text=True))
    assert "Dunmore Roofing — Your card was declined." in visible(
        root.get(f"/admin/system-billing/runs/{run.id}").get_data(as_text=True))
    # Only the run's own charges count: a later "Pay now" decline is not named again under this run.
    invoice_id = db.session.scalar(select(Invoice.id).where(Invoice.status == "open"))
    assert not payments.pay_now(invoice_id).ok
    named = run_problems(run, invoicing.run_summary(run.id))
    assert [(n.name, n.message) for n in named["payment_failed"]] == [("Dunmore Roofing", "Your card was declined.")]


def test_a_run_with_nothing_to_invoice_says_why(root):
    period = default_period()
    make_tenant("New Co", created_at=clock.utcnow())
    text = visible(run_all(root, period))
    assert "0 of 0 tenants" in text
    assert f"No tenant to invoice for {period}: every tenant was created after it." in text
    assert "Skipped: 1 — created after the period 1" in text


def test_force_run_of_a_tenant_created_after_the_month_says_so(root, emulator):
    period = default_period()
    tenant = tenant_with_card(name="Fresh Co", created_at=clock.utcnow())
    token = csrf_from(root.get("/admin/system-billing").get_data(as_text=True))
    root.post(f"/admin/system-billing/tenants/{tenant.id}/force-run", data={"period": period},
              headers={**HX, "X-CSRFToken": token})
    run_jobs(("billing",))
    html = root.get(f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period={period}",
                    headers=HX).get_data(as_text=True)
    assert f"Nothing to do: the tenant was created after {period}, so it is not billed for it." in visible(html)


def test_month_pickers_start_on_the_latest_month_with_work(root, emulator):
    last = default_period()
    before = months_back(last, 1)
    # Billable for the last two months only; last month's invoice is done, the month before is not.
    tenant = tenant_with_card(name="Gap Co", created_at=month_end(months_back(last, 2)))
    invoicing.invoice_and_charge(tenant.id, last)

    page = root.get("/admin/system-billing").get_data(as_text=True)
    assert selected(page, "run-period") == before and selected(page, "force-run-period") == before
    tenant_page = root.get(f"/admin/system-billing/tenants/{tenant.id}").get_data(as_text=True)
    assert selected(tenant_page, f"period-{tenant.id}") == before
    # A table refresh carries the page's month along (hx-include on the section) and keeps it.
    assert 'hx-include="#force-run-period"' in page
    table = root.get(f"/admin/system-billing?sort=name&period={before}",
                     headers={**HX, "HX-Target": "tenant-table"}).get_data(as_text=True)
    assert selected(table, "force-run-period") == before

    invoicing.invoice_and_charge(tenant.id, before)  # no month has work left: back to the previous month
    page = root.get("/admin/system-billing").get_data(as_text=True)
    assert selected(page, "run-period") == last and selected(page, "force-run-period") == last
    tenant_page = root.get(f"/admin/system-billing/tenants/{tenant.id}").get_data(as_text=True)
    assert selected(tenant_page, f"period-{tenant.id}") == last
