"""Credit notes and the customer balance, with Stripe's semantics and in the shapes of Stripe's published schema.

- on an open invoice a credit note lowers amount_due/amount_remaining (pre_payment); to 0 the invoice is paid;
- on a paid invoice its amount is split into refund_amount (a refund of the paying charge), credit_amount (the
  customer's balance: negative = credit) and out_of_band_amount, which must add up (post_payment);
- a credit balance pays the next invoice first, at its finalization (starting_balance/ending_balance); voiding
  that invoice gives it back; nothing is ever credited past what the invoice leaves to credit.
"""
from __future__ import annotations

import json

import pytest

from tests.emulator import schema_support as schema


def _checked(resp, method: str, template: str, status: int = 200) -> dict:
    assert resp.status_code == status, (method, template, resp.status_code, resp.text[:400])
    body = resp.json()
    assert schema.errors(body, schema.response_schema(method, template, status)) == []
    return body


def _credit(raw, invoice: str, key: str | None = None, status: int = 200, **params) -> dict:
    data = {"invoice": invoice, **{k: str(v) for k, v in params.items()}}
    return _checked(raw("POST", "/v1/credit_notes", data, idempotency_key=key), "POST", "/v1/credit_notes", status)


def _invoice(raw, inv_id: str) -> dict:
    return _checked(raw("GET", "/v1/invoices/%s" % inv_id), "GET", "/v1/invoices/{invoice}")


def _customer(raw, cus_id: str) -> dict:
    return _checked(raw("GET", "/v1/customers/%s" % cus_id), "GET", "/v1/customers/{customer}")


def _paid_invoice(client, customer_with_card, open_invoice, amount: int = 2500):
    cus, pm = customer_with_card()
    inv = open_invoice(cus.id, amount)
    client.v1.invoices.pay(inv.id, params={"off_session": True})
    return cus, inv


def test_a_credit_note_on_an_open_invoice_lowers_what_is_due(emu, raw, customer_with_card, open_invoice):
    cus, _pm = customer_with_card()
    inv = open_invoice(cus.id, 2500)

    note = _credit(raw, inv.id, amount=1000, memo="Outage credit", reason="product_unsatisfactory")

    assert (note["type"], note["pre_payment_amount"], note["post_payment_amount"], note["total"]) == (
        "pre_payment", 1000, 0, 1000)
    assert note["status"] == "issued" and note["memo"] == "Outage credit" and note["number"].endswith("-CN-01")
    after = _invoice(raw, inv.id)
    assert (after["status"], after["total"], after["amount_due"], after["amount_remaining"]) == ("open", 2500, 1500,
                                                                                                 1500)
    assert after["pre_payment_credit_notes_amount"] == 1000
    assert [e["type"] for e in emu.events()][-2:] == ["credit_note.created", "invoice.updated"]
    paid = raw("POST", "/v1/invoices/%s/pay" % inv.id, {"off_session": "true"}).json()
    assert paid["amount_paid"] == 1500 and [c["amount"] for c in emu.charges()] == [1500]


def test_crediting_an_open_invoice_to_zero_marks_it_paid_without_a_charge(emu, raw, customer_with_card,
                                                                          open_invoice):
    cus, _pm = customer_with_card()
    inv = open_invoice(cus.id, 2500)
    _credit(raw, inv.id, amount=2000)
    _credit(raw, inv.id, amount=500)
    after = _invoice(raw, inv.id)
    assert (after["status"], after["amount_due"], after["amount_paid"], after["amount_remaining"]) == (
        "paid", 0, 0, 0)
    assert "invoice.paid" in [e["type"] for e in emu.events()]
    assert emu.charges() == []
    again = raw("POST", "/v1/invoices/%s/pay" % inv.id, {"off_session": "true"})
    assert again.status_code == 400 and again.json()["error"]["code"] == "invoice_already_paid"


