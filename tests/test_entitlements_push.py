"""Push: every change of a tenant's entitlements reaches each endpoint, signed, in order, retried until a 2xx."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import create_engine, func, select, text, update

from app.extensions import db
from app.models import EntitlementEvent, IntegrationDelivery, Tenant
from app.services.clock import utcnow
from app.services.dunning import run_pass
from app.services.integrations import add_endpoint, deliver_due, replay_delivery, set_endpoint_enabled
from tests.factories import at, make_invoice, make_root, make_tenant, stripe_backed_invoice
from tests.support.queues import run_jobs
from tests.support.services import free_port

SECRET = "whsec_push_test_secret"
ISSUE = date(2026, 3, 2)


class Receiver:
    """A real HTTP receiver on a free port: records each POST and answers the next queued status (200 after)."""

    def __init__(self):
        self.port = free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/servicepro"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[dict]:
        return [json.loads(body) for _headers, body in self.received]


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def endpoint(app, plans, receiver):
    return add_endpoint(receiver.url, SECRET)[0]


def signed_ok(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    parts = dict(p.split("=", 1) for p in headers["ServicePro-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(parts["v1"], expected)


def deliveries() -> list[IntegrationDelivery]:
    db.session.expire_all()
    return list(db.session.scalars(select(IntegrationDelivery).order_by(IntegrationDelivery.id)))


def overdue_tenant(**fields) -> Tenant:
    tenant = make_tenant(**fields)
    make_invoice(tenant, ISSUE)
    return tenant


def test_a_suspension_is_pushed_to_every_endpoint_signed_with_the_contracts_fields(app, endpoint, receiver):
    second = Receiver().start()
    try:
        add_endpoint(second.url, "whsec_other_secret")
        tenant = overdue_tenant()
        run_pass(ISSUE + timedelta(days=31))  # the nightly pass moves stages with one set-based UPDATE
        assert deliver_due().delivered == 2
        for r, secret in ((receiver, SECRET), (second, "whsec_other_secret")):
            [(headers, body)] = r.received
            assert headers["Content-Type"] == "application/json" and signed_ok(headers, body, secret)
            event = json.loads(body)
            assert set(event) == {"id", "type", "created", "data"} and event["type"] == "entitlements.updated"
            assert event["data"] | {"updated_at": None} == {
                "tenant_id": tenant.id, "telephony": False, "sms_outbound": False, "admin_access": "full",
                "dunning_stage": "suspended", "updated_at": None}
            assert abs(event["created"] - utcnow().timestamp()) < 60
        assert receiver.events()[0]["id"] == second.events()[0]["id"]  # one event, delivered to each endpoint
        # What the API answers now is what was pushed.
        from app.services.entitlements import read_one

        assert read_one(tenant.id) == receiver.events()[0]["data"]
        # Nothing changed since: nothing more is sent.
        run_pass(ISSUE + timedelta(days=32))
        assert deliver_due().delivered == 0 and len(receiver.received) == 1
    finally:
        second.stop()


def test_a_receiver_outage_is_retried_with_back_off_and_the_same_event_id(app, endpoint, receiver):
    tenant = overdue_tenant()
    receiver.stop()  # down: connection refused
    run_pass(ISSUE + timedelta(days=31))
    t0 = utcnow()
    run = deliver_due(t0)
    assert (run.delivered, run.failed) == (0, 1)
    [d] = deliveries()
    assert d.status == "pending" and d.attempts == 1 and d.next_attempt_at == t0 + timedelta(seconds=10)
    assert "ConnectionError" in d.last_error

    # A second change while the first is still undelivered waits behind it (order is kept).
    db.session.get(Tenant, tenant.id).status = "disabled"
    db.session.commit()
    assert deliver_due(t0 + timedelta(seconds=5)).failed == 0  # backing off: not even tried

    receiver.start()
    receiver.answers = [503]  # up, but failing once more
    run = deliver_due(t0 + timedelta(seconds=11))
    assert (run.delivered, run.failed) == (0, 1)
    first, second = deliveries()
    assert first.attempts == 2 and first.last_status_code == 503 and second.attempts == 0
    assert first.next_attempt_at == t0 + timedelta(seconds=11 + 20)  # 10 s, doubling
    assert deliver_due(t0 + timedelta(seconds=30)).delivered == 0

    assert deliver_due(t0 + timedelta(seconds=31)).delivered == 2
    events = receiver.events()
    assert [e["data"]["dunning_stage"] for e in events] == ["suspended", "suspended", "suspended"]
    assert [e["data"]["admin_access"] for e in events] == ["full", "full", "billing_only"]
    assert events[0]["id"] == events[1]["id"] == first.event_id != events[2]["id"]
    assert receiver.received[0][1] == receiver.received[1][1]  # the very same body on every attempt
    assert all(signed_ok(h, b) for h, b in receiver.received)
    assert [d.status for d in deliveries()] == ["delivered", "delivered"]


def test_restoration_after_a_payment_is_pushed(app, endpoint, receiver, emulator):
    from app.services.admin_actions import retry_payment_now

    root = make_root()
    tenant, inv = stripe_backed_invoice(ISSUE, card="pm_card_visa")
    run_pass(ISSUE + timedelta(days=31))
    assert deliver_due().delivered == 1
    assert receiver.events()[-1]["data"]["telephony"] is False

    result = retry_payment_now(inv.id, root, "card works again", inline=True, now=at(ISSUE + timedelta(days=31), 15))
    assert result.detail == "succeeded"
    assert deliver_due().delivered == 1
    restored = receiver.events()[-1]["data"]
    assert (restored["tenant_id"], restored["telephony"], restored["sms_outbound"], restored["dunning_stage"]) == (
        tenant.id, True, True, "ok")


def test_every_kind_of_change_is_announced_once_and_nothing_else(app, endpoint, receiver):
    from app.services.admin_actions import exempt_tenant
    from app.services.payments import flag_billing_error

    root = make_root()
    a, b, c = overdue_tenant(), overdue_tenant(), make_tenant()
    run_pass(ISSUE + timedelta(days=46))  # a and b: restricted
    exempt_tenant(a.id, ISSUE + timedelta(days=60), root, "payment plan", now=at(ISSUE + timedelta(days=46)))
    tenant_c = db.session.get(Tenant, c.id)
    tenant_c.status = "disabled"  # tenant disabled (an ORM change)
    db.session.commit()
    db.session.get(Tenant, b.id).status = "disabled"  # restricted → disabled: nothing a service sees changes
    db.session.commit()
    # Changes no service can see: no event.
    flag_billing_error(c.id, "card expired", utcnow())
    db.session.execute(update(Tenant).where(Tenant.id == a.id).values(name="Renamed Co"))
    db.session.commit()
    run_pass(ISSUE + timedelta(days=47))

    deliver_due()
    seen = [(e["data"]["tenant_id"], e["data"]["dunning_stage"], e["data"]["telephony"], e["data"]["admin_access"])
            for e in receiver.events()]
    assert sorted(seen[:2]) == sorted([(a.id, "restricted", False, "billing_only"),
                                       (b.id, "restricted", False, "billing_only")])
    assert seen[2:] == [(a.id, "ok", True, "full"), (c.id, "ok", False, "billing_only")]
    assert len({e["id"] for e in receiver.events()}) == 4


def test_a_rolled_back_change_is_never_announced(app, endpoint, receiver):
    tenant = make_tenant()
    db.session.get(Tenant, tenant.id).dunning_stage = "suspended"
    db.session.flush()
    db.session.rollback()
    db.session.execute(update(Tenant).where(Tenant.id == tenant.id).values(dunning_stage="restricted"))
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(EntitlementEvent)) == 0
    assert deliver_due().delivered == 0 and receiver.received == []


def test_a_commit_wakes_the_deliverer_job_on_the_default_queue(app, endpoint, receiver):
    from app.extensions import rq

    assert rq.queue("default").job_ids == []
    tenant = make_tenant()
    db.session.get(Tenant, tenant.id).dunning_stage = "suspended"
    db.session.commit()
    assert rq.queue("default").job_ids == ["entitlements-deliver"]
    run_jobs(("default",))
    assert [e["data"]["tenant_id"] for e in receiver.events()] == [tenant.id]


def test_changes_made_behind_the_orms_back_are_announced_by_the_periodic_sweep(app, endpoint, receiver, migrated):
    from app.integrations.jobs import sweep_entitlements

    tenant = make_tenant()
    engine = create_engine(migrated)  # as psql would: no session, no hooks
    with engine.begin() as conn:
        conn.execute(text("UPDATE tenants SET dunning_stage = 'suspended' WHERE id = :id"), {"id": tenant.id})
    engine.dispose()
    assert receiver.received == []
    assert sweep_entitlements() == {"announced": 1, "delivered": 1, "failed": 0}
    assert receiver.events()[0]["data"]["telephony"] is False
    assert sweep_entitlements()["announced"] == 0


def test_replay_sends_the_same_event_again_and_a_disabled_endpoint_waits(app, endpoint, receiver):
    tenant = make_tenant()
    db.session.get(Tenant, tenant.id).dunning_stage = "suspended"
    db.session.commit()
    deliver_due()
    [d] = deliveries()
    replay_delivery(d.id)
    assert deliver_due().delivered == 1
    assert receiver.received[0][1] == receiver.received[1][1]

    set_endpoint_enabled(endpoint.id, False)
    db.session.get(Tenant, tenant.id).dunning_stage = "ok"  # while disabled: no delivery is queued for it
    db.session.commit()
    assert len(deliveries()) == 1
    replay_delivery(d.id)  # queued, but the endpoint is disabled: it waits
    assert deliver_due().delivered == 0 and len(receiver.received) == 2
    set_endpoint_enabled(endpoint.id, True)
    assert deliver_due().delivered == 1 and len(receiver.received) == 3


def test_flask_integrations_deliver_announces_and_sends_what_is_due(app, endpoint, receiver, migrated):
    tenant = make_tenant()
    engine = create_engine(migrated)
    with engine.begin() as conn:
        conn.execute(text("UPDATE tenants SET status = 'disabled' WHERE id = :id"), {"id": tenant.id})
    engine.dispose()
    result = app.test_cli_runner().invoke(args=["integrations", "deliver"])
    assert result.exit_code == 0, result.output
    assert "announced 1 changes; delivered 1, failed 0" in result.output
    assert receiver.events()[0]["data"]["admin_access"] == "billing_only"
