"""Webhook handlers decide from Stripe's current state, never from the event's type or payload alone."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, InvoiceStatus, utcnow
from app.services import customers, invoicing
from app.services.webhooks import processing
from tests.billing_support import attempts_of, charges_for, invoices_of
from tests.factories import open_invoice_in_stripe, tenant_with_card, utc
from tests.support.queues import run_jobs
from tests.webhook_support import http, make_event, one_event, outbox, post_event, reload, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)


def send(app, live_server, event: dict) -> None:
    assert post_event(f"{live_server}/webhooks/stripe", event, app.config["STRIPE_WEBHOOK_SECRET"]).status_code == 200
    run_jobs()


def stripe_invoice(emulator, stripe_invoice_id: str) -> dict:
    """The invoice as Stripe's JSON (what an event carries)."""
    resp = http().get(f"{emulator.url}/v1/invoices/{stripe_invoice_id}",
                      headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()


# -- invoice.payment_action_required -----------------------------------------------------------------------

def test_a_late_action_required_does_not_turn_a_plain_decline_into_authentication(app, plans, emulator,
                                                                                   live_server):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.status == InvoiceStatus.OPEN and invoice.last_payment_error_code == "generic_decline"
    retry_at, emails = invoice.next_payment_attempt_at, len(outbox())
    assert retry_at is not None
    late = make_event("invoice.payment_action_required", stripe_invoice(emulator, invoice.stripe_invoice_id))
    send(app, live_server, late)
    invoice = reload(invoice)
    assert invoice.last_payment_error_code == "generic_decline"  # not "authentication_required"
    assert invoice.next_payment_attempt_at == retry_at  # the scheduled retry stands
    assert outbox("action_required") == [] and len(outbox()) == emails
    row = one_event(late["id"])
    assert row.status == "processed" and "not waiting for authentication" in row.last_error


def test_a_genuine_action_required_still_asks_for_authentication(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_authenticationRequired", created_at=EARLY)
    invoice = open_invoice_in_stripe(tenant, 2026, 10, now=NOW)
    try:
        emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"off_session": True})
    except Exception:  # noqa: BLE001 - Stripe's own attempt fails: the bank asks for authentication
        pass
    [event] = emulator.events("invoice.payment_action_required")
    send(app, live_server, event)
    invoice = reload(invoice)
    assert invoice.last_payment_error_code == "authentication_required" and invoice.next_payment_attempt_at is None
    assert len(outbox("action_required")) == 1


# -- payment_method.attached -------------------------------------------------------------------------------

def test_a_replayed_old_card_attachment_does_not_charge_again(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    [attached] = [e for e in emulator.events("payment_method.attached")
                  if e["data"]["object"]["customer"] == tenant.stripe_customer_id]
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=utcnow())  # that card, tried after it was attached
    [invoice] = invoices_of(tenant.id)
    assert invoice.status == InvoiceStatus.OPEN and len(attempts_of(invoice.id)) == 1
    charges = len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True))
    send(app, live_server, attached)  # replayed (or delivered very late): it is still the default card
    assert len(attempts_of(invoice.id)) == 1
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == charges
    row = one_event(attached["id"])
    assert row.status == "processed" and "already charged since this card change" in row.last_error


# -- another mode, another account -------------------------------------------------------------------------

def test_events_of_another_mode_or_a_connected_account_are_stored_and_ignored(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    paid = stripe_invoice(emulator, invoice.stripe_invoice_id)
    live = make_event("invoice.paid", paid)
    live["livemode"] = True
    connected = make_event("invoice.paid", paid)
    connected["account"] = "acct_1Connected"
    for event in (live, connected):
        send(app, live_server, event)
    assert reload(invoice).status == InvoiceStatus.OPEN  # neither was applied
    assert (one_event(live["id"]).status, one_event(live["id"]).attempts) == ("ignored", 1)
    assert "live-mode event" in one_event(live["id"]).last_error
    assert one_event(connected["id"]).status == "ignored"
    assert "acct_1Connected" in one_event(connected["id"]).last_error
    assert processing.retry_failed(now=utcnow()) == 0  # ignored, not retried


# -- customer.deleted --------------------------------------------------------------------------------------

def test_a_deleted_customer_is_forgotten_and_sync_creates_a_new_one(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    old = tenant.stripe_customer_id
    hook()
    emulator.stripe_client().v1.customers.delete(old)
    emulator.flush_webhooks()
    run_jobs()
    assert reload(tenant).stripe_customer_id is None
    [row] = [e for e in stored_events() if e.type == "customer.deleted"]
    assert (row.status, row.tenant_id) == ("processed", tenant.id)
    [audit] = db.session.scalars(select(AuditLog).where(AuditLog.action == "stripe.customer_deleted")).all()
    assert audit.tenant_id == tenant.id and audit.details["customer"] == old
    result = customers.sync_customers()
    new = reload(tenant).stripe_customer_id
    assert result.created == 1 and new and new != old
    assert not getattr(emulator.stripe_client().v1.customers.retrieve(new), "deleted", False)


def test_a_forged_customer_deleted_changes_nothing(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    event = make_event("customer.deleted", {"id": tenant.stripe_customer_id, "object": "customer"})
    send(app, live_server, event)
    assert reload(tenant).stripe_customer_id is not None
    assert "still has customer" in one_event(event["id"]).last_error


# -- charge.refunded ---------------------------------------------------------------------------------------

def test_a_refund_in_stripe_is_recorded_on_the_invoice_it_paid(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    [charge] = charges_for(emulator, tenant.stripe_customer_id)
    hook()
    emulator.stripe_client().v1.refunds.create(params={"charge": charge["id"], "amount": 1000})
    emulator.flush_webhooks()
    run_jobs()
    invoice = reload(invoice)
    assert invoice.amount_refunded == 1000 and invoice.status == InvoiceStatus.PAID
    [row] = [e for e in stored_events() if e.type == "charge.refunded"]
    assert (row.status, row.tenant_id) == ("processed", tenant.id)


# -- Stripe's own invoice number and PDF -------------------------------------------------------------------

def test_the_tenant_sees_stripes_invoice_number_and_pdf(app, plans, emulator, hook, client, auth):
    from tests.factories import admin_email

    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    hook()
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    emulator.flush_webhooks()
    run_jobs()
    [invoice] = invoices_of(tenant.id)
    remote = stripe_invoice(emulator, invoice.stripe_invoice_id)
    assert (invoice.stripe_number, invoice.invoice_pdf_url) == (remote["number"], remote["invoice_pdf"])
    auth.login(admin_email(tenant))
    row = client.get("/admin/billing").get_data(as_text=True).split(f'id="invoice-row-{invoice.id}"', 1)[1]
    row = row.split("</tr>", 1)[0]
    assert f"Stripe no. {remote['number']}" in row and f'href="{remote["invoice_pdf"]}"' in row
    assert http().get(remote["invoice_pdf"], timeout=30).headers["Content-Type"] == "application/pdf"