def test_nothing_is_ever_credited_past_the_invoice(raw, client, customer_with_card, open_invoice):
    cus, _pm = customer_with_card()
    inv = open_invoice(cus.id, 2500)
    _credit(raw, inv.id, amount=2000)
    refused = _credit(raw, inv.id, amount=501, status=400)
    assert refused["error"]["param"] == "amount" and "501" in refused["error"]["message"]
    assert _invoice(raw, inv.id)["amount_remaining"] == 500

    client.v1.invoices.pay(inv.id, params={"off_session": True})  # pays the 500 left
    over = _credit(raw, inv.id, amount=501, credit_amount=501, status=400)  # 2500 − 2000 credited = 500 left
    assert "500" in over["error"]["message"]
    _credit(raw, inv.id, amount=500, credit_amount=500)
    assert _credit(raw, inv.id, amount=1, credit_amount=1, status=400)["error"]["type"] == "invalid_request_error"


def test_a_refund_credit_note_refunds_the_paying_charge(emu, raw, client, customer_with_card, open_invoice):
    cus, inv = _paid_invoice(client, customer_with_card, open_invoice, 2500)

    note = _credit(raw, inv.id, amount=700, refund_amount=700)

    assert (note["type"], note["post_payment_amount"]) == ("post_payment", 700)
    [refund] = note["refunds"]
    assert refund["amount_refunded"] == 700 and refund["type"] == "refund"
    [charge] = emu.charges()
    assert client.v1.charges.retrieve(charge["id"]).amount_refunded == 700
    types = [e["type"] for e in emu.events()]
    assert {"charge.refunded", "refund.created", "credit_note.created"} <= set(types)
    after = _invoice(raw, inv.id)
    assert (after["status"], after["amount_paid"], after["post_payment_credit_notes_amount"]) == ("paid", 2500, 700)
    too_much = _credit(raw, inv.id, amount=1801, refund_amount=1801, status=400)
    assert too_much["error"]["param"] in ("amount", "refund_amount")
    mismatch = _credit(raw, inv.id, amount=300, refund_amount=100, status=400)
    assert "add up" in mismatch["error"]["message"]


def test_account_credit_pays_the_next_invoice_first(emu, raw, client, customer_with_card, open_invoice):
    cus, inv = _paid_invoice(client, customer_with_card, open_invoice, 2500)

    note = _credit(raw, inv.id, amount=1000, credit_amount=1000)

    txn_id = note["customer_balance_transaction"]
    assert _customer(raw, cus.id)["balance"] == -1000  # negative: a credit to apply to the next invoice
    txns = _checked(raw("GET", "/v1/customers/%s/balance_transactions" % cus.id), "GET",
                    "/v1/customers/{customer}/balance_transactions")
    assert [(t["id"], t["type"], t["amount"], t["ending_balance"], t["credit_note"]) for t in txns["data"]] == [
        (txn_id, "credit_note", -1000, -1000, note["id"])]

    nxt = open_invoice(cus.id, 2500)
    rendered = _invoice(raw, nxt.id)
    assert (rendered["starting_balance"], rendered["ending_balance"], rendered["total"], rendered["amount_due"]) == (
        -1000, 0, 2500, 1500)
    assert _customer(raw, cus.id)["balance"] == 0
    client.v1.invoices.pay(nxt.id, params={"off_session": True})
    assert [c["amount"] for c in emu.charges()] == [2500, 1500]
    applied = raw("GET", "/v1/customers/%s/balance_transactions" % cus.id).json()["data"][0]
    assert (applied["type"], applied["amount"], applied["invoice"], applied["ending_balance"]) == (
        "applied_to_invoice", 1000, nxt.id, 0)


def test_a_credit_larger_than_the_next_invoice_pays_it_and_the_rest_waits(emu, raw, client, customer_with_card,
                                                                          open_invoice):
    cus, inv = _paid_invoice(client, customer_with_card, open_invoice, 2500)
    _credit(raw, inv.id, amount=2500, credit_amount=2500)
    nxt = open_invoice(cus.id, 900)
    rendered = _invoice(raw, nxt.id)
    assert (rendered["status"], rendered["amount_due"], rendered["amount_paid"]) == ("paid", 0, 0)
    assert _customer(raw, cus.id)["balance"] == -1600
    assert [c["amount"] for c in emu.charges()] == [2500]
    # Voiding an invoice that used the balance gives it back.
    third = open_invoice(cus.id, 2000)
    assert _customer(raw, cus.id)["balance"] == 0 and _invoice(raw, third.id)["amount_due"] == 400
    client.v1.invoices.void_invoice(third.id)
    assert _customer(raw, cus.id)["balance"] == -1600
    kinds = [t["type"] for t in raw("GET", "/v1/customers/%s/balance_transactions" % cus.id).json()["data"]]
    assert kinds == ["unapplied_from_invoice", "applied_to_invoice", "applied_to_invoice", "credit_note"]


