"""Stripe's documented decline and authentication test cards take the product down its real paths."""
from __future__ import annotations

import pytest

from app.models import AttemptStatus, InvoiceStatus
from app.services import invoicing
from tests.billing_support import attempts_of, charges_for, invoices_of
from tests.factories import tenant_with_card, utc
from tests.support.queues import run_jobs
from tests.webhook_support import outbox, reload

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)

# card -> (decline code the invoice records, hard decline, the email the tenant gets)
CARDS = {
    "pm_card_chargeCustomerFail": ("generic_decline", False, "payment_failed"),
    "pm_card_visa_chargeDeclinedInsufficientFunds": ("insufficient_funds", False, "payment_failed"),
    "pm_card_visa_chargeDeclinedLostCard": ("lost_card", True, "payment_failed"),
    "pm_card_visa_chargeDeclinedStolenCard": ("stolen_card", True, "payment_failed"),
    "pm_card_radarBlock": ("fraudulent", True, "payment_failed"),
    "pm_card_authenticationRequired": ("authentication_required", False, "action_required"),
}


@pytest.mark.parametrize("card", list(CARDS))
def test_each_documented_card_takes_its_path(app, plans, emulator, card):
    code, hard, email = CARDS[card]
    tenant = tenant_with_card(card, created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.status == InvoiceStatus.OPEN and invoice.amount_paid == 0
    assert (invoice.last_payment_error_code, invoice.hard_decline) == (code, hard)
    [attempt] = attempts_of(invoice.id)
    expected = AttemptStatus.ACTION_REQUIRED if email == "action_required" else AttemptStatus.FAILED
    assert attempt.status == expected
    assert attempt.decline_code == code
    if hard or email == "action_required":
        assert invoice.next_payment_attempt_at is None  # retrying the same card cannot help
    else:
        assert invoice.next_payment_attempt_at is not None  # a soft decline is retried on schedule
    [mail] = outbox(email)
    assert mail.tenant_id == tenant.id
    if email == "action_required":
        assert invoice.hosted_invoice_url in mail.body_text
    [charge] = charges_for(emulator, tenant.stripe_customer_id, include_failed=True)
    assert charge["status"] == "failed"


@pytest.mark.parametrize("card", ["pm_card_visa_chargeDeclinedLostCard", "pm_card_visa_chargeDeclinedStolenCard"])
def test_after_a_hard_decline_a_new_card_pays_the_invoice(app, plans, emulator, hook, card):
    tenant = tenant_with_card(card, created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.hard_decline and invoice.next_payment_attempt_at is None
    hook()
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")  # what the portal does
    emulator.flush_webhooks()
    run_jobs()
    emulator.flush_webhooks()
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.amount_paid == invoice.amount_due
    assert [a.trigger for a in attempts_of(invoice.id)] == ["scheduled", "card_updated"]


def test_the_hosted_page_pays_an_invoice_the_authentication_card_could_not(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_authenticationRequired", created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.last_payment_error_code == "authentication_required"
    hook()
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    emulator.flush_webhooks()
    run_jobs()
    assert reload(invoice).status == InvoiceStatus.PAID
