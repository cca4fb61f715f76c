"""Invoice and invoice item lifecycle."""

import pytest
import requests
import stripe

from stripe_emulator.store import NO_PAYMENT_METHOD_MESSAGE


def _types(emu):
    return [e["type"] for e in emu.events()]


def test_full_lifecycle_success(client, emu, customer_with_card):
    cus, pm = customer_with_card("pm_card_visa")
    inv = client.v1.invoices.create(params={
        "customer": cus.id, "currency": "usd", "collection_method": "charge_automatically",
        "auto_advance": False, "pending_invoice_items_behavior": "exclude",
        "description": "October usage", "metadata": {"tenant_id": "4"},
    })
    assert inv.id.startswith("in_")
    assert inv.status == "draft" and inv.number is None and inv.hosted_invoice_url is None
    assert inv.amount_due == 0 and inv.lines.data == []

    item = client.v1.invoice_items.create(params={
        "customer": cus.id, "invoice": inv.id, "amount": 1500, "currency": "usd",
        "description": "Seats", "period": {"start": 1_700_000_000, "end": 1_700_086_400},
        "metadata": {"line": "1"},
    })
    assert item.id.startswith("ii_") and item.object == "invoiceitem"
    assert item.invoice == inv.id and item.amount == 1500
    client.v1.invoice_items.create(params={
        "customer": cus.id, "invoice": inv.id, "amount": 500, "currency": "usd", "description": "Storage"})

    draft = client.v1.invoices.retrieve(inv.id)
    assert draft.amount_due == 2000 and draft.subtotal == 2000 and draft.total == 2000
    assert len(draft.lines.data) == 2
    line = [ln for ln in draft.lines.data if ln.description == "Seats"][0]
    assert line.object == "line_item" and line.amount == 1500
    assert line.period.start == 1_700_000_000 and line.period.end == 1_700_086_400
    assert line.parent.invoice_item_details.invoice_item == item.id
    assert [i.id for i in client.v1.invoice_items.list(params={"invoice": inv.id}).data][-1] == item.id

    fin = client.v1.invoices.finalize_invoice(inv.id)
    assert fin.status == "open"
    assert fin.number == "EMU-0001"
    assert fin.status_transitions.finalized_at is not None
    assert fin.amount_due == 2000 and fin.amount_remaining == 2000 and fin.amount_paid == 0
    assert fin.hosted_invoice_url.startswith(emu.url + "/i/")
    page = requests.get(fin.hosted_invoice_url)
    assert page.status_code == 200 and "EMU-0001" in page.text and "USD 20.00" in page.text
    pdf = requests.get(fin.invoice_pdf)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    paid = client.v1.invoices.pay(inv.id, params={"off_session": True})
    assert paid.status == "paid"
    assert paid.amount_paid == 2000 and paid.amount_remaining == 0
    assert paid.attempt_count == 1 and paid.attempted is True
    assert paid.status_transitions.paid_at is not None
    charges = emu.charges()
    assert len(charges) == 1
    assert charges[0]["invoice"] == inv.id and charges[0]["amount"] == 2000
    assert charges[0]["customer"] == cus.id and charges[0]["currency"] == "usd"
    assert charges[0]["id"].startswith("ch_")

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.pay(inv.id)
    assert exc.value.http_status == 400
    assert exc.value.user_message == "Invoice is already paid"

    types = _types(emu)
    for t in ("invoice.created", "invoiceitem.created", "invoice.finalized", "invoice.paid",
              "invoice.payment_succeeded"):
        assert t in types
    assert types.index("invoice.finalized") < types.index("invoice.paid") < types.index(
        "invoice.payment_succeeded")


@pytest.mark.parametrize("token,code,decline_code,extra_event", [
    ("pm_card_chargeCustomerFail", "card_declined", "generic_decline", None),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds", None),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required",
     "invoice.payment_action_required"),
])
def test_declined_payment_leaves_invoice_open(client, emu, customer_with_card, open_invoice,
                                              token, code, decline_code, extra_event):
    cus, _ = customer_with_card(token)
    inv = open_invoice(cus.id, 4200)
    with pytest.raises(stripe.CardError) as exc:
        client.v1.invoices.pay(inv.id)
    err = exc.value
    assert err.http_status == 402
    assert err.code == code
    body = err.json_body["error"]
    assert body["type"] == "card_error" and body["decline_code"] == decline_code
    assert body["charge"].startswith("ch_")

    after = client.v1.invoices.retrieve(inv.id)
    assert after.status == "open"
    assert after.attempt_count == 1 and after.attempted is True
    assert after.amount_paid == 0 and after.amount_remaining == 4200
    assert after.last_finalization_error is None

    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(inv.id)
    assert client.v1.invoices.retrieve(inv.id).attempt_count == 2
    assert emu.charges() == []
    assert len(emu.charges(include_failed=True)) == 2
    types = _types(emu)
    assert types.count("invoice.payment_failed") == 2
    if extra_event:
        assert extra_event in types
    assert "invoice.paid" not in types


