"""The Stripe gateway against the running emulator: customers, idempotency, signatures, faults, parameters."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from sqlalchemy import select

from app import stripe_gateway
from app.extensions import db
from app.models import Tenant
from app.services.customers import ensure_customer, sync_customers
from stripe_emulator.params_contract import check_request_log
from tests.factories import make_tenant
from tests.support.config import base_config
from tests.support.queues import run_jobs


def customers_in_stripe(emulator) -> list[dict]:
    client = emulator.stripe_client()
    return [c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()]


def test_sync_customers_creates_each_once_and_second_run_creates_nothing(app, plans, emulator):
    tenants = [make_tenant() for _ in range(5)]
    first = sync_customers()
    assert (first.created, first.failed) == (5, {})
    second = sync_customers()
    assert (second.created, second.existing) == (0, 5)
    in_stripe = customers_in_stripe(emulator)
    assert len(in_stripe) == 5
    assert sorted(c["metadata"]["tenant_id"] for c in in_stripe) == sorted(str(t.id) for t in tenants)
    db.session.expire_all()
    stored = db.session.scalars(select(Tenant.stripe_customer_id)).all()
    assert sorted(stored) == sorted(c["id"] for c in in_stripe)


def test_concurrent_syncs_create_one_customer_per_tenant(app, plans, emulator, migrated, redis_url):
    from app import create_app

    tenants = [make_tenant() for _ in range(4)]
    errors = []

    def worker():
        other = create_app(base_config(migrated, redis_url, STRIPE_API_BASE=emulator.url,
                                       STRIPE_SECRET_KEY=emulator.api_key))
        try:
            with other.app_context():
                sync_customers()
                db.session.remove()
                db.engine.dispose()
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(customers_in_stripe(emulator)) == len(tenants)
    db.session.expire_all()
    assert all(t.stripe_customer_id for t in db.session.scalars(select(Tenant)))


def test_tenant_creation_queues_customer_creation(app, plans, emulator):
    from app.services.tenants import create_tenant

    created = create_tenant("Queue Co", "pro", "owner@queue.example.com", "long-enough-pw")
    assert created.tenant.stripe_customer_id is None  # tenant creation never waits on Stripe
    run_jobs(("billing",))
    db.session.expire_all()
    tenant = db.session.get(Tenant, created.tenant.id)
    assert tenant.stripe_customer_id and tenant.stripe_customer_id.startswith("cus_")
    assert customers_in_stripe(emulator)[0]["email"] == "owner@queue.example.com"


def test_cli_sync_customers(app, plans, emulator):
    make_tenant()
    make_tenant()
    out = app.test_cli_runner().invoke(args=["billing", "sync-customers"])
    assert out.exit_code == 0 and "created 2" in out.output
    out = app.test_cli_runner().invoke(args=["billing", "sync-customers"])
    assert "created 0, already had one 2" in out.output


def test_idempotency_replay_and_mismatch(app, emulator):
    headers = {"Authorization": f"Bearer {emulator.api_key}", "Idempotency-Key": "customer-create-tenant-77"}
    body = {"name": "A", "metadata[tenant_id]": "77"}  # exactly what the gateway sends for tenant 77
    first = requests.post(f"{emulator.url}/v1/customers", data=body, headers=headers)
    replay = requests.post(f"{emulator.url}/v1/customers", data=body, headers=headers)
    assert first.status_code == replay.status_code == 200
    assert first.json()["id"] == replay.json()["id"] and replay.headers.get("Idempotent-Replayed") == "true"
    mismatch = requests.post(f"{emulator.url}/v1/customers", data={"name": "B"}, headers=headers)
    assert mismatch.status_code == 400 and mismatch.json()["error"]["type"] == "idempotency_error"
    # The gateway uses the same key for the same tenant: it gets the first customer back.
    assert stripe_gateway.create_customer(77, "A", None) == first.json()["id"]
    assert len(customers_in_stripe(emulator)) == 1


def test_signed_event_verifies_and_tampered_one_is_rejected(app, emulator):
    import stripe

    payload = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid",
                          "data": {"object": {"id": "in_1", "object": "invoice"}}})
    ts = int(time.time())
    sig = stripe.WebhookSignature._compute_signature(f"{ts}.{payload}", emulator.webhook_secret)
    header = f"t={ts},v1={sig}"
    event = stripe_gateway.verify_event(payload.encode(), header, emulator.webhook_secret)
    assert event["id"] == "evt_1"
    with pytest.raises(ValueError):
        stripe_gateway.verify_event(payload.replace("in_1", "in_2").encode(), header, emulator.webhook_secret)
    with pytest.raises(ValueError):
        stripe_gateway.verify_event(payload.encode(), header, "whsec_wrong")
    with pytest.raises(ValueError):
        stripe_gateway.verify_event(payload.encode(), None, emulator.webhook_secret)


def test_faults_make_the_gateway_retry_with_the_same_key_and_never_duplicate(app, plans, emulator):
    tenants = [make_tenant() for _ in range(3)]
    # A 500 and a lost response (processed, connection dropped): the client's retries recover.
    emulator.set_faults(error_next=1, disconnect_next=1, path_contains="/v1/customers")
    ensure_customer(tenants[0].id)
    # More failures than the client retries: the job fails "retry later" and the next run uses the same key.
    emulator.set_faults(error_next=3, path_contains="/v1/customers")
    with pytest.raises(stripe_gateway.GatewayError) as err:
        ensure_customer(tenants[1].id)
    assert err.value.outcome == stripe_gateway.Outcome.RETRY_LATER
    ensure_customer(tenants[1].id)
    emulator.set_faults(disconnect_next=1, path_contains="/v1/customers")
    ensure_customer(tenants[2].id)
    log = [r for r in emulator.requests() if r["path"] == "/v1/customers" and r["method"] == "POST"]
    assert len(log) > len(tenants)  # retried
    assert {r["idempotency_key"] for r in log} == {f"customer-create-tenant-{t.id}" for t in tenants}
    assert len(customers_in_stripe(emulator)) == 3


def test_rate_limited_requests_back_off_and_succeed(app, plans, emulator):
    emulator.set_faults(rate_limit_per_s=2)
    tenants = [make_tenant() for _ in range(5)]
    for t in tenants:
        ensure_customer(t.id)
    statuses = [r["status"] for r in emulator.requests() if r["path"] == "/v1/customers"]
    assert 429 in statuses
    assert len(customers_in_stripe(emulator)) == 5


def test_errors_are_classified(app, emulator):
    with pytest.raises(stripe_gateway.GatewayError) as missing:
        stripe_gateway.retrieve_customer("cus_does_not_exist")
    assert missing.value.outcome == stripe_gateway.Outcome.BUG and missing.value.http_status == 404
    customer = stripe_gateway.create_customer(1, "Decliner", None)
    with pytest.raises(stripe_gateway.GatewayError) as declined:
        stripe_gateway.attach_default_card(customer, "pm_card_visa_chargeDeclined", key="t-decl")
    assert declined.value.outcome == stripe_gateway.Outcome.PAYMENT_FAILED
    assert declined.value.code == "card_declined"


def test_every_parameter_the_gateway_sent_is_declared_by_the_stripe_package(app, plans, emulator):
    """The contract test: exercise every gateway call, then check the emulator's request log."""
    tenant = make_tenant()
    customer = ensure_customer(tenant.id)
    stripe_gateway.attach_default_card(customer, "pm_card_visa", key="contract")
    assert stripe_gateway.default_payment_method(customer)
    inv = stripe_gateway.create_invoice(1, customer, "usd", "2026-10", tenant.id, "SP-TEST-1")
    stripe_gateway.add_invoice_item(1, customer, inv.id, 1234, "usd", "Plan fee", 1, 2)
    stripe_gateway.finalize_invoice(1, inv.id)
    stripe_gateway.pay_invoice(inv.id, "pay-attempt-1")
    stripe_gateway.retrieve_invoice(inv.id)
    stripe_gateway.list_invoices(customer)
    inv2 = stripe_gateway.create_invoice(2, customer, "usd", "2026-09", tenant.id, None)
    stripe_gateway.add_invoice_item(2, customer, inv2.id, 500, "usd", "Plan fee", 1, 2)
    stripe_gateway.finalize_invoice(2, inv2.id)
    stripe_gateway.void_invoice(2, inv2.id)
    url = stripe_gateway.portal_session_url(customer, "http://127.0.0.1:5000/admin/billing")
    assert url.startswith(emulator.url)
    problems = check_request_log(emulator.requests())
    assert problems == []
    assert {r["path"].split("/")[2] for r in emulator.requests() if r["path"].startswith("/v1/")} >= {
        "customers", "payment_methods", "invoices", "invoiceitems", "billing_portal"}
