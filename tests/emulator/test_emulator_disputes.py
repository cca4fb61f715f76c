"""Invoice payments, disputes and refunds: how Stripe links a charge to its invoice in this API version."""

import pytest
import stripe


def dispute_invoice(emu, invoice_id, **params):
    """What a cardholder's bank does (control API): dispute the charge that paid the invoice."""
    return emu._call("POST", f"/_emulator/invoices/{invoice_id}/dispute", params)


@pytest.fixture
def paid_invoice(client, customer_with_card, open_invoice):
    def make(amount=2500, token="pm_card_visa"):
        cus, _ = customer_with_card(token)
        inv = open_invoice(cus.id, amount)
        client.v1.invoices.pay(inv.id, params={"off_session": True})
        return cus, inv

    return make


def test_a_paid_invoice_has_one_paid_invoice_payment_naming_its_payment_intent(emu, client, paid_invoice):
    cus, inv = paid_invoice(2500)
    [charge] = [c for c in client.v1.charges.list(params={"customer": cus.id}).data]
    assert not hasattr(charge, "invoice") and "source" not in charge  # this API version links through payments
    assert charge.payment_intent.startswith("pi_")
    found = client.v1.invoice_payments.list(params={
        "payment": {"type": "payment_intent", "payment_intent": charge.payment_intent}})
    [payment] = found.data
    assert (payment.invoice, payment.status, payment.amount_paid, payment.is_default) == (inv.id, "paid", 2500, True)
    assert payment.payment.type == "payment_intent" and payment.status_transitions.paid_at
    assert client.v1.invoice_payments.retrieve(payment.id).id == payment.id
    assert [p.id for p in client.v1.invoice_payments.list(params={"invoice": inv.id}).data] == [payment.id]


def test_invoice_payments_appear_on_the_invoice_only_when_expanded(emu, client, paid_invoice):
    _, inv = paid_invoice()
    assert "payments" not in client.v1.invoices.retrieve(inv.id)
    expanded = client.v1.invoices.retrieve(inv.id, params={"expand": ["payments"]})
    [payment] = expanded.payments.data
    assert payment.invoice == inv.id and payment.status == "paid"


def test_declined_attempts_share_one_open_payment_intent_until_paid(emu, client, customer_with_card,
                                                                       open_invoice):
    cus, _ = customer_with_card("pm_card_chargeCustomerFail")
    inv = open_invoice(cus.id, 900)
    for _ in range(2):
        with pytest.raises(stripe.CardError):
            client.v1.invoices.pay(inv.id, params={"off_session": True})
    [payment] = client.v1.invoice_payments.list(params={"invoice": inv.id}).data
    assert (payment.status, payment.amount_paid, payment.amount_requested) == ("open", None, 900)
    client.v1.invoices.pay(inv.id, params={"payment_method": "pm_card_visa"})
    charges = emu.charges(include_failed=True)
    assert len(charges) == 3
    intents = {client.v1.charges.retrieve(c["id"]).payment_intent for c in charges}
    assert intents == {payment.payment.payment_intent}
    assert client.v1.invoice_payments.retrieve(payment.id).status == "paid"


