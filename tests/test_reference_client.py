"""The reference client (clients/servicepro_entitlements.py) against the running app over real HTTP."""
from __future__ import annotations

import json
import threading
import time
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.extensions import db
from app.models import Tenant
from app.services.integrations import add_endpoint, create_token, deliver_due, sign
from clients.servicepro_entitlements import EntitlementsClient, SignatureError, UnknownTenant, verify_signature
from tests.factories import make_tenant
from tests.support.services import free_port

SECRET = "whsec_reference_client"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def service(app, plans, live_server):
    """The app's base URL and a service token with entitlements:read."""
    return live_server, create_token("voice", ["entitlements:read"])[1]


def set_stage(tenant_id: int, stage: str) -> None:
    db.session.get(Tenant, tenant_id).dunning_stage = stage
    db.session.commit()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_reads_once_then_revalidates_cheaply_and_sees_a_suspension(service):
    url, token = service
    tenant = make_tenant()
    clock = Clock()
    client = EntitlementsClient(url, token, max_age=30, clock=clock)

    first = client.get(tenant.id)
    assert (first.source, first.telephony, first.sms_outbound, client.last_status) == ("fresh", True, True, 200)
    client.last_status = None
    clock.t += 10
    assert client.get(tenant.id).source == "cache" and client.last_status is None  # no request at all
    clock.t += 25
    again = client.get(tenant.id)
    assert (again.source, again.telephony, client.last_status) == ("revalidated", True, 304)

    set_stage(tenant.id, "suspended")
    clock.t += 31
    now = client.get(tenant.id)
    assert (now.source, now.telephony, now.sms_outbound, now.dunning_stage) == ("fresh", False, False, "suspended")
    assert client.can_call(tenant.id) is False and client.can_send_sms(tenant.id) is False


def test_unreachable_servicepro_serves_the_last_answer_then_fails_open_or_closed(service):
    url, token = service
    suspended = make_tenant(dunning_stage="suspended")
    paying = make_tenant()
    clock = Clock()
    client = EntitlementsClient(url, token, failure_mode="open", max_age=30, max_stale=600, clock=clock)
    assert client.get(suspended.id).telephony is False and client.get(paying.id).telephony is True

    client.base_url = dead_url()  # ServicePro goes away
    clock.t += 100
    stale = client.get(suspended.id)
    assert (stale.source, stale.telephony) == ("stale", False)  # a suspended tenant stays suspended
    assert client.get(paying.id).telephony is True
    clock.t += 600
    assert client.get(suspended.id).source == "fail_open" and client.can_call(suspended.id) is True

    closed = EntitlementsClient(dead_url(), token, failure_mode="closed", clock=clock)
    answer = closed.get(paying.id)
    assert (answer.source, answer.telephony, answer.sms_outbound) == ("fail_closed", False, False)

    # A refused token is no answer either: the policy applies (and it is logged).
    refused = EntitlementsClient(url, "sp_svc_revoked-or-mistyped", failure_mode="closed", clock=clock)
    assert refused.can_call(paying.id) is False and refused.last_status == 401
    with pytest.raises(ValueError):
        EntitlementsClient(url, token, failure_mode="sometimes")


def test_an_unknown_tenant_is_never_served(service):
    url, token = service
    make_tenant()
    client = EntitlementsClient(url, token, failure_mode="open")
    with pytest.raises(UnknownTenant):
        client.get(987654)
    assert client.can_call(987654) is False and client.can_send_sms(987654) is False


