"""Nightly reconciliation: a webhook that never arrived is healed from Stripe's current state."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.extensions import db
from app.models import Invoice, InvoiceStatus
from app.schedule import SCHEDULE
from app.services import dunning, invoicing
from app.services.reconciliation import reconcile_open_invoices
from tests.billing_support import invoices_of
from tests.factories import open_invoice_in_stripe, tenant_with_card, utc
from tests.support.queues import run_jobs
from tests.webhook_support import reload, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)
LATER = NOW + timedelta(days=35)  # the October invoice is 35 days overdue: suspended


def declined(card: str = "pm_card_chargeCustomerFail"):
    tenant = tenant_with_card(card, created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.status == InvoiceStatus.OPEN
    dunning.reevaluate_tenant(tenant.id, now=LATER)
    assert reload(tenant).dunning_stage == "suspended"
    return tenant, invoice


def test_a_lost_paid_webhook_is_healed_and_the_tenant_restored(app, plans, emulator, hook):
    tenant, invoice = declined()
    hook()
    emulator.set_webhook(None)  # deliveries are lost (our endpoint was down for longer than Stripe retries)
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    run_jobs()
    assert stored_events() == [] and reload(invoice).status == InvoiceStatus.OPEN

    assert reconcile_open_invoices(now=LATER + timedelta(hours=1)) == 1
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.amount_paid == invoice.amount_due
    assert invoice.paid_at is not None and invoice.last_payment_error is None
    tenant = reload(tenant)
    assert (tenant.overdue_days, tenant.dunning_stage) == (0, "ok")
    assert reconcile_open_invoices(now=LATER + timedelta(hours=2)) == 0  # nothing left to heal


def test_void_and_uncollectible_are_picked_up_and_unchanged_invoices_are_left_alone(app, plans, emulator):
    tenant = tenant_with_card("pm_card_visa", created_at=utc(2026, 7, 1))
    august = open_invoice_in_stripe(tenant, 2026, 8, now=utc(2026, 9, 1))
    september = open_invoice_in_stripe(tenant, 2026, 9, now=utc(2026, 10, 1))
    october = open_invoice_in_stripe(tenant, 2026, 10, now=NOW)
    client = emulator.stripe_client()
    client.v1.invoices.void_invoice(august.stripe_invoice_id)
    client.v1.invoices.mark_uncollectible(september.stripe_invoice_id)
    assert reconcile_open_invoices(now=LATER) == 2
    assert [reload(i).status for i in (august, september, october)] == ["void", "uncollectible", "open"]
    # An uncollectible invoice paid later in Stripe is still picked up.
    client.v1.invoices.pay(september.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    assert reconcile_open_invoices(now=LATER) == 1
    assert reload(september).status == "paid"
    assert reload(tenant).overdue_days == (LATER.date() - NOW.date()).days  # October is still open


def test_one_unreadable_invoice_does_not_stop_the_others_and_batches_cover_all(app, plans, emulator):
    paid_in_stripe = []
    for _ in range(5):
        tenant, invoice = declined()
        emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id,
                                                 params={"payment_method": "pm_card_visa"})
        paid_in_stripe.append(invoice)
    broken = paid_in_stripe[2]
    db.session.execute(update(Invoice).where(Invoice.id == broken.id).values(stripe_invoice_id="in_unknown"))
    db.session.commit()
    assert reconcile_open_invoices(now=LATER, batch_size=2) == 4
    assert [reload(i).status for i in paid_in_stripe] == ["paid", "paid", "open", "paid", "paid"]


def test_reconciliation_is_scheduled_nightly():
    [entry] = [p for p in SCHEDULE if p.id == "stripe-reconcile"]
    assert entry.func == "app.jobs.reconcile_open_invoices" and entry.cron == "0 3 * * *"


def test_cli_reconcile_reports_what_changed(app, plans, emulator):
    tenant, invoice = declined()
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    result = app.test_cli_runner().invoke(args=["billing", "reconcile"])
    assert result.exit_code == 0 and "1 changed" in result.output
    assert reload(invoice).status == InvoiceStatus.PAID
    assert "0 changed" in app.test_cli_runner().invoke(args=["billing", "reconcile"]).output
