"""Test-card PaymentMethods: attach, detach, retrieve, list."""

import pytest
import stripe


@pytest.mark.parametrize("token,last4", [
    ("pm_card_visa", "4242"),
    ("pm_card_chargeCustomerFail", "0341"),
    ("pm_card_chargeDeclinedInsufficientFunds", "9995"),
    ("pm_card_authenticationRequired", "3184"),
])
def test_attach_token_creates_new_payment_method(client, token, last4):
    cus = client.v1.customers.create(params={"email": "pm@example.com"})
    pm = client.v1.payment_methods.attach(token, params={"customer": cus.id})
    assert pm.id.startswith("pm_") and pm.id != token
    assert pm.object == "payment_method" and pm.type == "card"
    assert pm.card.brand == "visa" and pm.card.last4 == last4
    assert pm.customer == cus.id
    again = client.v1.payment_methods.attach(token, params={"customer": cus.id})
    assert again.id != pm.id  # every attach of a token is a fresh PaymentMethod


def test_attach_declined_card(client, emu):
    cus = client.v1.customers.create(params={"email": "pm@example.com"})
    with pytest.raises(stripe.CardError) as exc:
        client.v1.payment_methods.attach("pm_card_visa_chargeDeclined", params={"customer": cus.id})
    assert exc.value.http_status == 402
    assert exc.value.code == "card_declined"
    assert exc.value.json_body["error"]["decline_code"] == "generic_decline"
    assert client.v1.customers.payment_methods.list(cus.id).data == []
    assert "payment_method.attached" not in [e["type"] for e in emu.events()]


def test_attach_requires_existing_customer(client):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_methods.attach("pm_card_visa", params={"customer": "cus_nope"})
    assert exc.value.http_status == 404
    assert exc.value.user_message == "No such customer: 'cus_nope'"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_methods.attach("pm_card_visa", params={})
    assert exc.value.user_message == "Missing required param: customer."


def test_list_detach_and_events(client, emu):
    cus = client.v1.customers.create(params={"email": "pm@example.com"})
    a = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    b = client.v1.payment_methods.attach("pm_card_mastercard", params={"customer": cus.id})
    client.v1.customers.update(cus.id, params={"invoice_settings": {"default_payment_method": a.id}})

    listed = client.v1.customers.payment_methods.list(cus.id)
    assert [pm.id for pm in listed.data] == [b.id, a.id]
    listed2 = client.v1.payment_methods.list(params={"customer": cus.id, "type": "card"})
    assert [pm.id for pm in listed2.data] == [b.id, a.id]
    assert client.v1.customers.payment_methods.retrieve(cus.id, a.id).id == a.id

    detached = client.v1.payment_methods.detach(a.id)
    assert detached.customer is None
    assert client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method is None
    assert [pm.id for pm in client.v1.customers.payment_methods.list(cus.id).data] == [b.id]
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_methods.detach(a.id)
    assert "not attached to a customer" in exc.value.user_message

    types = [e["type"] for e in emu.events()]
    assert types.count("payment_method.attached") == 2
    assert types[-2:] == ["payment_method.detached", "customer.updated"]
    detached_evt = emu.events(type="payment_method.detached")[0]
    assert detached_evt["data"]["previous_attributes"] == {"customer": cus.id}


def test_retrieve_payment_method(client):
    cus = client.v1.customers.create(params={"email": "pm@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    assert client.v1.payment_methods.retrieve(pm.id).card.last4 == "4242"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_methods.retrieve("pm_missing")
    assert exc.value.http_status == 404
    assert exc.value.user_message == "No such PaymentMethod: 'pm_missing'"


def test_cannot_attach_pm_of_another_customer(client):
    a = client.v1.customers.create(params={"email": "a@example.com"})
    b = client.v1.customers.create(params={"email": "b@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": a.id})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_methods.attach(pm.id, params={"customer": b.id})
    assert "already been attached" in exc.value.user_message