def test_voiding_cancels_the_open_invoice_payment(emu, client, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_chargeCustomerFail")
    inv = open_invoice(cus.id, 900)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(inv.id, params={"off_session": True})
    client.v1.invoices.void_invoice(inv.id)
    [payment] = client.v1.invoice_payments.list(params={"invoice": inv.id}).data
    assert payment.status == "canceled" and payment.status_transitions.canceled_at


def test_invoice_payment_filters_are_checked_like_stripe(emu, raw):
    resp = raw("GET", "/v1/invoice_payments", {"payment[payment_intent]": "pi_1"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "payment[type]"
    assert raw("GET", "/v1/invoice_payments", {"status": "nope"}).status_code == 400
    assert raw("GET", "/v1/invoice_payments/inpay_missing").status_code == 404


def test_a_dispute_names_the_charge_and_payment_intent_not_the_invoice(emu, client, paid_invoice):
    cus, inv = paid_invoice(2500)
    dispute = dispute_invoice(emu, inv.id, reason="product_not_received")
    [charge] = client.v1.charges.list(params={"customer": cus.id}).data
    assert (dispute["charge"], dispute["payment_intent"]) == (charge.id, charge.payment_intent)
    assert "invoice" not in dispute and dispute["status"] == "needs_response"
    assert (dispute["amount"], dispute["reason"]) == (2500, "product_not_received")
    [withdrawal] = dispute["balance_transactions"]
    assert (withdrawal["amount"], withdrawal["fee"], withdrawal["net"]) == (-2500, 1500, -4000)
    assert client.v1.charges.retrieve(charge.id).disputed is True
    events = [e for e in emu.events() if e["type"].startswith("charge.dispute.")]
    assert [e["type"] for e in events] == ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    assert all(e["data"]["object"]["id"] == dispute["id"] for e in events)
    assert client.v1.disputes.retrieve(dispute["id"]).status == "needs_response"
    assert [d.id for d in client.v1.disputes.list(params={"payment_intent": charge.payment_intent}).data] == [
        dispute["id"]]


def test_an_unpaid_or_already_disputed_invoice_cannot_be_disputed(emu, client, customer_with_card,
                                                                   open_invoice, paid_invoice):
    cus, _ = customer_with_card()
    unpaid = open_invoice(cus.id)
    with pytest.raises(Exception, match="nothing to dispute"):
        dispute_invoice(emu, unpaid.id)
    _, paid = paid_invoice()
    dispute_invoice(emu, paid.id)
    with pytest.raises(Exception, match="already disputed"):
        dispute_invoice(emu, paid.id)
    with pytest.raises(Exception, match="No such invoice"):
        dispute_invoice(emu, "in_missing")


def test_winning_evidence_wins_and_reinstates_the_funds(emu, client, paid_invoice):
    _, inv = paid_invoice(2500)
    dispute = dispute_invoice(emu, inv.id)
    won = client.v1.disputes.update(dispute["id"], params={"evidence": {"uncategorized_text": "winning_evidence"}})
    assert won.status == "won" and won.evidence_details.submission_count == 1
    assert [t.amount for t in won.balance_transactions] == [-2500, 2500]
    types = [e["type"] for e in emu.events() if e["type"].startswith("charge.dispute.")]
    assert types == ["charge.dispute.created", "charge.dispute.funds_withdrawn", "charge.dispute.updated",
                     "charge.dispute.closed", "charge.dispute.funds_reinstated"]
    with pytest.raises(stripe.InvalidRequestError, match="already closed"):
        client.v1.disputes.close(dispute["id"])


@pytest.mark.parametrize("how", ["losing evidence", "accepted"])
def test_losing_evidence_or_accepting_loses_it(emu, client, paid_invoice, how):
    _, inv = paid_invoice(2500)
    dispute = dispute_invoice(emu, inv.id)
    if how == "accepted":
        lost = client.v1.disputes.close(dispute["id"])
    else:
        lost = client.v1.disputes.update(dispute["id"], params={
            "evidence": {"uncategorized_text": "losing_evidence"}})
    assert lost.status == "lost" and len(lost.balance_transactions) == 1
    types = [e["type"] for e in emu.events() if e["type"].startswith("charge.dispute.")]
    assert types[-1] == "charge.dispute.closed" and "charge.dispute.funds_reinstated" not in types


def test_staged_evidence_keeps_the_dispute_open(emu, client, paid_invoice):
    _, inv = paid_invoice()
    dispute = dispute_invoice(emu, inv.id)
    staged = client.v1.disputes.update(dispute["id"], params={
        "evidence": {"product_description": "Telephony minutes"}, "submit": False})
    assert staged.status == "needs_response" and staged.evidence_details.has_evidence is True
    assert staged.evidence.product_description == "Telephony minutes"


def test_a_refund_updates_the_charge_and_sends_charge_refunded(emu, client, paid_invoice):
    cus, _ = paid_invoice(2500)
    [charge] = client.v1.charges.list(params={"customer": cus.id}).data
    refund = client.v1.refunds.create(params={"payment_intent": charge.payment_intent, "amount": 1000})
    assert (refund.charge, refund.amount, refund.status) == (charge.id, 1000, "succeeded")
    charge = client.v1.charges.retrieve(charge.id)
    assert (charge.amount_refunded, charge.refunded) == (1000, False)
    client.v1.refunds.create(params={"charge": charge.id})
    assert client.v1.charges.retrieve(charge.id).refunded is True
    refunded = emu.events("charge.refunded")
    assert [e["data"]["object"]["amount_refunded"] for e in refunded] == [1000, 2500]
    with pytest.raises(stripe.InvalidRequestError, match="greater than"):
        client.v1.refunds.create(params={"charge": charge.id, "amount": 1})
    assert client.v1.refunds.retrieve(refund.id).amount == 1000


def test_a_disputed_charge_cannot_be_refunded(emu, client, paid_invoice):
    cus, inv = paid_invoice()
    dispute_invoice(emu, inv.id)
    [charge] = client.v1.charges.list(params={"customer": cus.id}).data
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.refunds.create(params={"charge": charge.id})
    assert exc.value.code == "charge_disputed"