class PushReceiver:
    """The receiving service's webhook: the raw body through client.handle_push; 400 on a bad signature."""

    def __init__(self, client: EntitlementsClient):
        self.port, self.client, self.answers = free_port(), client, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    receiver.client.handle_push(body, self.headers.get("ServicePro-Signature"), SECRET)
                    status = 200
                except SignatureError:
                    status = 400
                receiver.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_push_updates_the_cache_at_once_without_polling(service):
    url, token = service
    tenant = make_tenant()
    clock = Clock()
    client = EntitlementsClient(url, token, max_age=3600, clock=clock)
    assert client.can_call(tenant.id) is True
    receiver = PushReceiver(client)
    try:
        add_endpoint(f"http://127.0.0.1:{receiver.port}/servicepro", SECRET)
        set_stage(tenant.id, "suspended")
        assert deliver_due().delivered == 1 and receiver.answers == [200]
        client.last_status = None
        pushed = client.get(tenant.id)  # well within max_age: no request, the push already landed
        assert (pushed.source, pushed.telephony, client.last_status) == ("push", False, None)

        set_stage(tenant.id, "ok")  # restored: pushed the same way
        assert deliver_due().delivered == 1
        assert client.can_call(tenant.id) is True
    finally:
        receiver.stop()


def test_signatures_are_checked_in_constant_time_within_a_tolerance():
    body = json.dumps({"id": "evt_1", "type": "entitlements.updated", "created": 1,
                       "data": {"tenant_id": 7, "telephony": False, "sms_outbound": False, "admin_access": "full",
                                "dunning_stage": "suspended", "updated_at": "2026-06-15T02:00:00.000000Z"}}).encode()
    now = int(time.time())
    header = sign(SECRET, now, body)  # exactly what the app sends
    assert verify_signature(body, header, SECRET)["id"] == "evt_1"
    rotated = f"t={now},v1={'0' * 64},{header.split(',')[1]}"  # old and new secret during a rotation
    assert verify_signature(body, rotated, SECRET)["data"]["tenant_id"] == 7
    for bad_body, bad_header, secret in (
            (body.replace(b"false", b"true", 1), header, SECRET),  # tampered
            (body, header, "whsec_someone_else"),  # wrong secret
            (body, sign(SECRET, now - 301, body), SECRET),  # replayed later
            (body, sign(SECRET, now + 301, body), SECRET),  # from the future
            (body, None, SECRET), (body, "v1=abc", SECRET), (body, "t=soon,v1=abc", SECRET)):
        with pytest.raises(SignatureError):
            verify_signature(bad_body, bad_header, secret)
    assert verify_signature(body, sign(SECRET, now - 3000, body), SECRET, tolerance=3600)["id"] == "evt_1"
    assert verify_signature(body, header, ["whsec_new_one", SECRET])["id"] == "evt_1"  # two endpoints, rotating


def test_a_late_retry_of_an_older_event_never_undoes_a_newer_state(service):
    url, token = service
    client = EntitlementsClient(url, token, clock=Clock())

    def event(stage: str, updated_at: str) -> tuple[bytes, str]:
        body = json.dumps({"id": f"evt_{stage}", "type": "entitlements.updated", "created": int(time.time()),
                           "data": {"tenant_id": 5, "telephony": stage == "ok", "sms_outbound": stage == "ok",
                                    "admin_access": "full", "dunning_stage": stage, "updated_at": updated_at}}).encode()
        return body, sign(SECRET, int(time.time()), body)

    client.handle_push(*event("ok", "2026-06-16T09:00:00.000000Z"), SECRET)
    client.handle_push(*event("suspended", "2026-06-15T02:00:00.000000Z"), SECRET)  # retried late
    assert client.get(5).dunning_stage == "ok"


def test_iter_all_walks_every_page(service):
    url, token = service
    ids = {make_tenant().id for _ in range(5)}
    make_tenant(dunning_stage="restricted")
    client = EntitlementsClient(url, token)
    seen = list(client.iter_all(limit=2))
    assert len(seen) == 6 and ids < {e.tenant_id for e in seen}
    assert [e.admin_access for e in seen if e.dunning_stage == "restricted"] == ["billing_only"]
    later = (date.today() + timedelta(days=1)).isoformat() + "T00:00:00Z"
    assert list(client.iter_all(changed_since=later)) == []
