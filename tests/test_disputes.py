"""Disputes reach exactly the invoice their charge paid (through Stripe's invoice payments) and follow their outcome."""
from __future__ import annotations

import pytest

from app.models import InvoiceStatus
from app.services import invoicing
from tests.billing_support import charges_for, invoices_of
from tests.factories import make_root, tenant_with_card, utc
from tests.support.queues import run_jobs
from tests.webhook_support import make_event, post_event, reload, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)


def dispute(emulator, stripe_invoice_id: str, **params) -> dict:
    """The cardholder's bank disputes the charge that paid this Stripe invoice (emulator control API)."""
    return emulator._call("POST", f"/_emulator/invoices/{stripe_invoice_id}/dispute", params)


def deliver(emulator) -> None:
    emulator.flush_webhooks()
    run_jobs()


@pytest.fixture
def two_equal_payments(app, plans, emulator):
    """Two tenants on the same plan, each charged the same amount in the same minute."""
    first = tenant_with_card("pm_card_visa", created_at=EARLY)
    second = tenant_with_card("pm_card_visa", created_at=EARLY)
    for tenant in (first, second):
        invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [a], [b] = invoices_of(first.id), invoices_of(second.id)
    assert a.status == b.status == InvoiceStatus.PAID and a.amount_paid == b.amount_paid > 0
    [ca], [cb] = charges_for(emulator, first.stripe_customer_id), charges_for(emulator, second.stripe_customer_id)
    assert abs(ca["created"] - cb["created"]) < 60
    return (first, a), (second, b)


def test_a_dispute_on_one_of_two_equal_payments_flags_exactly_that_invoice(app, emulator, hook, two_equal_payments):
    (first, a), (second, b) = two_equal_payments
    hook()
    opened = dispute(emulator, b.stripe_invoice_id)
    assert "invoice" not in opened and opened["payment_intent"]  # the event names the charge, not the invoice
    deliver(emulator)
    assert (reload(a).disputed, reload(b).disputed) == (False, True)
    assert (reload(b).dispute_status, reload(b).stripe_dispute_id) == ("needs_response", opened["id"])
    assert (reload(first).disputed, reload(second).disputed) == (False, True)
    rows = [e for e in stored_events() if e.type.startswith("charge.dispute.")]
    assert {e.type for e in rows} == {"charge.dispute.created", "charge.dispute.funds_withdrawn"}
    assert all((e.status, e.tenant_id, e.last_error) == ("processed", second.id, None) for e in rows)


@pytest.mark.parametrize("which", [0, 1])
def test_two_equal_payments_of_one_tenant_are_told_apart(app, plans, emulator, hook, which):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    for period in ("2026-09", "2026-10"):  # the same fee, charged in the same minute
        invoicing.invoice_and_charge(tenant.id, period, now=NOW)
    invoices = invoices_of(tenant.id)
    assert invoices[0].amount_paid == invoices[1].amount_paid
    hook()
    dispute(emulator, invoices[which].stripe_invoice_id)
    deliver(emulator)
    assert [reload(inv).disputed for inv in invoices] == [i == which for i in range(2)]


def test_a_won_dispute_clears_the_flag_and_a_lost_one_keeps_it(app, emulator, hook, two_equal_payments):
    (first, a), (second, b) = two_equal_payments
    hook()
    won, lost = dispute(emulator, a.stripe_invoice_id), dispute(emulator, b.stripe_invoice_id)
    deliver(emulator)
    assert reload(a).disputed and reload(b).disputed
    client = emulator.stripe_client()
    client.v1.disputes.update(won["id"], params={"evidence": {"uncategorized_text": "winning_evidence"}})
    client.v1.disputes.close(lost["id"])  # accepted: lost
    deliver(emulator)
    assert (reload(a).disputed, reload(a).dispute_status) == (False, "won")
    assert (reload(b).disputed, reload(b).dispute_status) == (True, "lost")
    assert (reload(first).disputed, reload(second).disputed) == (False, True)
    assert reload(a).status == reload(b).status == InvoiceStatus.PAID  # Stripe keeps both invoices paid
    closed = [e for e in stored_events() if e.type in ("charge.dispute.closed", "charge.dispute.funds_reinstated")]
    assert len(closed) == 3 and all(e.status == "processed" for e in closed)


def test_a_late_created_event_after_the_win_does_not_flag_again(app, emulator, live_server, two_equal_payments):
    (first, a), _ = two_equal_payments
    opened = dispute(emulator, a.stripe_invoice_id)
    emulator.stripe_client().v1.disputes.update(opened["id"], params={
        "evidence": {"uncategorized_text": "winning_evidence"}})
    [created] = emulator.events("charge.dispute.created")  # still says needs_response
    post_event(f"{live_server}/webhooks/stripe", created, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    assert (reload(a).disputed, reload(a).dispute_status, reload(first).disputed) == (False, "won", False)


def test_a_dispute_stripe_does_not_know_is_ignored_not_retried(app, plans, emulator, live_server):
    event = make_event("charge.dispute.created", {"id": "dp_from_elsewhere", "object": "dispute", "charge": "ch_x",
                                                  "amount": 500, "status": "needs_response"})
    post_event(f"{live_server}/webhooks/stripe", event, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    [row] = stored_events()
    assert (row.status, row.attempts) == ("ignored", 1) and "dp_from_elsewhere" in row.last_error


def test_the_root_admin_sees_the_dispute_state_on_the_tenant_page(app, client, auth, emulator, hook,
                                                                   two_equal_payments):
    (first, a), (second, b) = two_equal_payments
    hook()
    dispute(emulator, b.stripe_invoice_id)
    deliver(emulator)
    make_root()
    auth.login("root@example.com")
    page = client.get(f"/admin/system-billing/tenants/{second.id}").get_data(as_text=True)
    row = page.split(f'id="root-invoice-{b.id}"', 1)[1].split("</tr>", 1)[0]
    assert "dispute needs response" in row
    assert "<dt>Disputed</dt><dd>yes</dd>" in page
    other = client.get(f"/admin/system-billing/tenants/{first.id}").get_data(as_text=True)
    assert "dispute " not in other.split('id="tenant-invoices"', 1)[1]
