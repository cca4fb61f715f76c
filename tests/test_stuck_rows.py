"""The minutely stuck-rows pass (app/services/stuck_rows.py): work whose job was lost is re-driven once, not forever."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from app import stripe_gateway as gateway
from app.extensions import db
from app.models import AttemptStatus, PaymentAttempt
from app.services import stuck_rows
from tests.billing_support import attempts_of
from tests.factories import stripe_backed_invoice
from tests.support.queues import run_jobs


def test_a_declined_charge_whose_outcome_was_never_recorded_is_charged_once_more_not_every_minute(app, plans,
                                                                                                   emulator):
    # The chaos run's PostgreSQL restart: Stripe declined the charge, and the database went away before the
    # decline was recorded, so the attempt stayed pending.
    tenant, invoice = stripe_backed_invoice(date(2026, 11, 1))  # a card that is declined
    db.session.add(PaymentAttempt(invoice_id=invoice.id, tenant_id=tenant.id, trigger="scheduled",
                                  status=AttemptStatus.PENDING, idempotency_key="pay-attempt-interrupted",
                                  created_at=invoice.issued_at))
    db.session.commit()
    with pytest.raises(gateway.GatewayError):
        gateway.pay_invoice(invoice.stripe_invoice_id, "pay-attempt-interrupted")
    now = invoice.issued_at + timedelta(minutes=10)

    assert stuck_rows.redrive_stuck_rows(now=now).charges == 1  # the attempt died pending: charge it again
    run_jobs(("billing",))
    assert [(a.status, a.error_code) for a in attempts_of(invoice.id)] == [
        (AttemptStatus.ERROR, "interrupted"), (AttemptStatus.FAILED, "card_declined")]

    # Declined again and recorded: the next passes leave the invoice to its retry schedule (before the fix every
    # pass found the old attempt still pending and charged the card again, a minute apart, for ever).
    for minute in (1, 2):
        assert stuck_rows.redrive_stuck_rows(now=now + timedelta(minutes=minute)).charges == 0
    assert len(attempts_of(invoice.id)) == 2
