"""The tenant billing page: what a tenant admin sees and can do (Flask test client, real Stripe emulator)."""
from __future__ import annotations

import re
from datetime import date, timedelta
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

from app import stripe_gateway
from app.extensions import db
from app.models import Invoice, InvoiceLine, PaymentAttempt, Tenant
from app.services import clock
from app.services.dunning import reevaluate_tenant
from app.services.invoicing import invoice_and_charge
from app.system_billing.queries import default_period
from tests.billing_support import add_usage
from tests.factories import LONG_AGO, admin_email, make_invoice, make_root, make_tenant, tenant_with_card
from tests.support.pages import row_html, text_of, text_of_html
from tests.support.web import HX, csrf_from


# -- helpers ---------------------------------------------------------------------------------------------------

def billed_tenant(card: str, name: str | None = None) -> tuple[Tenant, Invoice]:
    """A tenant with a Stripe card whose previous month was invoiced and charged for real (through the emulator)."""
    tenant = tenant_with_card(card, name=name, created_at=LONG_AGO)
    outcome = invoice_and_charge(tenant.id, default_period())
    db.session.expire_all()
    return db.session.get(Tenant, tenant.id), db.session.get(Invoice, outcome.invoice_id)


def token(client, path: str = "/admin/billing") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


def attempts(invoice_id: int) -> list[PaymentAttempt]:
    db.session.expire_all()
    return list(db.session.scalars(select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice_id)
                                   .order_by(PaymentAttempt.id)))


# -- the page --------------------------------------------------------------------------------------------------

def test_page_shows_plan_addons_usage_estimate_balance_and_next_invoice(app, client, auth, plans):
    tenant = make_tenant("Acme Plumbing")
    today = clock.today()
    add_usage(tenant.id, today, voice_minutes=700, sms_outbound=100)
    make_invoice(tenant, today - timedelta(days=3), amount=4900)  # open, due 3 days ago
    auth.login(admin_email(tenant))

    resp = client.get("/admin/billing")
    assert resp.status_code == 200
    text = text_of(resp)
    assert "Billing · Acme Plumbing" in text
    assert "Starter $29.00 per month" in text
    assert "500 Voice minutes, then $0.015 each" in text
    assert "Add-ons" in text
    # Usage so far, priced as the invoice would be: $29 fee + 200 billable minutes × $0.015; SMS within the plan.
    assert "Voice minutes 700 500 200 $3.00" in text
    assert "Outbound SMS 100 500 0 $0.00" in text
    assert "If the month ended today $32.00" in text
    first, last = clock.month_bounds(today.year, today.month)
    nxt = last + timedelta(days=1)
    assert f"Next invoice on {nxt:%b} {nxt.day}, {nxt.year}" in text
    assert re.search(r'id="balance-due".*?\$49\.00', resp.get_data(as_text=True), flags=re.S)
    if today > first:  # a projection needs at least one whole day of the month
        assert "At this month's pace" in text


def test_lists_the_last_six_invoices_newest_first_plus_any_older_open_one(app, client, auth, plans):
    tenant = make_tenant()
    oldest_open = make_invoice(tenant, date(2025, 3, 2), amount=1111, number="SP-OLD-OPEN")
    for month in range(1, 9):  # Jan..Aug 2026, all paid
        make_invoice(tenant, date(2026, month, 2), status="paid", number=f"SP-2026-{month:02d}")
    auth.login(admin_email(tenant))
    html = client.get("/admin/billing").get_data(as_text=True)
    numbers = re.findall(r'<tr id="invoice-row-\d+"[^>]*>\s*<th scope="row"><a [^>]+>([^<]+)</a>', html)
    # The last six periods (Jul 2026 back to Feb 2026: invoices issued Aug..Mar), then the old open one.
    assert numbers == [f"SP-2026-{m:02d}" for m in range(8, 2, -1)] + ["SP-OLD-OPEN"]
    row = row_html(html, f"invoice-row-{oldest_open.id}")
    assert "badge-open" in row and "$11.11" in row
    paid_row = row_html(html, re.search(r'id="(invoice-row-\d+)"', html).group(1))
    assert "badge-paid" in paid_row and "Aug 2, 2026" in paid_row
    assert 'href="/admin/billing/invoices/' in paid_row
    assert "Invoices 1–6 of 9, newest first" in text_of_html(html)


