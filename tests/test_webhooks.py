"""Stripe webhooks through the running app and the emulator: verify, store once, process once, never regress."""
from __future__ import annotations

import json
import time
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, update

from app.extensions import db, rq
from app.models import AttemptStatus, AuditLog, Invoice, InvoiceStatus, Tenant, WebhookEvent, utcnow
from app.services import invoicing
from app.services.webhooks import processing
from tests.billing_support import add_usage, attempts_of, charges_for, invoices_of
from tests.factories import make_root, make_tenant, open_invoice_in_stripe, tenant_with_card, utc
from tests.support.concurrency import run_concurrently
from tests.support.queues import run_jobs
from tests.webhook_support import http, make_event, one_event, outbox, post_event, reload, signed, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)


def webhook_url(live_server: str) -> str:
    return f"{live_server}/webhooks/stripe"


def queued_jobs() -> list[str]:
    return rq.queue("webhooks").get_job_ids()


def drainer_job(row_id: int) -> str:
    """The job a newly stored event starts when no drainer is running (drainer `row id % 4`)."""
    return f"webhook-drain-{row_id % processing.DRAINERS}-{row_id}"


def charged(card: str = "pm_card_visa", period: str = "2026-10", **kw) -> tuple[Tenant, Invoice]:
    """A tenant invoiced and charged (through our own service) for a period."""
    tenant = tenant_with_card(card, created_at=EARLY, **kw)
    invoicing.invoice_and_charge(tenant.id, period, now=NOW)
    return tenant, invoices_of(tenant.id)[-1]


def stripe_get_count(emulator, stripe_invoice_id: str) -> int:
    return sum(1 for r in emulator.requests()
               if r["method"] == "GET" and r["path"] == f"/v1/invoices/{stripe_invoice_id}")


# -- the endpoint: signatures ----------------------------------------------------------------------------

def test_a_genuine_event_is_stored_queued_and_answered_200(app, live_server):
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    event = make_event("invoice.paid", {"id": "in_nowhere", "object": "invoice", "customer": "cus_x"})
    resp = post_event(webhook_url(live_server), event, secret)
    assert resp.status_code == 200 and resp.json() == {"received": True, "duplicate": False}
    [row] = stored_events()
    assert (row.stripe_event_id, row.type, row.object_id) == (event["id"], "invoice.paid", "in_nowhere")
    assert (row.status, row.attempts, row.tenant_id, row.processed_at) == ("pending", 0, None, None)
    assert row.payload == event and row.received_at is not None
    assert queued_jobs() == [drainer_job(row.id)]


def test_the_tenant_is_resolved_at_receipt_from_the_customer(app, plans, live_server):
    tenant = make_tenant(stripe_customer_id="cus_known")
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    post_event(webhook_url(live_server), make_event("invoice.finalized", {"id": "in_1", "object": "invoice",
                                                                          "customer": "cus_known"}), secret)
    post_event(webhook_url(live_server), make_event("customer.updated", {"id": "cus_known", "object": "customer"}),
               secret)
    assert [e.tenant_id for e in stored_events()] == [tenant.id, tenant.id]


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "stale timestamp", "missing header",
                                  "malformed JSON", "garbage header", "not an object", "no event id",
                                  "no data object"])
def test_a_delivery_that_is_not_genuine_is_400_and_nothing_is_stored(app, live_server, case):
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    event = make_event("invoice.paid", {"id": "in_1", "object": "invoice", "amount_paid": 100})
    body, headers = signed(event, secret)
    if case == "tampered body":
        body = body.replace(b'"amount_paid": 100', b'"amount_paid": 999')
    elif case == "wrong secret":
        body, headers = signed(event, "whsec_somebody_else")
    elif case == "stale timestamp":  # replayed from 10 minutes ago: outside the library's 300 s tolerance
        body, headers = signed(event, secret, timestamp=int(time.time()) - 600)
    elif case == "missing header":
        del headers["Stripe-Signature"]
    elif case == "malformed JSON":
        body, headers = signed('{"id": "evt_1", "type": "invoice.paid", "data": {', secret)
    elif case == "garbage header":
        headers["Stripe-Signature"] = "nonsense"
    elif case == "not an object":
        body, headers = signed("[1, 2, 3]", secret)
    elif case == "no event id":
        body, headers = signed(json.dumps({"type": "invoice.paid", "data": {"object": {}}}), secret)
    elif case == "no data object":
        body, headers = signed(json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {}}), secret)
    resp = http().post(webhook_url(live_server), data=body, headers=headers, timeout=30)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["message"]
    expected = "malformed_event" if case in ("malformed JSON", "not an object", "no event id",
                                             "no data object") else "invalid_signature"
    assert error["code"] == expected
    assert stored_events() == [] and queued_jobs() == []


