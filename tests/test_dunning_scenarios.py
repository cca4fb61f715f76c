"""Scenarios that read like the product: a declined tenant walks the ladder day by day, pays, and is restored.

The clock is injected: every night the pass runs as of that day and the outbox is flushed to a real SMTP server.
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Invoice, InvoiceStatus, Tenant
from app.services import dunning
from app.services.dunning import reevaluate_tenant, run_pass
from app.services.notifications import flush_outbox, notify_payment_failed
from tests.factories import admin_email, at, make_api_key, make_invoice, make_root, make_tenant, tenant_with_card
from tests.support.stored import stage_of
from tests.support.web import Browser, csrf_from, login

ISSUE = date(2026, 3, 2)
SUBJECT = {  # what each email's subject starts with
    "payment_failed": "Payment failed", "reminder": "Payment Reminder", "suspended": "Service suspended",
    "restricted": "Account restricted", "restored": "Thank you", "invoice_issued": "Invoice ", "receipt": "Receipt",
}
EXPECTED = {"ok": (True, True, "full"), "reminder": (True, True, "full"), "suspended": (False, False, "full"),
            "restricted": (False, False, "billing_only")}


@pytest.fixture(autouse=True)
def banner(app):
    dunning.init_app(app)  # idempotent: the factory wires it too once registered there


def sign_in(app, email: str) -> Browser:
    browser = Browser(app)
    with app.app_context():
        resp = login(browser.client, email)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    return browser


class Tenancy:
    """One declined tenant, its signed-in admin, its API key and the mail it received."""

    def __init__(self, app, sink, tenant: Tenant | None = None):
        self.app, self.sink = app, sink
        self.tenant = tenant or make_tenant("Declined Co")
        self.tenant_id = self.tenant.id
        self.email = self.tenant.billing_email
        self.key = make_api_key(self.tenant)
        self.admin = sign_in(app, admin_email(self.tenant))
        self.api = Browser(app)

    def night(self, n: int):
        """Run the nightly pass for day n after issue, then the outbox job."""
        day = ISSUE + timedelta(days=n)
        result = run_pass(day, now=at(day, 2))
        flush_outbox()
        return result

    def mail(self) -> Counter:
        counts = Counter()
        for subject in self.sink.subjects(to=self.email):
            kind = next((k for k, prefix in SUBJECT.items() if subject.startswith(prefix)), subject)
            counts[kind] += 1
        return counts

    def entitlements(self) -> tuple:
        resp = self.api.get(f"/api/tenants/{self.tenant_id}/entitlements",
                            headers={"Authorization": f"Bearer {self.key}"})
        assert resp.status_code == 200
        e = resp.get_json()
        return e["telephony"], e["sms_outbound"], e["admin_access"]

    def usage_page(self):
        return self.admin.get("/admin/usage")

    def billing_page(self) -> str:
        resp = self.admin.get("/admin/billing")
        assert resp.status_code == 200
        return resp.get_data(as_text=True)


def expected_stage(n: int) -> str:
    return "ok" if n < 14 else "reminder" if n < 30 else "suspended" if n < 45 else "restricted"


def assert_access(t: Tenancy, stage: str) -> None:
    usage = t.usage_page()
    if stage == "restricted":
        assert usage.status_code == 302 and usage.headers["Location"].endswith("/admin/billing")
        page = t.admin.get("/admin/usage", follow_redirects=True).get_data(as_text=True)
        assert "restricted because of an unpaid balance" in page  # the explanation, on the billing page
        assert t.admin.get("/admin/api-keys").status_code == 302
        # HTMX requests are redirected the HTMX way.
        hx = t.admin.get("/admin/usage", headers={"HX-Request": "true"})
        assert hx.headers.get("HX-Redirect", "").endswith("/admin/billing")
    else:
        assert usage.status_code == 200
    t.billing_page()  # billing is always reachable


def banner_of(html: str) -> str | None:
    m = re.search(r'<div id="overdue-banner".*?</div>', html, re.S)
    return " ".join(m.group(0).split()) if m else None


def start(app, smtp_sink) -> Tenancy:
    t = Tenancy(app, smtp_sink)
    inv = make_invoice(t.tenant, at(ISSUE, 10), amount=4900)
    inv.last_payment_error = "Your card was declined."
    db.session.commit()
    notify_payment_failed(inv, now=at(ISSUE, 10))  # what payments.charge_invoice does on the first decline
    return t


def test_declined_tenant_walks_the_ladder_day_by_day(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    entered: dict[str, int] = {}
    for n in range(0, 51):
        t.night(n)
        stage, days = stage_of(t.tenant_id)
        assert (stage, days) == (expected_stage(n), n), f"day {n}"
        entered.setdefault(stage, n)
        assert t.entitlements() == EXPECTED[stage], f"day {n}"
        mail = t.mail()
        # Exactly one email per stage, sent the night the stage is entered (and the payment-failed one at once).
        assert mail == Counter({"payment_failed": 1} | {s: 1 for s in entered if s != "ok"}), f"day {n}"
        if n in (0, 13, 14, 29, 30, 44, 45, 50):
            assert_access(t, stage)
    assert entered == {"ok": 0, "reminder": 14, "suspended": 30, "restricted": 45}
    bodies = {m["Subject"]: m.get_body(("plain",)).get_content() for m in smtp_sink.messages}
    reminder = next(b for s, b in bodies.items() if s.startswith("Payment Reminder"))
    assert "$49.00" in reminder and "14 days overdue" in reminder
    assert "2026-04-01" in reminder  # suspension date: due Mar 2 + 30 days
    assert all("http://127.0.0.1:5000/admin/billing" in b for b in bodies.values())


def test_banner_shows_from_reminder_on_with_amount_and_next_step(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    t.night(13)
    assert banner_of(t.billing_page()) is None and 'id="overdue-banner"' not in t.usage_page().get_data(
        as_text=True)
    t.night(14)
    text = banner_of(t.usage_page().get_data(as_text=True))
    assert text is not None
    assert "$49.00 is 14 days overdue" in text
    assert "If it is still unpaid on 2026-04-01, calls and outbound SMS will be suspended" in text
    assert 'href="/admin/billing"' in text
    t.night(30)
    text = banner_of(t.billing_page())
    assert "30 days overdue" in text and "Calls and outbound SMS are suspended" in text
    assert "2026-04-16, admin access will be limited to billing" in text
    t.night(45)
    text = banner_of(t.billing_page())
    assert "45 days overdue" in text and "only billing is available" in text


def test_payment_on_day_31_restores_everything_at_once(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    for n in range(0, 32):
        t.night(n)
    assert stage_of(t.tenant_id) == ("suspended", 31)
    assert t.entitlements() == EXPECTED["suspended"]
    # The payment lands (a webhook or a retry marks the invoice paid) and calls the hook in the same request.
    day31 = ISSUE + timedelta(days=31)
    inv = db.session.scalars(select(Invoice).where(Invoice.tenant_id == t.tenant_id)).one()
    inv.status, inv.amount_paid, inv.paid_at = InvoiceStatus.PAID, inv.amount_due, at(day31, 15)
    assert reevaluate_tenant(t.tenant_id, now=at(day31, 15)) == "ok"
    flush_outbox()
    assert stage_of(t.tenant_id) == ("ok", 0)
    assert t.entitlements() == EXPECTED["ok"]
    assert t.mail() == Counter({"payment_failed": 1, "reminder": 1, "suspended": 1, "restored": 1})
    restored = next(m for m in smtp_sink.messages if m["Subject"].startswith("Thank you"))
    body = restored.get_body(("plain",)).get_content()
    assert "Calls and outbound SMS work again" in body and "/admin/billing" in body
    assert banner_of(t.billing_page()) is None
    for n in range(32, 51):  # nothing else happens afterwards
        t.night(n)
    assert stage_of(t.tenant_id) == ("ok", 0)
    assert sum(t.mail().values()) == 4


def test_payment_on_day_46_lifts_the_restriction_at_once(app, plans, smtp_sink, emulator):
    from app import stripe_gateway as gateway
    from app.services.admin_actions import mark_paid_out_of_band

    root = make_root()
    t = Tenancy(app, smtp_sink)
    customer = gateway.create_customer(t.tenant_id, "Declined Co", t.email)
    gateway.attach_default_card(customer, "pm_card_chargeCustomerFail", f"test-card-{t.tenant_id}")
    tenant = db.session.get(Tenant, t.tenant_id)
    tenant.stripe_customer_id = customer
    inv = make_invoice(tenant, at(ISSUE, 10), amount=4900)
    stripe_inv = gateway.create_invoice(inv.id, customer, "usd", "2026-02", t.tenant_id, inv.number)
    gateway.add_invoice_item(inv.id, customer, stripe_inv.id, 4900, "usd", "Starter plan", 1769904000, 1772236800)
    gateway.finalize_invoice(inv.id, stripe_inv.id)
    inv = db.session.get(Invoice, inv.id)
    inv.stripe_invoice_id = stripe_inv.id
    db.session.commit()
    with pytest.raises(gateway.GatewayError) as declined:
        gateway.pay_invoice(stripe_inv.id, f"attempt-{inv.id}-1")
    assert declined.value.outcome == gateway.Outcome.PAYMENT_FAILED
    notify_payment_failed(inv, now=at(ISSUE, 10))

    for n in range(0, 47):
        t.night(n)
    assert stage_of(t.tenant_id) == ("restricted", 46)
    assert_access(t, "restricted")
    # The tenant paid by bank transfer; the root admin records it.
    day46 = ISSUE + timedelta(days=46)
    result = mark_paid_out_of_band(inv.id, root, "bank transfer received 2026-04-17", now=at(day46, 16))
    assert result.stage == "ok"
    flush_outbox()
    assert stage_of(t.tenant_id) == ("ok", 0)
    assert t.entitlements() == EXPECTED["ok"]
    assert_access(t, "ok")  # same session, no new sign-in needed
    assert banner_of(t.billing_page()) is None
    assert gateway.retrieve_invoice(stripe_inv.id).status == "paid"
    assert t.mail() == Counter({"payment_failed": 1, "reminder": 1, "suspended": 1, "restricted": 1,
                                "restored": 1})
    restored = next(m for m in smtp_sink.messages if m["Subject"].startswith("Thank you"))
    assert "full access again" in restored.get_body(("plain",)).get_content()


def test_root_admin_is_never_restricted(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    t.night(50)
    assert stage_of(t.tenant_id)[0] == "restricted"
    make_root()
    root = sign_in(app, "root@example.com")
    assert root.get("/admin/system-billing").status_code == 200
    assert root.get("/admin/tenants").status_code == 200
    assert root.get(f"/api/tenants/{t.tenant_id}/entitlements").get_json()["admin_access"] == "billing_only"
    assert 'id="overdue-banner"' not in root.get("/admin/system-billing").get_data(as_text=True)


def test_restricted_admin_can_still_sign_in_and_out(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    t.night(46)
    fresh = Browser(app)
    with app.app_context():
        resp = login(fresh.client, admin_email(t.tenant))
    assert resp.status_code == 302
    landing = fresh.get(resp.headers["Location"], follow_redirects=True)
    assert landing.request.path == "/admin/billing"
    token = csrf_from(landing.get_data(as_text=True))
    out = fresh.post("/logout", data={"csrf_token": token})
    assert out.status_code == 302 and out.headers["Location"].endswith("/login")
    assert fresh.get("/admin/billing").status_code == 302  # signed out


def test_a_pass_skipped_for_ten_days_catches_up_with_one_email(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    for n in range(0, 25):
        t.night(n)
    assert t.mail() == Counter({"payment_failed": 1, "reminder": 1})
    # Nights 25..34 never ran (the scheduler was down); night 35 must land where a daily pass would be.
    result = t.night(35)
    assert result.changes == {"suspended": 1}
    assert stage_of(t.tenant_id) == ("suspended", 35)
    assert t.entitlements() == EXPECTED["suspended"]
    assert t.mail() == Counter({"payment_failed": 1, "reminder": 1, "suspended": 1})
    t.night(35)  # and running it twice changes nothing
    assert t.mail() == Counter({"payment_failed": 1, "reminder": 1, "suspended": 1})


def test_a_jump_over_several_stages_sends_one_email(app, plans, smtp_sink):
    t = start(app, smtp_sink)
    t.night(0)
    t.night(47)  # nothing ran for 47 nights
    assert stage_of(t.tenant_id) == ("restricted", 47)
    assert t.mail() == Counter({"payment_failed": 1, "restricted": 1})
    body = next(m for m in smtp_sink.messages if m["Subject"].startswith("Account restricted"))
    text = body.get_body(("plain",)).get_content()
    assert "straight to" in text and "$49.00" in text and "47 days overdue" in text


def test_nightly_job_runs_the_pass(app, plans, smtp_sink):
    from rq import SimpleWorker

    from app.extensions import rq
    from app.queue import enqueue_unique

    t = start(app, smtp_sink)
    enqueue_unique("billing", "app.jobs.dunning_pass", (ISSUE + timedelta(days=30)).isoformat(),
                   job_id="dunning-test")
    SimpleWorker([rq.queue("billing")], connection=rq.connection).work(burst=True)
    assert stage_of(t.tenant_id) == ("suspended", 30)


def test_end_to_end_through_the_real_charge_path(app, plans, smtp_sink, emulator):
    """Invoicing charges a declining card (payment-failed email at once); after a card update the retry pays
    and the payments code's call to reevaluate_tenant restores the tenant in the same call."""
    from app.services import invoicing, payments

    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=at(date(2026, 1, 1)))
    t = Tenancy(app, smtp_sink, tenant)

    outcome = invoicing.invoice_and_charge(tenant.id, "2026-02", now=at(ISSUE, 1))
    assert outcome.payment == "failed"
    flush_outbox()
    # The invoice is announced, then the payment-failed email goes out on the first failed charge, not at day 14.
    assert t.mail() == Counter({"invoice_issued": 1, "payment_failed": 1})
    for n in range(1, 32):
        t.night(n)
    assert stage_of(tenant.id) == ("suspended", 31)
    assert t.mail() == Counter({"invoice_issued": 1, "payment_failed": 1, "reminder": 1, "suspended": 1})

    emulator.set_default_payment_method(db.session.get(Tenant, tenant.id).stripe_customer_id, "pm_card_visa")
    assert payments.retry_open_invoices(tenant.id, trigger="card_updated", now=at(ISSUE + timedelta(days=31), 9)) == 1
    flush_outbox()
    assert stage_of(tenant.id) == ("ok", 0)
    assert t.entitlements() == EXPECTED["ok"]
    assert t.mail() == Counter({"invoice_issued": 1, "payment_failed": 1, "reminder": 1, "suspended": 1,
                                "receipt": 1, "restored": 1})