def test_a_credit_note_by_lines_and_the_lists(raw, client, customer_with_card, open_invoice):
    cus, _pm = customer_with_card()
    inv = open_invoice(cus.id, 2500)
    line_id = inv.lines.data[0].id
    note = _credit(raw, inv.id, **{"lines[0][type]": "invoice_line_item", "lines[0][invoice_line_item]": line_id,
                                   "lines[0][amount]": 400})
    assert note["amount"] == 400 and note["lines"]["data"][0]["invoice_line_item"] == line_id
    listed = _checked(raw("GET", "/v1/credit_notes", {"invoice": inv.id}), "GET", "/v1/credit_notes")
    assert [n["id"] for n in listed["data"]] == [note["id"]]
    assert _checked(raw("GET", "/v1/credit_notes/%s" % note["id"]), "GET", "/v1/credit_notes/{id}")["id"] == note["id"]
    bad = _credit(raw, inv.id, status=400, **{"lines[0][type]": "invoice_line_item",
                                              "lines[0][invoice_line_item]": "il_nope", "lines[0][amount]": 1})
    assert bad["error"]["param"] == "lines[0][invoice_line_item]"


def test_the_same_idempotency_key_never_refunds_twice(emu, raw, client, customer_with_card, open_invoice):
    cus, inv = _paid_invoice(client, customer_with_card, open_invoice, 2500)
    first = _credit(raw, inv.id, key="credit-note-7", amount=800, refund_amount=800)
    again = raw("POST", "/v1/credit_notes", {"invoice": inv.id, "amount": "800", "refund_amount": "800"},
                idempotency_key="credit-note-7")
    assert again.json()["id"] == first["id"] and again.headers.get("Idempotent-Replayed") == "true"
    [charge] = emu.charges()
    assert client.v1.charges.retrieve(charge["id"]).amount_refunded == 800


def test_credit_notes_are_refused_on_drafts_and_void_invoices_and_unknown_params(raw, client, customer_with_card):
    cus, _pm = customer_with_card()
    draft = client.v1.invoices.create(params={"customer": cus.id, "currency": "usd"})
    client.v1.invoice_items.create(params={"customer": cus.id, "invoice": draft.id, "amount": 100,
                                           "currency": "usd"})
    assert _credit(raw, draft.id, amount=50, status=400)["error"]["code"] == "invoice_not_editable"
    assert _credit(raw, draft.id, amount=50, bogus=1, status=400)["error"]["code"] == "parameter_unknown"
    assert _credit(raw, "in_missing", amount=50, status=404)["error"]["code"] == "resource_missing"


def test_every_credit_note_event_matches_stripes_schema(emu, raw, client, customer_with_card, open_invoice):
    cus, inv = _paid_invoice(client, customer_with_card, open_invoice, 2500)
    _credit(raw, inv.id, amount=500, refund_amount=300, credit_amount=200)
    other = open_invoice(cus.id, 2500)  # uses the 200 of credit
    _credit(raw, other.id, amount=2300)  # to zero: paid
    raw("POST", "/v1/customers/%s/balance_transactions" % cus.id, {"amount": "-150", "currency": "usd"})
    seen, mismatches = set(), []
    for event in emu.events():
        body = json.loads(json.dumps(event))
        seen.add(body["type"])
        mismatches += ["%s envelope: %s" % (body["type"], e)
                       for e in schema.errors(body, {"$ref": "#/components/schemas/event"})]
        obj = body["data"]["object"]
        mismatches += ["%s: %s" % (body["type"], e) for e in schema.errors(obj, schema.object_schema(obj))]
    assert {"credit_note.created", "customer.updated", "invoice.updated", "invoice.paid", "charge.refunded"} <= seen
    assert mismatches == []


@pytest.mark.parametrize("param", ["refund_amount", "credit_amount", "out_of_band_amount"])
def test_an_open_invoice_takes_no_post_payment_split(raw, customer_with_card, open_invoice, param):
    cus, _pm = customer_with_card()
    inv = open_invoice(cus.id, 2500)
    refused = _credit(raw, inv.id, amount=100, status=400, **{param: 100})
    assert refused["error"]["param"] == param
