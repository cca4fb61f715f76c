"""Drainers in batches: types we never handle cost nothing, paid invoices need no more Stripe reads, dead drainers'
events come back within a minute, and a claim never takes more than it asked for."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from app.extensions import db, rq
from app.models import InvoiceStatus, WebhookEvent, utcnow
from app.services import invoicing, stuck_rows
from app.services.webhooks import processing
from app.services.webhooks.handlers import HANDLERS
from tests.billing_support import invoices_of
from tests.factories import tenant_with_card, utc
from tests.support.queues import run_jobs
from tests.webhook_support import make_event, one_event, outbox, post_event, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)


def drainer_jobs() -> list[str]:
    return [j for j in rq.queue("webhooks").get_job_ids() if j.startswith("webhook-drain-")]


def stripe_reads(emulator, stripe_invoice_id: str) -> int:
    return sum(1 for r in emulator.requests()
               if r["method"] == "GET" and r["path"] == f"/v1/invoices/{stripe_invoice_id}")


def pending(n: int, *, prefix: str = "evt_batch") -> list[int]:
    """n pending events for invoices we do not have (decided without Stripe), stored as a delivery would."""
    rows = [WebhookEvent(stripe_event_id=f"{prefix}_{i}", type="invoice.paid", object_id=f"in_nobody_{i}",
                         payload=make_event("invoice.paid", {"id": f"in_nobody_{i}", "object": "invoice"}),
                         status="pending", received_at=utcnow()) for i in range(n)]
    db.session.add_all(rows)
    db.session.commit()
    return [r.id for r in rows]


def test_a_type_the_app_never_handles_is_recorded_as_ignored_at_receipt_and_wakes_nobody(app, live_server):
    item = {"id": "ii_1", "object": "invoiceitem", "amount": 2900, "description": "Starter plan",
            "customer": "cus_x", "metadata": {"tenant_id": "1"}}
    event = make_event("invoiceitem.created", item)
    resp = post_event(f"{live_server}/webhooks/stripe", event, app.config["STRIPE_WEBHOOK_SECRET"])
    assert resp.status_code == 200 and resp.json() == {"received": True, "duplicate": False}
    row = one_event(event["id"])
    assert (row.status, row.attempts, row.object_id) == ("ignored", 1, "ii_1")
    assert "not handled" in row.last_error and row.processed_at is not None
    # Only the envelope is kept (Stripe keeps the event itself): no amounts, no metadata.
    assert row.payload["type"] == "invoiceitem.created"
    assert row.payload["data"] == {"object": {"id": "ii_1", "object": "invoiceitem"}}
    assert drainer_jobs() == [] and rq.connection.keys("servicepro:webhooks:drainer:*") == []
    again = post_event(f"{live_server}/webhooks/stripe", event, app.config["STRIPE_WEBHOOK_SECRET"])
    assert again.json() == {"received": True, "duplicate": True}


def test_once_a_paid_invoice_was_read_its_later_events_need_no_stripe_request(app, plans, emulator, live_server):
    tenant = tenant_with_card("pm_card_visa", created_at=utc(2026, 9, 1))
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [invoice] = invoices_of(tenant.id)
    assert invoice.status == InvoiceStatus.PAID
    url, secret = f"{live_server}/webhooks/stripe", app.config["STRIPE_WEBHOOK_SECRET"]
    [paid] = [e for e in emulator.events("invoice.paid") if e["data"]["object"]["id"] == invoice.stripe_invoice_id]
    before = stripe_reads(emulator, invoice.stripe_invoice_id)
    post_event(url, paid, secret)
    run_jobs(("webhooks",))
    assert stripe_reads(emulator, invoice.stripe_invoice_id) == before + 1  # read once: number, PDF, amounts
    # Newer events about it (created after that read) cannot change a paid invoice: no further reads.
    obj = dict(paid["data"]["object"])
    late = [make_event(kind, obj) for kind in ("invoice.payment_succeeded", "invoice.finalized",
                                               "invoice.payment_failed")]
    for event in late:
        assert post_event(url, event, secret).status_code == 200
    run_jobs(("webhooks",))
    assert stripe_reads(emulator, invoice.stripe_invoice_id) == before + 1
    rows = [one_event(e["id"]) for e in late]
    assert [(r.status, r.tenant_id, r.attempts) for r in rows] == [("processed", tenant.id, 1)] * 3
    assert rows[2].last_error == "stale: Stripe has the invoice paid"  # a late decline: no email
    assert outbox("payment_failed") == []
    assert invoices_of(tenant.id)[0].status == InvoiceStatus.PAID


def test_a_claim_takes_at_most_the_batch_it_asked_for(app):
    pending(20)
    with processing._drainer(0) as drainer:
        drainer.batch = 5
        claimed = processing._claim_next(utcnow())
        held = db.session.scalar(select(func.count()).where(WebhookEvent.status == "processing",
                                                            WebhookEvent.claimed_by == drainer.token))
        db.session.rollback()
        assert [len(claimed), held] == [5, 5]
        assert drainer.batch == 10  # a full claim: the next one may be twice as large
    # Stopping without recording them lets them go: pending again, for the next drainer.
    assert db.session.scalar(select(func.count()).where(WebhookEvent.status == "pending")) == 20


def test_events_held_by_a_drainer_that_died_are_processed_again_within_a_minute(app):
    dead, alive, spent = pending(3, prefix="evt_dead"), pending(2, prefix="evt_alive"), pending(1, prefix="evt_spent")
    claimed_at = utcnow() - timedelta(seconds=45)
    t = WebhookEvent.__table__

    def held_by(ids, token, attempts=1):
        db.session.execute(t.update().where(t.c.id.in_(ids)).values(
            status="processing", claimed_by=token, attempts=attempts, processed_at=claimed_at))

    held_by(dead, "drain-1-killed")  # SIGKILLed mid-batch: its lease lapsed
    held_by(alive, "drain-2-busy")  # still working on a slow batch: its lease is refreshed
    held_by(spent, "drain-3-killed", attempts=processing.MAX_ATTEMPTS)  # it killed the worker every time
    db.session.commit()
    rq.connection.set(processing._claim_lease("drain-2-busy"), "1", ex=10)

    result = stuck_rows.redrive_stuck_rows()
    assert result.webhooks == 3 and len(drainer_jobs()) == processing.DRAINERS
    run_jobs(("webhooks",))
    by_id = {r.id: r for r in stored_events()}
    assert [(by_id[i].status, by_id[i].attempts) for i in dead] == [("ignored", 2)] * 3
    assert [by_id[i].status for i in alive] == ["processing"] * 2  # not taken from a live drainer
    assert by_id[spent[0]].status == "failed" and "interrupted" in by_id[spent[0]].last_error


def test_a_drainer_carries_on_when_the_database_drops_its_connection(app, monkeypatch):
    ids = pending(40)
    real = processing._process_batch
    killed: list[int] = []

    def then_the_server_restarts(drainer, events, deadline):
        done = real(drainer, events, deadline)
        if not killed:  # the server ends the drainer's connection between two statements
            pid = drainer.conn.connection.dbapi_connection.info.backend_pid
            killed.append(db.session.scalar(text("select count(pg_terminate_backend(:pid))"), {"pid": pid}))
            db.session.rollback()
        return done

    monkeypatch.setattr(processing, "_process_batch", then_the_server_restarts)
    assert processing.drain(0) == 40
    assert killed == [1]
    rows = stored_events()
    assert {(r.id, r.status, r.attempts) for r in rows} == {(i, "ignored", 1) for i in ids}


def test_of_a_real_month_end_only_the_handled_types_are_left_to_process(app, plans, emulator, hook):
    tenant = tenant_with_card("pm_card_visa", created_at=utc(2026, 9, 1))
    hook()
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    assert emulator.flush_webhooks(30)
    rows = stored_events()
    assert {"invoice.created", "invoiceitem.created", "invoice.paid"} <= {r.type for r in rows}
    assert {r.type for r in rows if r.status == "pending"} <= set(HANDLERS)
    assert {r.status for r in rows if r.type not in HANDLERS} == {"ignored"}
    run_jobs()
    assert {r.status for r in stored_events()} <= {"processed", "ignored"}
    assert invoices_of(tenant.id)[0].status == InvoiceStatus.PAID