def test_every_invoice_is_reachable_a_page_at_a_time(app, client, auth, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2025, 3, 2), amount=1111, number="SP-OLD-OPEN")
    for month in range(1, 9):
        make_invoice(tenant, date(2026, month, 2), status="paid", number=f"SP-2026-{month:02d}")
    auth.login(admin_email(tenant))
    html = client.get("/admin/billing").get_data(as_text=True)
    # The pager is a link (works without JS) that htmx follows in place, putting ?page= in the address.
    assert re.search(r'<a rel="next" href="/admin/billing\?page=2" hx-get="/admin/billing\?page=2"[^>]*'
                     r'hx-push-url="true" hx-select="#invoices-card">Next →</a>', html)
    html = client.get("/admin/billing?page=2").get_data(as_text=True)
    numbers = re.findall(r'<tr id="invoice-row-\d+"[^>]*>\s*<th scope="row"><a [^>]+>([^<]+)</a>', html)
    assert numbers == ["SP-2026-02", "SP-2026-01", "SP-OLD-OPEN"]  # the rest, oldest last; nothing twice
    assert "Invoices 7–9 of 9, newest first" in text_of_html(html) and "Page 2 of 2" in html
    html = client.get("/admin/billing?page=7").get_data(as_text=True)  # past the end: a way back
    assert "There is no page 7." in text_of_html(html) and 'href="/admin/billing"' in html
    assert client.get("/admin/billing?page=x").status_code == 200


def test_the_due_column_counts_overdue_days_to_the_last_dunning_pass(app, client, auth, plans):
    from app.services.dunning import run_pass

    tenant = make_tenant("Late Co")
    due = clock.today() - timedelta(days=5)
    inv = make_invoice(tenant, due, number="SP-LATE")
    run_pass(due + timedelta(days=50))  # a pass run --as-of fifty days after the due date
    auth.login(admin_email(tenant))
    html = client.get("/admin/billing").get_data(as_text=True)
    due_cell = re.search(r'<td data-col="due">(.*?)</td>', row_html(html, f"invoice-row-{inv.id}"), re.S).group(1)
    assert text_of_html(due_cell) == f"{due:%b} {due.day}, {due.year} 50 days overdue"
    assert "50 days overdue" in text_of_html(html)  # the banner says the same number


