"""Fault injection: 500s, 429s, latency and lost responses."""

import time

import pytest
import stripe


def test_500_then_success_on_retry_with_same_key(emu, retrying_client, client):
    emu.set_faults(error_next=2)
    cus = retrying_client.v1.customers.create(params={"email": "f@example.com"})
    assert cus.id.startswith("cus_")
    assert emu.faults()["errors_500"] == 2
    log = [r for r in emu.requests() if r["path"] == "/v1/customers" and r["method"] == "POST"]
    assert [r["status"] for r in log] == [500, 500, 200]
    assert len({r["idempotency_key"] for r in log}) == 1  # stripe-python reused its key
    assert len(client.v1.customers.list().data) == 1


def test_500_without_retries(emu, client, raw):
    emu.set_faults(error_rate=1.0)
    with pytest.raises(stripe.APIError) as exc:
        client.v1.customers.create(params={"email": "f@example.com"})
    assert exc.value.http_status == 500
    r = raw("POST", "/v1/customers", {"email": "x@example.com"}, idempotency_key="f1")
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    emu.clear_faults()
    # the 500 was not saved under the key: the retry executes
    r = raw("POST", "/v1/customers", {"email": "x@example.com"}, idempotency_key="f1")
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    assert len(client.v1.customers.list().data) == 1


def test_rate_limit_429(emu, client):
    emu.set_faults(rate_limit_per_s=3)
    for _ in range(3):
        client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError) as exc:
        client.v1.customers.list()
    assert exc.value.http_status == 429
    assert exc.value.json_body["error"]["code"] == "rate_limit"
    assert emu.faults()["rate_limited_429"] == 1
    time.sleep(1.05)
    client.v1.customers.list()  # window passed


def test_lost_response_then_retry_replays(emu, retrying_client, client, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_visa")
    inv = open_invoice(cus.id, 3100)
    emu.set_faults(disconnect_next=1, path_contains="/pay")
    paid = retrying_client.v1.invoices.pay(inv.id)
    assert paid.status == "paid"
    assert emu.faults()["disconnects"] == 1
    log = [r for r in emu.requests() if r["path"].endswith("/pay")]
    assert len(log) == 2
    assert log[0]["disconnected"] is True and log[0]["status"] == 200
    assert log[1]["replayed"] is True
    assert log[0]["idempotency_key"] == log[1]["idempotency_key"]
    charges = emu.charges()
    assert len(charges) == 1 and charges[0]["invoice"] == inv.id  # charged exactly once


def test_lost_response_without_retry_still_processed(emu, client):
    emu.set_faults(disconnect_rate=1.0)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create(params={"email": "lost@example.com"})
    emu.clear_faults()
    assert [c.email for c in client.v1.customers.list().data] == ["lost@example.com"]


def test_latency(emu, client):
    emu.set_faults(latency_ms=200)
    t = time.monotonic()
    client.v1.customers.list()
    assert time.monotonic() - t >= 0.19
    assert emu.faults()["latency_ms"] == 200


def test_fault_settings_roundtrip_and_validation(emu):
    out = emu.set_faults(error_rate=0.25, latency_ms=5, rate_limit_per_s=100, disconnect_rate=0.1, seed=7)
    assert out["error_rate"] == 0.25 and out["disconnect_rate"] == 0.1
    assert out["counters"] == {"errors_500": 0, "rate_limited_429": 0, "disconnects": 0, "delayed": 0}
    with pytest.raises(Exception):
        emu.set_faults(error_rate=2)
    with pytest.raises(Exception):
        emu.set_faults(bogus=1)
    emu.reset()
    assert emu.faults()["error_rate"] == 0.0


def test_control_endpoints_not_affected_by_faults(emu):
    emu.set_faults(error_rate=1.0, rate_limit_per_s=1)
    for _ in range(3):
        assert emu.requests() is not None
    emu.clear_faults()