def test_retry_after_updating_card_succeeds(client, emu, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_chargeCustomerFail")
    inv = open_invoice(cus.id, 999)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(inv.id)
    emu.set_default_payment_method(cus.id, "pm_card_visa")
    paid = client.v1.invoices.pay(inv.id)
    assert paid.status == "paid" and paid.attempt_count == 2
    assert [c["invoice"] for c in emu.charges()] == [inv.id]


def test_pay_without_payment_method(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "nopm@example.com"})
    inv = open_invoice(cus.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.pay(inv.id)
    assert exc.value.http_status == 400
    assert exc.value.user_message == NO_PAYMENT_METHOD_MESSAGE
    assert exc.value.user_message.startswith(
        "This customer has no attached payment source or default payment method.")
    assert client.v1.invoices.retrieve(inv.id).status == "open"


def test_pay_with_explicit_payment_method_and_invoice_default(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "x@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    inv = open_invoice(cus.id, 700)
    assert client.v1.invoices.pay(inv.id, params={"payment_method": pm.id}).status == "paid"

    inv2 = client.v1.invoices.create(params={"customer": cus.id, "default_payment_method": pm.id})
    assert inv2.default_payment_method == pm.id
    client.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv2.id, "amount": 300})
    # paying a draft finalizes it first
    paid = client.v1.invoices.pay(inv2.id)
    assert paid.status == "paid" and paid.number is not None
    assert [c["amount"] for c in emu.charges()] == [700, 300]


def test_paid_out_of_band(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "oob@example.com"})
    inv = open_invoice(cus.id, 100)
    paid = client.v1.invoices.pay(inv.id, params={"paid_out_of_band": True})
    assert paid.status == "paid" and paid.amount_remaining == 0
    assert emu.charges() == []


def test_void_and_mark_uncollectible(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "v@example.com"})
    draft = client.v1.invoices.create(params={"customer": cus.id})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(draft.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.mark_uncollectible(draft.id)

    inv = open_invoice(cus.id)
    void = client.v1.invoices.void_invoice(inv.id)
    assert void.status == "void" and void.status_transitions.voided_at is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(inv.id)

    inv2 = open_invoice(cus.id)
    unc = client.v1.invoices.mark_uncollectible(inv2.id)
    assert unc.status == "uncollectible"
    assert unc.status_transitions.marked_uncollectible_at is not None
    types = _types(emu)
    assert "invoice.voided" in types and "invoice.marked_uncollectible" in types


def test_zero_amount_invoice_finalizes_to_paid(client, emu):
    cus = client.v1.customers.create(params={"email": "zero@example.com"})
    inv = client.v1.invoices.create(params={"customer": cus.id})
    fin = client.v1.invoices.finalize_invoice(inv.id)
    assert fin.status == "paid" and fin.amount_due == 0 and fin.amount_paid == 0
    assert fin.status_transitions.paid_at is not None
    assert emu.charges() == []
    assert "invoice.paid" in _types(emu)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.finalize_invoice(inv.id)
    assert "already finalized" in exc.value.user_message


def test_pending_invoice_items_behavior(client):
    cus = client.v1.customers.create(params={"email": "p@example.com"})
    pending = client.v1.invoice_items.create(params={"customer": cus.id, "amount": 250, "currency": "usd"})
    assert pending.invoice is None
    excluded = client.v1.invoices.create(params={"customer": cus.id})
    assert excluded.lines.data == [] and excluded.amount_due == 0
    included = client.v1.invoices.create(params={"customer": cus.id, "pending_invoice_items_behavior": "include"})
    assert included.amount_due == 250
    assert client.v1.invoice_items.retrieve(pending.id).invoice == included.id


def test_invoice_items_only_on_draft_invoices(client, open_invoice):
    cus = client.v1.customers.create(params={"email": "d@example.com"})
    inv = open_invoice(cus.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 5})
    assert exc.value.http_status == 400 and exc.value.param == "invoice"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create(params={"invoice": inv.id, "amount": 5})
    assert exc.value.user_message == "Missing required param: customer."
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create(params={"customer": cus.id, "amount": 5, "period": {"start": 5}})
    assert exc.value.user_message == "Missing required param: period[end]."