def test_only_post_is_answered(app, live_server):
    resp = http().get(webhook_url(live_server), timeout=30)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


# -- duplicates ------------------------------------------------------------------------------------------

def test_a_duplicate_delivery_is_200_and_not_processed_again(app, plans, emulator, live_server):
    tenant, invoice = charged()
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    first = post_event(webhook_url(live_server), paid, secret)
    run_jobs()
    again = post_event(webhook_url(live_server), paid, secret)
    assert first.json()["duplicate"] is False and again.status_code == 200 and again.json()["duplicate"] is True
    [row] = stored_events()
    assert row.status == "processed" and row.attempts == 1
    assert queued_jobs() == []
    run_jobs()
    assert reload(row).attempts == 1


def test_concurrent_duplicate_deliveries_store_one_row_and_process_it_once(app, plans, emulator, live_server):
    tenant, invoice = charged()
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    body, headers = signed(paid, secret)
    n = 12
    sessions = [http() for _ in range(n)]
    answers = run_concurrently(
        lambda i: sessions[i].post(webhook_url(live_server), data=body, headers=headers, timeout=30), n, timeout=30)
    assert [r.status_code for r in answers] == [200] * n
    assert sorted(r.json()["duplicate"] for r in answers) == [False] + [True] * (n - 1)
    [row] = stored_events()
    assert queued_jobs() == [drainer_job(row.id)]
    reads_before = stripe_get_count(emulator, invoice.stripe_invoice_id)
    run_jobs()
    row = reload(row)
    assert (row.status, row.attempts) == ("processed", 1)
    assert stripe_get_count(emulator, invoice.stripe_invoice_id) == reads_before + 1  # re-read once


def test_concurrent_workers_claim_an_event_once(app, plans, emulator, live_server):
    tenant, invoice = charged()
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    post_event(webhook_url(live_server), paid, app.config["STRIPE_WEBHOOK_SECRET"])
    [row] = stored_events()
    reads_before = stripe_get_count(emulator, invoice.stripe_invoice_id)
    n = 6
    row_id = row.id
    results = run_concurrently(lambda _: processing.process_event(row_id), n, app=app)
    assert len(results) == n and results.count("processed") >= 1
    assert reload(row).attempts == 1 and reload(row).status == "processed"
    assert stripe_get_count(emulator, invoice.stripe_invoice_id) == reads_before + 1


# -- processing: state from Stripe, never regressing -------------------------------------------------------

def test_a_payment_in_stripe_reaches_the_app_by_webhook_and_restores_the_tenant(app, plans, emulator, hook):
    from app.services import dunning

    tenant, invoice = charged("pm_card_chargeCustomerFail")
    hook()
    assert invoice.status == InvoiceStatus.OPEN
    dunning.reevaluate_tenant(tenant.id, now=utcnow())  # NOW was weeks ago: the tenant is in dunning
    assert reload(tenant).dunning_stage != "ok" and reload(tenant).overdue_days > 0
    # The customer pays on the hosted invoice page with another card.
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    emulator.flush_webhooks()
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.amount_paid == invoice.amount_due
    assert invoice.paid_at is not None and invoice.last_payment_error is None
    tenant = reload(tenant)
    assert (tenant.overdue_days, tenant.dunning_stage) == (0, "ok")
    processed = {e.type: e.status for e in stored_events()}
    assert processed["invoice.paid"] == processed["invoice.payment_succeeded"] == "processed"
    assert all(e.tenant_id == tenant.id for e in stored_events() if e.type.startswith("invoice."))


