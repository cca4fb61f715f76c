"""Idempotency-Key semantics."""

import threading

import pytest
import stripe

MISMATCH = ("Keys for idempotent requests can only be used with the same parameters they were first "
            "used with. Try using a key other than '%s' if you meant to execute a different request.")


def test_replay_same_key_same_params(raw, client):
    first = raw("POST", "/v1/customers", {"email": "i@example.com", "metadata[t]": "1"}, idempotency_key="k1")
    second = raw("POST", "/v1/customers", {"email": "i@example.com", "metadata[t]": "1"}, idempotency_key="k1")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Idempotency-Key"] == "k1"
    assert len(client.v1.customers.list().data) == 1


def test_stripe_client_idempotency_key_option(client):
    a = client.v1.customers.create(params={"email": "o@example.com"}, options={"idempotency_key": "opt-1"})
    b = client.v1.customers.create(params={"email": "o@example.com"}, options={"idempotency_key": "opt-1"})
    assert a.id == b.id
    assert len(client.v1.customers.list().data) == 1


def test_mismatched_params_rejected(raw, client):
    raw("POST", "/v1/customers", {"email": "a@example.com"}, idempotency_key="k2")
    r = raw("POST", "/v1/customers", {"email": "b@example.com"}, idempotency_key="k2")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "idempotency_error"
    assert r.json()["error"]["message"] == MISMATCH % "k2"
    # different endpoint, same key
    r = raw("POST", "/v1/invoices", {"customer": "cus_x"}, idempotency_key="k2")
    assert r.status_code == 400 and r.json()["error"]["type"] == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError) as exc:
        client.v1.customers.create(params={"email": "c@example.com"}, options={"idempotency_key": "k2"})
    assert str(exc.value.user_message) == MISMATCH % "k2"
    assert len(client.v1.customers.list().data) == 1


def test_validation_failures_are_not_saved(raw):
    bad = raw("POST", "/v1/customers", {"emali": "typo@example.com"}, idempotency_key="k3")
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "Received unknown parameter: emali"
    good = raw("POST", "/v1/customers", {"email": "typo@example.com"}, idempotency_key="k3")
    assert good.status_code == 200 and "Idempotent-Replayed" not in good.headers


def test_card_decline_is_saved_and_replayed(client, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_chargeCustomerFail")
    inv = open_invoice(cus.id)
    for _ in range(2):
        with pytest.raises(stripe.CardError) as exc:
            client.v1.invoices.pay(inv.id, options={"idempotency_key": "pay-1"})
    assert exc.value.headers["Idempotent-Replayed"] == "true"
    assert client.v1.invoices.retrieve(inv.id).attempt_count == 1


def test_keys_are_scoped_per_api_key(raw, client):
    a = raw("POST", "/v1/customers", {"email": "s@example.com"}, idempotency_key="k4", key="sk_test_one")
    b = raw("POST", "/v1/customers", {"email": "s@example.com"}, idempotency_key="k4", key="sk_test_two")
    assert a.json()["id"] != b.json()["id"]
    assert len(client.v1.customers.list().data) == 2


def test_concurrent_requests_with_same_key_execute_once(emu, raw, client):
    emu.set_faults(latency_ms=300)
    results = []

    def send():
        results.append(raw("POST", "/v1/customers", {"email": "c@example.com"}, idempotency_key="k5"))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200
    assert set(statuses) <= {200, 409}
    assert 409 in statuses
    conflict = [r for r in results if r.status_code == 409][0].json()["error"]
    assert conflict["type"] == "idempotency_error" and conflict["code"] == "idempotency_key_in_use"
    emu.clear_faults()
    assert len(client.v1.customers.list().data) == 1


def test_concurrent_stripe_clients_retry_409_and_get_same_object(emu, retrying_client, client):
    emu.set_faults(latency_ms=150)
    ids = []

    def send():
        ids.append(retrying_client.v1.customers.create(
            params={"email": "r@example.com"}, options={"idempotency_key": "k6"}).id)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emu.clear_faults()
    assert len(ids) == 2 and ids[0] == ids[1]
    assert len(client.v1.customers.list().data) == 1


def test_get_requests_ignore_idempotency_key(raw, client):
    cus = client.v1.customers.create(params={"email": "g@example.com"})
    r1 = raw("GET", "/v1/customers/" + cus.id, idempotency_key="k7")
    r2 = raw("GET", "/v1/customers", idempotency_key="k7")
    assert r1.status_code == r2.status_code == 200