def test_stripe_hosted_invoice_link_and_pay_now_only_on_open_stripe_invoices(app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    assert invoice.status == "open" and invoice.hosted_invoice_url
    auth.login(admin_email(tenant))
    html = client.get("/admin/billing").get_data(as_text=True)
    row = row_html(html, f"invoice-row-{invoice.id}")
    assert f'href="{invoice.hosted_invoice_url}"' in row
    assert f'hx-post="/admin/billing/invoices/{invoice.id}/pay"' in row and "Pay now" in row
    assert invoice.last_payment_error in row


def test_printable_invoice_shows_number_period_lines_and_totals(app, client, auth, plans):
    tenant = make_tenant("Print Co")
    inv = make_invoice(tenant, date(2026, 10, 1), amount=3200, number="SP-2026-09-000042")
    inv.lines.append(InvoiceLine(metric=None, quantity=1, unit_price=29, amount=2900,
                                 description="Starter plan, September 2026", period_start=date(2026, 9, 1),
                                 period_end=date(2026, 9, 30)))
    inv.lines.append(InvoiceLine(metric="voice_minutes", quantity=20, used_quantity=520, included=500,
                                 unit_price="0.015", amount=30, description="Voice minutes, September 2026",
                                 period_start=date(2026, 9, 1), period_end=date(2026, 9, 30)))
    db.session.commit()
    auth.login(admin_email(tenant))
    resp = client.get(f"/admin/billing/invoices/{inv.id}")
    assert resp.status_code == 200
    text = text_of(resp)
    assert "Invoice SP-2026-09-000042" in text
    assert "September 2026 ( Sep 1, 2026 – Sep 30, 2026 )" in text
    assert "Starter plan, September 2026 1 $29.00 $29.00" in text
    assert "Voice minutes, September 2026 20 $0.015 $0.30" in text
    assert "Total $32.00" in text and "Balance $32.00" in text
    assert 'data-print' in resp.get_data(as_text=True)  # the print button (wired in app.js; print CSS in app.css)


# -- isolation and errors ----------------------------------------------------------------------------------------

def test_another_tenants_invoice_is_404_in_html_json_and_htmx(app, client, auth, plans):
    mine, theirs = make_tenant("Mine"), make_tenant("Theirs Inc")
    their_invoice = make_invoice(theirs, date(2026, 10, 1), number="SP-THEIRS").id
    auth.login(admin_email(mine))
    csrf = token(client)

    resp = client.get(f"/admin/billing/invoices/{their_invoice}")
    assert resp.status_code == 404 and "Theirs Inc" not in resp.get_data(as_text=True)
    resp = client.get(f"/admin/billing/invoices/{their_invoice}", headers={"Accept": "application/json"})
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    resp = client.post(f"/admin/billing/invoices/{their_invoice}/pay", data={"csrf_token": csrf})
    assert resp.status_code == 404
    resp = client.post(f"/admin/billing/invoices/{their_invoice}/pay", headers={**HX, "X-CSRFToken": csrf})
    assert resp.status_code == 404
    assert db.session.scalar(select(PaymentAttempt.id)) is None
    # ?tenant_id= means nothing to a tenant admin: they see their own page.
    resp = client.get(f"/admin/billing?tenant_id={theirs.id}")
    assert resp.status_code == 200 and "Theirs Inc" not in resp.get_data(as_text=True)


def test_pay_now_without_a_csrf_token_is_refused(app, client, auth, plans):
    tenant = make_tenant()
    inv = make_invoice(tenant, date(2026, 10, 1))
    auth.login(admin_email(tenant))
    assert client.post(f"/admin/billing/invoices/{inv.id}/pay", headers=HX).status_code == 400
    resp = client.post(f"/admin/billing/invoices/{inv.id}/pay", headers={"Accept": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "csrf_failed"


def test_pay_now_on_a_paid_invoice_says_so_and_charges_nothing(app, client, auth, plans):
    tenant = make_tenant()
    inv = make_invoice(tenant, date(2026, 10, 1), status="paid")
    auth.login(admin_email(tenant))
    resp = client.post(f"/admin/billing/invoices/{inv.id}/pay", headers={**HX, "X-CSRFToken": token(client)})
    assert resp.status_code == 200
    assert "This invoice is already paid." in text_of(resp)
    assert attempts(inv.id) == []


def test_root_admin_is_sent_to_system_billing_or_sees_a_tenant_read_only(app, client, auth, plans):
    tenant = make_tenant("Looked At")
    inv = make_invoice(tenant, date(2026, 10, 1))
    make_root()
    auth.login("root@example.com")
    resp = client.get("/admin/billing")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/system-billing")
    resp = client.get(f"/admin/billing?tenant_id={tenant.id}")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Billing · Looked At" in html and "read-only" in html
    assert "Update Payment Method" not in html and "Pay now" not in html
    assert client.get("/admin/billing?tenant_id=999999").status_code == 404
    assert client.get(f"/admin/billing/invoices/{inv.id}").status_code == 200
    csrf = token(client, f"/admin/billing?tenant_id={tenant.id}")
    assert client.post(f"/admin/billing/invoices/{inv.id}/pay", data={"csrf_token": csrf}).status_code == 403
    assert client.post("/admin/billing/payment-method", data={"csrf_token": csrf}).status_code == 403


def test_restricted_tenant_reaches_every_billing_page(app, client, auth, plans):
    tenant = make_tenant(dunning_stage="restricted", overdue_days=50)
    inv = make_invoice(tenant, date(2026, 1, 2))
    auth.login(admin_email(tenant))
    assert client.get("/admin/usage").headers["Location"].endswith("/admin/billing")
    assert client.get("/admin/billing").status_code == 200
    assert client.get(f"/admin/billing/invoices/{inv.id}").status_code == 200


def test_a_restricted_admin_reads_the_restriction_once_and_sees_only_what_they_can_open(app, client, auth, plans):
    tenant = make_tenant(dunning_stage="restricted", overdue_days=50)
    make_invoice(tenant, clock.today() - timedelta(days=50))
    auth.login(admin_email(tenant))
    html = client.get("/admin/usage", follow_redirects=True).get_data(as_text=True)
    assert html.count("restricted because of an unpaid balance") == 1  # the banner, not the banner and a flash
    nav = re.search(r'<nav aria-label="Main".*?</nav>', html, re.S).group(0)
    assert 'href="/admin/billing"' in nav and 'aria-current="page"' in nav
    assert 'href="/admin/usage"' not in nav and 'href="/admin/api-keys"' not in nav
    # Paid up, the whole navigation is back.
    db.session.get(Tenant, tenant.id).dunning_stage = "ok"
    db.session.commit()
    nav = re.search(r'<nav aria-label="Main".*?</nav>', client.get("/admin/billing").get_data(as_text=True),
                    re.S).group(0)
    assert 'href="/admin/usage"' in nav and 'href="/admin/api-keys"' in nav


def test_metric_names_read_the_same_on_every_page_and_pages_have_a_favicon(app, client, auth, plans):
    tenant = make_tenant()
    add_usage(tenant.id, clock.today(), sms_inbound=5)
    auth.login(admin_email(tenant))
    for path in ("/admin/usage", "/admin/billing"):
        html = client.get(path).get_data(as_text=True)
        assert "Inbound SMS" in html and "Sms inbound" not in html and "sms inbound" not in html.lower(), path
        icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html).group(1)
    resp = client.get(icon)
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml" and b"<svg" in resp.data


# -- Pay now -----------------------------------------------------------------------------------------------------

def test_pay_now_with_htmx_shows_the_decline_then_pays_in_place_after_a_new_card(app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    auth.login(admin_email(tenant))
    csrf = token(client)

    resp = client.post(f"/admin/billing/invoices/{invoice.id}/pay", headers={**HX, "X-CSRFToken": csrf})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert html.lstrip().startswith(f'<tr id="invoice-row-{invoice.id}"')  # the row replaces itself
    assert "The payment was declined" in html and 'role="alert"' in html
    assert "Pay now" in html  # still open: the button stays
    assert [a.trigger for a in attempts(invoice.id)][-1] == "pay_now"

    # Twenty days later the tenant is in dunning (the banner shows); they get a new card and pay.
    db.session.get(Invoice, invoice.id).due_at -= timedelta(days=20)
    db.session.commit()
    reevaluate_tenant(tenant.id)
    assert 'id="overdue-banner"' in client.get("/admin/billing").get_data(as_text=True)
    stripe_gateway.attach_default_card(tenant.stripe_customer_id, "pm_card_visa", key=f"new-card-{tenant.id}")
    resp = client.post(f"/admin/billing/invoices/{invoice.id}/pay", headers={**HX, "X-CSRFToken": csrf})
    html = resp.get_data(as_text=True)
    row = row_html(html, f"invoice-row-{invoice.id}")
    assert "Paid — thank you." in row and "badge-paid" in row and "Pay now" not in row
    # Out of band: the balance card drops to zero and the overdue banner goes away.
    assert re.search(r'<section[^>]*id="balance-due"[^>]*hx-swap-oob="true".*?\$0\.00', html, flags=re.S)
    assert '<div id="overdue-banner" hx-swap-oob="delete"></div>' in html
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert db.session.get(Tenant, tenant.id).dunning_stage == "ok"


def test_pay_now_without_javascript_redirects_back_with_the_result(app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    auth.login(admin_email(tenant))
    resp = client.post(f"/admin/billing/invoices/{invoice.id}/pay", data={"csrf_token": token(client)})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/billing")
    page = client.get("/admin/billing")
    assert "The payment was declined" in text_of(page)
    assert 'class="flash flash-error"' in page.get_data(as_text=True)


# -- Update Payment Method ---------------------------------------------------------------------------------------

def test_update_payment_method_goes_to_the_portal_and_back_and_retries_open_invoices_once(
        app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    auth.login(admin_email(tenant))
    resp = client.post("/admin/billing/payment-method", data={"csrf_token": token(client)})
    assert resp.status_code == 303
    portal = resp.headers["Location"]
    assert portal.startswith(f"{emulator.url}/portal/")

    # The customer picks a working card on the portal page, which sends them back to us.
    assert "Update your payment method" in requests.get(portal, timeout=10).text
    back = requests.post(f"{portal}/payment_method", data={"payment_method": "pm_card_visa"},
                         allow_redirects=False, timeout=10)
    assert back.status_code == 303
    back_url = urlsplit(back.headers["Location"])
    assert back_url.path == "/admin/billing" and back_url.query.startswith("card_updated=")

    resp = client.get(f"{back_url.path}?{back_url.query}")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/billing")
    text = text_of(client.get("/admin/billing"))
    assert "Your payment method was updated and every open invoice is paid." in text
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert [a.trigger for a in attempts(invoice.id)] == ["scheduled", "card_updated"]

    # The return link is single-use: a reload (or a forged link) charges nothing again.
    client.get(f"{back_url.path}?{back_url.query}")
    client.get("/admin/billing?card_updated=forged")
    assert len(attempts(invoice.id)) == 2


def test_card_update_that_still_declines_tells_the_tenant(app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    auth.login(admin_email(tenant))
    portal = client.post("/admin/billing/payment-method", data={"csrf_token": token(client)}).headers["Location"]
    back = requests.post(f"{portal}/payment_method", data={"payment_method": "pm_card_chargeCustomerFail"},
                         allow_redirects=False, timeout=10)
    loc = urlsplit(back.headers["Location"])
    client.get(f"{loc.path}?{loc.query}")
    text = text_of(client.get("/admin/billing"))
    assert "Your payment method was updated, but 1 invoice could not be charged" in text
    assert db.session.get(Invoice, invoice.id).status == "open"


def back_from_portal_without_choosing(client) -> None:
    """The portal's "return" link, the card left as it was: the app's return address with the session's nonce."""
    with client.session_transaction() as sess:
        nonce = sess["card_update_nonce"]
    client.get(f"/admin/billing?card_updated={nonce}")


def test_coming_back_from_the_portal_without_a_new_card_says_nothing_changed(app, client, auth, plans, emulator):
    tenant, invoice = billed_tenant("pm_card_chargeCustomerFail")
    auth.login(admin_email(tenant))
    client.post("/admin/billing/payment-method", data={"csrf_token": token(client)})
    back_from_portal_without_choosing(client)
    text = text_of(client.get("/admin/billing"))
    assert "Your payment method was not changed. 1 invoice is still open." in text
    assert "every open invoice is paid" not in text and "payment method was updated" not in text
    assert [a.trigger for a in attempts(invoice.id)] == ["scheduled"]  # the old card is not charged again


def test_a_new_card_with_nothing_open_does_not_claim_to_have_paid_anything(app, client, auth, plans, emulator):
    tenant = tenant_with_card("pm_card_visa")
    auth.login(admin_email(tenant))
    portal = client.post("/admin/billing/payment-method", data={"csrf_token": token(client)}).headers["Location"]
    back = requests.post(f"{portal}/payment_method", data={"payment_method": "pm_card_mastercard"},
                         allow_redirects=False, timeout=10)
    loc = urlsplit(back.headers["Location"])
    client.get(f"{loc.path}?{loc.query}")
    text = text_of(client.get("/admin/billing"))
    assert "Your payment method was updated. Nothing was due, so nothing was charged." in text
    assert "every open invoice is paid" not in text


def test_update_payment_method_when_stripe_is_unreachable_shows_a_message(app, client, auth, plans):
    # No emulator: the app's Stripe base URL points at a closed port.
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    resp = client.post("/admin/billing/payment-method", data={"csrf_token": token(client)})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/billing")
    assert "We could not open the secure payment page just now" in text_of(client.get("/admin/billing"))


def test_update_payment_method_with_htmx_redirects_the_browser(app, client, auth, plans, emulator):
    tenant = tenant_with_card("pm_card_visa")
    auth.login(admin_email(tenant))
    resp = client.post("/admin/billing/payment-method", headers={**HX, "X-CSRFToken": token(client)})
    assert resp.status_code == 204 and resp.headers["HX-Redirect"].startswith(f"{emulator.url}/portal/")


@pytest.mark.parametrize("path", ["/admin/billing", "/admin/billing/invoices/1"])
def test_signed_out_visitors_are_sent_to_sign_in(client, path):
    resp = client.get(path)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