def test_an_old_payment_failed_after_paid_does_not_reopen_the_invoice(app, plans, emulator, live_server):
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    secret, url = app.config["STRIPE_WEBHOOK_SECRET"], webhook_url(live_server)
    [failed] = [e for e in emulator.events("invoice.payment_failed")
                if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    assert failed["data"]["object"]["status"] == "open"  # the stale payload still says open

    post_event(url, paid, secret)
    run_jobs()
    assert reload(invoice).status == InvoiceStatus.PAID
    emails_before = len(outbox())
    post_event(url, failed, secret)  # delivered late
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.last_payment_error is None
    assert invoice.amount_paid == invoice.amount_due
    assert one_event(failed["id"]).status == "processed" and "stale" in one_event(failed["id"]).last_error
    assert len(outbox()) == emails_before  # no "payment failed" email for a paid invoice


def test_a_failed_payment_in_stripe_keeps_the_error_and_tells_the_tenant_once(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    invoice = open_invoice_in_stripe(tenant, 2026, 10, now=NOW)
    hook()
    client = emulator.stripe_client()
    for _ in range(2):  # Stripe's own retries (outside our charging) both fail
        with pytest.raises(Exception):
            client.v1.invoices.pay(invoice.stripe_invoice_id, params={"off_session": True})
    emulator.flush_webhooks()
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.OPEN
    assert invoice.last_payment_error and invoice.last_payment_error_code == "payment_failed"
    [mail] = outbox("payment_failed")
    assert mail.tenant_id == tenant.id and mail.to_address == tenant.billing_email
    assert [e.status for e in stored_events() if e.type == "invoice.payment_failed"] == ["processed", "processed"]


def test_action_required_sends_the_hosted_link(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_authenticationRequired", created_at=EARLY)
    invoice = open_invoice_in_stripe(tenant, 2026, 10, now=NOW)
    hook()
    with pytest.raises(Exception):
        emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"off_session": True})
    emulator.flush_webhooks()
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.OPEN and invoice.last_payment_error_code == "authentication_required"
    assert invoice.next_payment_attempt_at is None
    [mail] = outbox("action_required")
    assert invoice.hosted_invoice_url and invoice.hosted_invoice_url in mail.body_text
    assert outbox("payment_failed") == []  # one email asks for the authentication, not two


def test_voided_and_uncollectible_invoices_follow_stripe_and_release_the_tenant(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_visa", created_at=utc(2026, 7, 1))
    first = open_invoice_in_stripe(tenant, 2026, 9, now=utc(2026, 10, 1))
    second = open_invoice_in_stripe(tenant, 2026, 10, now=NOW)
    hook()
    client = emulator.stripe_client()
    client.v1.invoices.void_invoice(first.stripe_invoice_id)
    client.v1.invoices.mark_uncollectible(second.stripe_invoice_id)
    emulator.flush_webhooks()
    run_jobs()
    assert (reload(first).status, reload(second).status) == ("void", "uncollectible")
    assert reload(tenant).overdue_days == 0
    assert {e.type: e.status for e in stored_events()}["invoice.voided"] == "processed"


def test_finalized_on_a_draft_is_left_to_the_invoicing_job(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    invoice = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    # Finalized in Stripe, but the run died before recording it: our row is still a draft.
    from app import stripe_gateway

    remote = stripe_gateway.create_invoice(invoice.id, tenant.stripe_customer_id, "usd", "2026-10", tenant.id, None)
    invoice.stripe_invoice_id = remote.id
    db.session.commit()
    stripe_gateway.add_invoice_item(invoice.lines[0].id, tenant.stripe_customer_id, remote.id,
                                    invoice.lines[0].amount, "usd", "fee", 1, 2)
    stripe_gateway.finalize_invoice(invoice.id, remote.id)
    [finalized] = emulator.events("invoice.finalized")
    post_event(webhook_url(live_server), finalized, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs(("webhooks",))
    assert one_event(finalized["id"]).status == "processed"
    assert reload(invoice).status == InvoiceStatus.DRAFT  # not half-recorded by the webhook
    period_job = f"invoice-{tenant.id}-2026-10"
    assert period_job in rq.queue("billing").get_job_ids()
    run_jobs(("billing",))  # the invoicing job resumes: numbers, dates, records open and charges
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.number and invoice.due_at is not None


# -- unknown things are recorded, never a crash ----------------------------------------------------------

def test_an_unknown_event_type_is_stored_and_ignored(app, live_server):
    event = make_event("customer.subscription.created", {"id": "sub_1", "object": "subscription"})
    assert post_event(webhook_url(live_server), event, app.config["STRIPE_WEBHOOK_SECRET"]).status_code == 200
    run_jobs()
    row = one_event(event["id"])
    assert row.status == "ignored" and "not handled" in row.last_error and row.processed_at is not None


def test_an_event_for_an_invoice_we_do_not_know_is_recorded(app, plans, emulator, live_server):
    secret, url = app.config["STRIPE_WEBHOOK_SECRET"], webhook_url(live_server)
    unknown = make_event("invoice.paid", {"id": "in_not_ours", "object": "invoice", "customer": "cus_nobody",
                                          "status": "paid", "metadata": {"invoice_id": "987654"}})
    stranger = make_event("customer.updated", {"id": "cus_nobody", "object": "customer",
                                               "invoice_settings": {"default_payment_method": "pm_2"}},
                          previous={"invoice_settings": {"default_payment_method": "pm_1"}})
    for event in (unknown, stranger):
        assert post_event(url, event, secret).status_code == 200
    run_jobs()
    assert one_event(unknown["id"]).status == "ignored" and "in_not_ours" in one_event(unknown["id"]).last_error
    assert one_event(stranger["id"]).status == "ignored" and "cus_nobody" in one_event(stranger["id"]).last_error


def test_metadata_of_another_customer_never_links_an_invoice(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    invoice = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)  # a draft, not in Stripe yet
    # Another environment sharing the Stripe account has an invoice with the same metadata id.
    event = make_event("invoice.paid", {"id": "in_other_env", "object": "invoice", "customer": "cus_other_env",
                                        "status": "paid", "metadata": {"invoice_id": str(invoice.id)}})
    post_event(webhook_url(live_server), event, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs(("webhooks",))
    assert one_event(event["id"]).status == "ignored"
    invoice = reload(invoice)
    assert invoice.stripe_invoice_id is None and invoice.status == InvoiceStatus.DRAFT


# -- a new default card ----------------------------------------------------------------------------------

def test_a_new_default_card_retries_the_open_invoice_once_and_pays_it(app, plans, emulator, hook):
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    hook()
    assert invoice.status == InvoiceStatus.OPEN
    # What the Customer Portal does: attach a working card and make it the default (two events).
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")
    emulator.flush_webhooks()
    assert {"payment_method.attached", "customer.updated"} <= {e.type for e in stored_events()}
    run_jobs()
    emulator.flush_webhooks()  # the payment's own events come back too
    run_jobs()
    invoice = reload(invoice)
    assert invoice.status == InvoiceStatus.PAID and invoice.amount_paid == invoice.amount_due
    assert [(a.trigger, a.status) for a in attempts_of(invoice.id)] == [
        ("scheduled", AttemptStatus.FAILED), ("card_updated", AttemptStatus.SUCCEEDED)]
    assert [c["status"] for c in charges_for(emulator, tenant.stripe_customer_id, include_failed=True)] == [
        "failed", "succeeded"]
    assert all(e.status == "processed" for e in stored_events())


def test_a_changed_card_that_still_declines_is_charged_once_for_both_events(app, plans, emulator, hook):
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    hook()
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_chargeDeclinedInsufficientFunds")
    emulator.flush_webhooks()
    run_jobs()
    emulator.flush_webhooks()
    run_jobs()
    assert reload(invoice).status == InvoiceStatus.OPEN
    assert [a.trigger for a in attempts_of(invoice.id)] == ["scheduled", "card_updated"]
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == 2


def test_other_customer_changes_do_not_charge(app, plans, emulator, hook):
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    hook()
    emulator.stripe_client().v1.customers.update(tenant.stripe_customer_id, params={"name": "Renamed"})
    emulator.flush_webhooks()
    run_jobs()
    [updated] = [e for e in stored_events() if e.type == "customer.updated"]
    assert updated.status == "processed" and "did not change" in updated.last_error
    assert len(attempts_of(invoice.id)) == 1


# -- disputes --------------------------------------------------------------------------------------------

def test_a_dispute_flags_the_invoice_and_the_tenant(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_visa", created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 5), voice_minutes=650)  # October costs more than September
    for period in ("2026-09", "2026-10"):
        invoicing.invoice_and_charge(tenant.id, period, now=NOW)
    september, october = invoices_of(tenant.id)
    assert september.status == october.status == InvoiceStatus.PAID
    assert september.amount_paid != october.amount_paid
    [charge] = [c for c in emulator.charges() if c["invoice"] == october.stripe_invoice_id]
    # The bank disputes October's charge; Stripe's event names the charge, not the invoice.
    emulator._call("POST", f"/_emulator/invoices/{october.stripe_invoice_id}/dispute", {})
    [dispute] = emulator.events("charge.dispute.created")
    assert dispute["data"]["object"]["charge"] == charge["id"]
    assert post_event(webhook_url(live_server), dispute, app.config["STRIPE_WEBHOOK_SECRET"]).status_code == 200
    run_jobs()
    assert reload(october).disputed is True and reload(september).disputed is False
    assert reload(tenant).disputed is True
    row = one_event(dispute["id"])
    assert (row.status, row.tenant_id, row.last_error) == ("processed", tenant.id, None)


def test_a_dispute_on_a_charge_we_cannot_place_is_recorded(app, plans, emulator, live_server):
    other = emulator.stripe_client().v1.customers.create(params={"name": "Not a tenant"})
    dispute = make_event("charge.dispute.created", {"id": "dp_2", "object": "dispute", "amount": 500,
                                                    "charge": {"id": "ch_x", "customer": other.id, "amount": 500}})
    post_event(webhook_url(live_server), dispute, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    assert one_event(dispute["id"]).status == "ignored"


# -- failures, retries and replay ------------------------------------------------------------------------

def test_stripe_down_fails_the_event_then_the_retry_sweep_processes_it(app, plans, emulator, live_server):
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    emulator.set_faults(error_rate=1.0, path_contains="/v1/invoices/")
    post_event(webhook_url(live_server), paid, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    row = one_event(paid["id"])
    assert (row.status, row.attempts) == ("failed", 1) and "GatewayError" in row.last_error
    assert reload(invoice).status == InvoiceStatus.OPEN
    assert [e.id for e in processing.failed_events()] == [row.id]

    failed_at = row.processed_at
    assert processing.retry_failed(now=failed_at + timedelta(seconds=30)) == 0  # back-off not over yet
    assert processing.retry_failed(now=failed_at + processing.backoff(1)) == 1
    run_jobs()  # Stripe still down: the second attempt fails, the back-off doubles
    row = one_event(paid["id"])
    assert (row.status, row.attempts) == ("failed", 2)
    assert processing.retry_failed(now=row.processed_at + processing.backoff(1)) == 0
    emulator.clear_faults()
    assert processing.retry_failed(now=row.processed_at + processing.backoff(2)) == 1
    run_jobs()
    row = one_event(paid["id"])
    assert (row.status, row.attempts, row.last_error) == ("processed", 3, None)
    assert reload(invoice).status == InvoiceStatus.PAID
    assert processing.failed_events() == []


def test_an_event_that_keeps_failing_is_left_for_a_person(app, plans):
    db.session.add(WebhookEvent(stripe_event_id="evt_hopeless", type="invoice.paid", payload={}, status="failed",
                                attempts=processing.MAX_ATTEMPTS, last_error="boom", processed_at=utc(2026, 1, 1)))
    db.session.commit()
    assert processing.retry_failed(now=utc(2026, 6, 1)) == 0
    assert [e.stripe_event_id for e in processing.failed_events()] == ["evt_hopeless"]


def test_lost_jobs_and_interrupted_events_are_picked_up_by_the_sweep(app, plans):
    now = utcnow()
    db.session.add_all([
        WebhookEvent(stripe_event_id="evt_lost", type="invoice.paid", payload={}, status="pending",
                     received_at=now - timedelta(minutes=10)),
        WebhookEvent(stripe_event_id="evt_fresh", type="invoice.paid", payload={}, status="pending",
                     received_at=now),
        WebhookEvent(stripe_event_id="evt_killed", type="invoice.paid", payload={}, status="processing",
                     attempts=1, received_at=now - timedelta(hours=2), processed_at=now - timedelta(hours=1)),
    ])
    db.session.commit()
    assert processing.retry_failed(now=now) == 2  # the lost one and the interrupted one (back-off of 1 attempt over)
    killed = one_event("evt_killed")
    assert killed.status == "failed" and "interrupted" in killed.last_error
    run_jobs()
    assert {e.stripe_event_id: e.status for e in stored_events()} == {
        "evt_lost": "ignored", "evt_fresh": "pending", "evt_killed": "ignored"}  # empty payloads: nothing to do


def test_a_root_admin_replays_a_failed_event_and_it_is_audited(app, plans, emulator, live_server):
    root = make_root()
    tenant, invoice = charged("pm_card_chargeCustomerFail")
    emulator.stripe_client().v1.invoices.pay(invoice.stripe_invoice_id, params={"payment_method": "pm_card_visa"})
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    emulator.set_faults(error_next=10, path_contains="/v1/invoices/")
    post_event(webhook_url(live_server), paid, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    row = one_event(paid["id"])
    assert row.status == "failed"
    emulator.clear_faults()

    assert processing.replay_event(row.id, root.id) == "processed"
    assert reload(invoice).status == InvoiceStatus.PAID
    row = one_event(paid["id"])
    assert (row.status, row.attempts, row.last_error) == ("processed", 2, None)
    [audit] = db.session.scalars(select(AuditLog)).all()
    assert (audit.actor_user_id, audit.action, audit.tenant_id) == (root.id, "webhook.replay", tenant.id)
    assert audit.details["previous_status"] == "failed" and audit.details["stripe_event_id"] == paid["id"]
    assert "GatewayError" in audit.details["previous_error"]
    # Replaying a processed event is harmless: the state is re-read and nothing changes.
    assert processing.replay_event(row.id, root.id) == "processed"
    assert reload(invoice).status == InvoiceStatus.PAID
    assert db.session.scalar(select(func.count()).select_from(AuditLog)) == 2
    with pytest.raises(LookupError):
        processing.replay_event(999999, root.id)


def test_replay_refuses_an_event_being_processed(app, plans):
    db.session.add(WebhookEvent(stripe_event_id="evt_busy", type="invoice.paid", payload={}, status="processing",
                                attempts=1, processed_at=utcnow()))
    db.session.commit()
    with pytest.raises(ValueError):
        processing.replay_event(one_event("evt_busy").id, None)


def test_a_stripe_object_we_know_but_stripe_does_not_fails_visibly(app, plans, emulator, live_server):
    tenant, invoice = charged()
    db.session.execute(update(Invoice).where(Invoice.id == invoice.id)
                       .values(status="open", stripe_invoice_id="in_vanished"))
    db.session.commit()
    event = make_event("invoice.paid", {"id": "in_vanished", "object": "invoice", "status": "paid"})
    post_event(webhook_url(live_server), event, app.config["STRIPE_WEBHOOK_SECRET"])
    run_jobs()
    row = one_event(event["id"])
    assert row.status == "failed" and "in_vanished" in row.last_error
    assert reload(invoice).status == InvoiceStatus.OPEN


def test_cli_replays_an_event_and_refuses_an_unknown_one(app, plans, live_server):
    event = make_event("customer.subscription.created", {"id": "sub_1", "object": "subscription"})
    post_event(webhook_url(live_server), event, app.config["STRIPE_WEBHOOK_SECRET"])
    row = one_event(event["id"])
    result = app.test_cli_runner().invoke(args=["billing", "replay-webhook", str(row.id)])
    assert result.exit_code == 0 and "ignored" in result.output
    assert [a.action for a in db.session.scalars(select(AuditLog))] == ["webhook.replay"]
    missing = app.test_cli_runner().invoke(args=["billing", "replay-webhook", "424242"])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_a_backlog_of_events_for_one_invoice_needs_one_stripe_read(app, plans, emulator, live_server):
    """Events created before our last re-read are already reflected: no second read of the same invoice."""
    tenant = tenant_with_card(created_at=utc(2026, 1, 1))
    invoice = open_invoice_in_stripe(tenant, 2026, 9, now=utcnow())
    url = f"{live_server}/webhooks/stripe"
    secret = app.config["STRIPE_WEBHOOK_SECRET"]
    old = int(time.time()) - 120  # a backlog: these events were created two minutes ago
    obj = {"id": invoice.stripe_invoice_id, "object": "invoice"}
    for kind in ("invoice.finalized", "invoice.paid", "invoice.payment_succeeded"):
        assert post_event(url, make_event(kind, obj, created=old), secret).status_code == 200

    def reads():
        return sum(1 for r in emulator.requests()
                   if r["method"] == "GET" and r["path"] == f"/v1/invoices/{invoice.stripe_invoice_id}")

    before = reads()
    run_jobs(("webhooks",))
    assert reads() - before == 1
    assert {e.status for e in stored_events()} == {"processed"}
    # A new event (created after that read) is read again: its state may be newer.
    assert post_event(url, make_event("invoice.finalized", obj), secret).status_code == 200
    run_jobs(("webhooks",))
    assert reads() - before == 2
