"""Drainers: a delivery wakes one, drainers share a backlog, process each event once and never leave one behind."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.extensions import db, rq
from app.models import WebhookEvent, utcnow
from app.services import stuck_rows
from app.services.webhooks import intake, processing
from tests.support.concurrency import run_concurrently
from tests.support.queues import run_jobs
from tests.webhook_support import http, make_event, post_event, stored_events

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")


def flags() -> set[str]:
    return {k.decode() for k in rq.connection.keys("servicepro:webhooks:drainer:*")}


def drainer_jobs() -> list[str]:
    return [j for j in rq.queue("webhooks").get_job_ids() if j.startswith("webhook-drain-")]


def unknown_invoice_event(n: int) -> dict:
    # An invoice we do not know: processed without Stripe ("ignored"), which keeps these tests about the drainers.
    return make_event("invoice.paid", {"id": f"in_unknown_{n}", "object": "invoice", "customer": "cus_nobody"})


def pending_rows(n: int, *, age: timedelta = timedelta(0)) -> list[int]:
    """Store n pending events directly (as a delivery would, without waking anybody); return their row ids."""
    at = utcnow() - age
    rows = [WebhookEvent(stripe_event_id=f"evt_pending_{i}", type="invoice.paid", object_id=f"in_unknown_{i}",
                         payload=unknown_invoice_event(i), status="pending", received_at=at) for i in range(n)]
    db.session.add_all(rows)
    db.session.commit()
    return [r.id for r in rows]


def test_deliveries_wake_one_drainer_per_slot_and_the_drainers_process_everything_once(app, live_server):
    url, secret = f"{live_server}/webhooks/stripe", app.config["STRIPE_WEBHOOK_SECRET"]
    session = http()
    for n in range(10):
        assert post_event(url, unknown_invoice_event(n), secret, session=session).status_code == 200
    # Ten deliveries, four drainers started (one per slot); the other six found their drainer's flag set.
    assert len(drainer_jobs()) == processing.DRAINERS
    assert len(flags()) == processing.DRAINERS
    run_jobs()
    rows = stored_events()
    assert [(r.status, r.attempts) for r in rows] == [("ignored", 1)] * 10
    assert flags() == set()  # every drainer let go of its slot when nothing was left
    assert drainer_jobs() == []


def test_concurrent_drainers_share_a_backlog_and_claim_each_event_once(app):
    ids = pending_rows(30)
    handled = run_concurrently(processing.drain, 3, app=app)  # one drainer per slot
    assert sum(handled) == 30
    assert {(r.id, r.status, r.attempts) for r in stored_events()} == {(i, "ignored", 1) for i in ids}


def test_an_event_stored_just_as_the_drainer_stops_is_still_processed(app, monkeypatch):
    # The race the release protocol closes: the drainer's last claim found nothing, then an event was stored
    # whose delivery saw the drainer's flag still set and started nobody. The drainer looks once more after
    # letting go of its slot, takes the slot back and processes it.
    [row_id] = pending_rows(1)
    rq.connection.set("servicepro:webhooks:drainer:1", "1")  # the delivery found this drainer running
    real_claim = processing._claim_next
    calls = []

    def claim_missing_the_new_row(now):
        calls.append(now)
        return None if len(calls) == 1 else real_claim(now)

    monkeypatch.setattr(processing, "_claim_next", claim_missing_the_new_row)
    assert processing.drain(1) == 1
    [row] = stored_events()
    assert (row.id, row.status, row.attempts) == (row_id, "ignored", 1)
    assert flags() == set()


def test_a_drainer_leaves_the_rest_to_another_when_it_took_the_slot_meanwhile(app, monkeypatch):
    pending_rows(1)
    monkeypatch.setattr(processing, "_claim_next", lambda now: None)
    original_delete = rq.connection.delete

    def delete_then_someone_wakes(*keys):
        result = original_delete(*keys)
        rq.connection.set("servicepro:webhooks:drainer:0", "1")  # a delivery started a new drainer just now
        return result

    monkeypatch.setattr(rq.connection, "delete", delete_then_someone_wakes)
    assert processing.drain(0) == 0
    assert stored_events()[0].status == "pending"  # left to the new drainer, not processed twice


def test_a_drainer_past_its_budget_hands_the_slot_to_a_fresh_job(app):
    pending_rows(3)
    rq.connection.set("servicepro:webhooks:drainer:2", "1")
    assert processing.drain(2, budget_s=0) == 1
    [successor] = drainer_jobs()
    assert successor.startswith("webhook-drain-2-next-")
    assert flags() == {"servicepro:webhooks:drainer:2"}  # kept for the successor: deliveries start nobody new
    run_jobs()
    assert [r.status for r in stored_events()] == ["ignored"] * 3
    assert flags() == set()


def test_the_stuck_rows_pass_wakes_the_drainers_for_events_left_pending(app):
    # E.g. Redis was down when they were delivered: stored, answered 200, but nobody was woken.
    pending_rows(2, age=timedelta(minutes=10))
    result = stuck_rows.redrive_stuck_rows()
    assert result.webhooks == 2
    assert len(drainer_jobs()) == processing.DRAINERS
    run_jobs()
    assert [r.status for r in stored_events()] == ["ignored", "ignored"]


def test_a_delivery_while_redis_is_down_is_stored_and_answered_200(app, live_server, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    receiver = intake.for_app(app)

    def redis_down(*args, **kwargs):
        raise RedisConnectionError("Redis is restarting")

    monkeypatch.setattr(receiver.redis, "set", redis_down)
    resp = post_event(f"{live_server}/webhooks/stripe", unknown_invoice_event(1), app.config["STRIPE_WEBHOOK_SECRET"])
    assert resp.status_code == 200 and resp.json() == {"received": True, "duplicate": False}
    [row] = stored_events()
    assert row.status == "pending" and drainer_jobs() == []