def test_update_draft_and_finalized_invoice(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "u@example.com"})
    draft = client.v1.invoices.create(params={"customer": cus.id, "metadata": {"a": "1"}})
    upd = client.v1.invoices.update(draft.id, params={
        "metadata": {"b": "2"}, "description": "new", "auto_advance": True})
    assert upd.metadata.to_dict() == {"a": "1", "b": "2"}
    assert upd.description == "new" and upd.auto_advance is True
    evt = emu.events(type="invoice.updated")[-1]
    assert evt["data"]["previous_attributes"]["description"] is None

    inv = open_invoice(cus.id)
    paid_or_open = client.v1.invoices.update(inv.id, params={"metadata": {"k": "v"}})
    assert paid_or_open.metadata["k"] == "v"
    client.v1.invoices.void_invoice(inv.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.update(inv.id, params={"description": "too late"})


def test_send_invoice_due_date(client):
    cus = client.v1.customers.create(params={"email": "s@example.com"})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create(params={"customer": cus.id, "collection_method": "send_invoice"})
    inv = client.v1.invoices.create(params={
        "customer": cus.id, "collection_method": "send_invoice", "days_until_due": 14})
    client.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 10})
    fin = client.v1.invoices.finalize_invoice(inv.id)
    assert fin.due_date == fin.status_transitions.finalized_at + 14 * 86400


def test_list_invoices_filters_and_pagination(client, open_invoice):
    a = client.v1.customers.create(params={"email": "a@example.com"})
    b = client.v1.customers.create(params={"email": "b@example.com"})
    ids = [open_invoice(a.id, 100 + i).id for i in range(4)]
    draft = client.v1.invoices.create(params={"customer": a.id})
    other = open_invoice(b.id)

    page = client.v1.invoices.list(params={"customer": a.id, "status": "open", "limit": 3})
    assert [i.id for i in page.data] == ids[::-1][:3] and page.has_more is True
    page2 = client.v1.invoices.list(params={"customer": a.id, "status": "open", "limit": 3,
                                             "starting_after": page.data[-1].id})
    assert [i.id for i in page2.data] == [ids[0]] and page2.has_more is False
    drafts = client.v1.invoices.list(params={"status": "draft"})
    assert [i.id for i in drafts.data] == [draft.id]
    all_b = client.v1.invoices.list(params={"customer": b.id})
    assert [i.id for i in all_b.data] == [other.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.list(params={"status": "bogus"})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.list(params={"limit": 101})
    assert exc.value.param == "limit"


def test_invoice_create_validation(client):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.create(params={})
    assert exc.value.user_message == "Missing required param: customer."
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.create(params={"customer": "cus_nope"})
    assert exc.value.http_status == 404 and exc.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.create(params={"customer": "cus_x", "tenant": "4"})  # type: ignore[typeddict-unknown-key]
    assert exc.value.user_message == "Received unknown parameter: tenant"


def test_expand_customer_and_lines_listing(client, open_invoice, customer_with_card):
    cus, pm = customer_with_card("pm_card_visa")
    inv = open_invoice(cus.id, 1234)
    got = client.v1.invoices.retrieve(inv.id, params={"expand": ["customer", "customer.invoice_settings.default_payment_method"]})
    assert got.customer.id == cus.id
    assert got.customer.invoice_settings.default_payment_method.id == pm.id
    lst = client.v1.invoices.list(params={"expand": ["data.customer"]})
    assert lst.data[0].customer.email == "payer@example.com"
    lines = client.v1.invoices.line_items.list(inv.id)
    assert [ln.amount for ln in lines.data] == [1234]


def test_delete_draft_invoice_and_items(client, emu):
    cus = client.v1.customers.create(params={"email": "del@example.com"})
    inv = client.v1.invoices.create(params={"customer": cus.id})
    item = client.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 5})
    upd = client.v1.invoice_items.update(item.id, params={"amount": 7, "description": "changed"})
    assert upd.amount == 7 and upd.description == "changed"
    assert client.v1.invoices.retrieve(inv.id).amount_due == 7
    assert client.v1.invoice_items.delete(item.id).deleted is True
    assert client.v1.invoices.delete(inv.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.retrieve(inv.id)


def test_authentication_required_on_session_requires_action(client, emu, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_authenticationRequired")
    inv = open_invoice(cus.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.pay(inv.id, params={"off_session": False})
    assert exc.value.http_status == 400
    assert exc.value.code == "invoice_payment_intent_requires_action"
    after = client.v1.invoices.retrieve(inv.id)
    assert after.status == "open" and after.attempt_count == 1
    assert "invoice.payment_action_required" in _types(emu)
