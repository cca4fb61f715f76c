"""A written-off invoice (Stripe: uncollectible) is not thanked for as a payment: its emails say what happened."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from app.extensions import db
from app.models import Invoice
from app.services import invoicing
from app.services.dunning import run_pass
from app.services.notifications import flush_outbox
from app.services.reconciliation import reconcile_open_invoices
from tests.factories import tenant_with_card

ISSUED = datetime(2026, 10, 1, 0, 30, tzinfo=timezone.utc)  # the tick that invoiced September


def night(days: int) -> datetime:
    return ISSUED + timedelta(days=days, hours=2)


def declined_invoice(tenant, period: str, at: datetime) -> Invoice:
    """Invoice a month through the real path (emulator); the card declines, so it stays open."""
    outcome = invoicing.invoice_and_charge(tenant.id, period, now=at)
    assert outcome.code == invoicing.Reason.PAYMENT_FAILED, outcome
    return db.session.get(Invoice, outcome.invoice_id)


def write_off(emulator, invoice: Invoice) -> None:
    """What a person does in the Stripe Dashboard: mark the invoice uncollectible."""
    emulator.stripe_client().v1.invoices.mark_uncollectible(invoice.stripe_invoice_id)


def mail_to(sink, address: str) -> list:
    return [m for m in sink.messages if address in m["To"]]


def body(msg) -> str:
    part = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
    return part.get_payload(decode=True).decode()


def test_a_written_off_invoice_restores_service_without_thanks_for_a_payment(app, plans, emulator, smtp_sink):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", name="Write Off Co",
                              created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    invoice = declined_invoice(tenant, "2026-09", ISSUED)
    run_pass(night(20).date(), now=night(20))
    assert db.session.get(type(tenant), tenant.id).dunning_stage == "reminder"

    write_off(emulator, invoice)
    reconcile_open_invoices(now=night(21))  # the nightly reconciler (a webhook takes the same path)
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status == "uncollectible"
    assert db.session.get(type(tenant), tenant.id).dunning_stage == "ok"

    flush_outbox()
    restored = mail_to(smtp_sink, tenant.billing_email)[-1]
    text = body(restored)
    assert restored["Subject"] == "Your ServicePro service is restored"
    assert "Thank you" not in restored["Subject"] and "Thank you for your payment" not in text
    assert f"invoice {invoice.number} has been written off as uncollectible" in text
    assert "nothing is overdue on your account any more" in text


def test_moving_down_the_ladder_after_a_write_off_says_so(app, plans, emulator, smtp_sink):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", name="Two Debts Co",
                              created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    older = declined_invoice(tenant, "2026-09", ISSUED)
    declined_invoice(tenant, "2026-10", datetime(2026, 11, 1, 0, 30, tzinfo=timezone.utc))
    run_pass(night(50).date(), now=night(50))  # 50 days after the older one: restricted
    assert db.session.get(type(tenant), tenant.id).dunning_stage == "restricted"

    write_off(emulator, older)
    reconcile_open_invoices(now=night(51))  # the newer invoice is 20 days overdue: back to reminder
    db.session.expire_all()
    assert db.session.get(type(tenant), tenant.id).dunning_stage == "reminder"

    flush_outbox()
    reminder = mail_to(smtp_sink, tenant.billing_email)[-1]
    text = body(reminder)
    assert reminder["Subject"].startswith("Payment Reminder")
    assert "An overdue invoice was written off: calls and outbound SMS work again" in text
    assert "Thank you for your payment" not in text
