"""Signed webhook delivery, retries and the events API."""

import json

import pytest
import stripe

from stripe_emulator import DEFAULT_WEBHOOK_SECRET
from stripe_emulator.webhooks import signature_header


def test_default_secret_constant():
    assert DEFAULT_WEBHOOK_SECRET == "whsec_emulator_local_development_secret"


def test_delivery_is_signed_and_ordered(emu, client, webhook_receiver):
    emu.set_webhook(webhook_receiver.url, "whsec_test_secret")
    cus = client.v1.customers.create(params={"email": "w@example.com"})
    client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    client.v1.customers.update(cus.id, params={"name": "W"})
    assert emu.flush_webhooks()

    got = webhook_receiver.received
    assert len(got) == 3
    events = []
    for d in got:
        assert d["path"] == "/webhooks/stripe"
        assert d["headers"]["Content-Type"].startswith("application/json")
        header = d["headers"]["Stripe-Signature"]
        assert header.startswith("t=") and ",v1=" in header
        evt = stripe.Webhook.construct_event(d["body"], header, "whsec_test_secret")
        events.append(evt)
    assert [e.type for e in events] == ["customer.created", "payment_method.attached", "customer.updated"]
    assert events[0].data.object.id == cus.id
    assert events[0].object == "event" and events[0].livemode is False
    assert events[0].api_version == stripe._api_version._ApiVersion.CURRENT
    assert events[2].data.previous_attributes.name is None

    # tampered payload and wrong secret are rejected by the stripe library
    tampered = got[0]["body"].replace(cus.id.encode(), b"cus_evil")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, got[0]["headers"]["Stripe-Signature"], "whsec_test_secret")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(got[0]["body"], got[0]["headers"]["Stripe-Signature"], "whsec_other")

    stats = emu.webhook_status()
    assert stats["delivered"] == 3 and stats["failed"] == 0 and stats["pending"] == 0
    # pending_webhooks drops to 0 once delivered
    assert client.v1.events.retrieve(events[0].id).pending_webhooks == 0


def test_default_secret_used_when_none_given(emu, client, webhook_receiver):
    emu.set_webhook(webhook_receiver.url)
    client.v1.customers.create(params={"email": "d@example.com"})
    assert emu.flush_webhooks()
    d = webhook_receiver.received[0]
    evt = stripe.Webhook.construct_event(d["body"], d["headers"]["Stripe-Signature"], DEFAULT_WEBHOOK_SECRET)
    assert evt.type == "customer.created"


def test_retry_on_non_2xx_with_backoff(emu, client, webhook_receiver):
    emu.set_webhook(webhook_receiver.url, "whsec_r", backoff_initial=0.05, backoff_max=0.2, max_attempts=5)
    webhook_receiver.statuses.extend([500, 503])
    client.v1.customers.create(params={"email": "r@example.com"})
    client.v1.customers.create(params={"email": "r2@example.com"})
    assert emu.flush_webhooks()
    got = webhook_receiver.received
    first_id = json.loads(got[0]["body"])["id"]
    assert [d["status"] for d in got] == [500, 503, 200, 200]
    assert [json.loads(d["body"])["id"] for d in got[:3]] == [first_id] * 3  # same event retried
    emails = [json.loads(d["body"])["data"]["object"]["email"] for d in got[2:]]
    assert emails == ["r@example.com", "r2@example.com"]  # order kept
    stats = emu.webhook_status()
    assert stats["delivered"] == 2 and stats["retries"] == 2 and stats["attempts"] == 4


def test_gives_up_after_max_attempts(emu, client, webhook_receiver):
    emu.set_webhook(webhook_receiver.url, "whsec_g", backoff_initial=0.01, max_attempts=3)
    webhook_receiver.default_status = 400
    client.v1.customers.create(params={"email": "g@example.com"})
    assert emu.flush_webhooks()
    assert len(webhook_receiver.received) == 3
    stats = emu.webhook_status()
    assert stats["failed"] == 1 and stats["delivered"] == 0


def test_connection_error_is_retried(emu, client, webhook_receiver):
    dead = "http://127.0.0.1:9/nowhere"  # discard port: connection refused
    emu.set_webhook(dead, "whsec_c", backoff_initial=0.01, max_attempts=2, timeout=1)
    client.v1.customers.create(params={"email": "c@example.com"})
    assert emu.flush_webhooks()
    stats = emu.webhook_status()
    assert stats["failed"] == 1 and stats["attempts"] == 2
    assert stats["recent_deliveries"][-1]["error"]


def test_no_target_means_no_delivery(emu, client):
    client.v1.customers.create(params={"email": "n@example.com"})
    assert emu.flush_webhooks()
    evt = client.v1.events.list().data[0]
    assert evt.pending_webhooks == 0


def test_events_api(emu, client, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_visa")
    inv = open_invoice(cus.id)
    client.v1.invoices.pay(inv.id, options={"idempotency_key": "evt-pay"})
    all_events = client.v1.events.list(params={"limit": 100})
    types = [e.type for e in all_events.data]
    assert types[0] == "invoice.payment_succeeded"  # newest first
    assert all(e.id.startswith("evt_") for e in all_events.data)
    paid = client.v1.events.list(params={"type": "invoice.paid"})
    assert [e.data.object.id for e in paid.data] == [inv.id]
    assert paid.data[0].request.idempotency_key == "evt-pay"
    assert paid.data[0].request.id.startswith("req_")
    wildcard = client.v1.events.list(params={"type": "invoice.*"})
    assert wildcard.data and all(e.type.startswith("invoice.") for e in wildcard.data)
    page = client.v1.events.list(params={"limit": 2})
    assert page.has_more is True
    nxt = client.v1.events.list(params={"limit": 2, "starting_after": page.data[-1].id})
    assert nxt.data[0].id == all_events.data[2].id
    got = client.v1.events.retrieve(paid.data[0].id)
    assert got.type == "invoice.paid" and got.data.object.status == "paid"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.retrieve("evt_missing")
    assert exc.value.user_message == "No such event: 'evt_missing'"


def test_signature_helper_matches_stripe():
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "ping", "data": {"object": {}}})
    header = signature_header(payload, "whsec_x")
    assert stripe.Webhook.construct_event(payload, header, "whsec_x").id == "evt_1"
