"""The webhook endpoint in front of Flask: the contract's answers for odd requests, lost connections, SQLite."""
from __future__ import annotations

import socket
from urllib.parse import urlsplit

from sqlalchemy import text

from app.extensions import db
from app.services.webhooks import intake
from app.webhooks.endpoint import MAX_BODY
from tests.support.config import base_config
from tests.support.queues import run_jobs
from tests.webhook_support import http, make_event, post_event, signed, stored_events


def url_of(live_server: str) -> str:
    return f"{live_server}/webhooks/stripe"


def an_event(n: int = 1) -> dict:
    return make_event("invoice.paid", {"id": f"in_endpoint_{n}", "object": "invoice", "customer": "cus_nobody"})


def test_answers_carry_json_and_protective_headers(app, live_server):
    resp = post_event(url_of(live_server), an_event(), app.config["STRIPE_WEBHOOK_SECRET"])
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_an_oversized_body_is_413_and_nothing_is_stored(app, live_server):
    event = an_event()
    event["data"]["object"]["description"] = "x" * MAX_BODY
    body, headers = signed(event, app.config["STRIPE_WEBHOOK_SECRET"])
    resp = http().post(url_of(live_server), data=body, headers=headers, timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    assert stored_events() == []


def test_a_body_shorter_than_its_content_length_is_400_and_nothing_is_stored(app, live_server):
    body, headers = signed(an_event(), app.config["STRIPE_WEBHOOK_SECRET"])
    parts = urlsplit(live_server)
    request = (f"POST /webhooks/stripe HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Stripe-Signature: {headers['Stripe-Signature']}\r\nContent-Length: {len(body) + 100}\r\n"
               "Connection: close\r\n\r\n").encode() + body
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the client gives up: the promised bytes never come
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b'"code": "bad_request"' in answer
    assert stored_events() == []


def test_a_connection_the_database_dropped_is_replaced_and_the_delivery_stored(app, live_server):
    url, secret = url_of(live_server), app.config["STRIPE_WEBHOOK_SECRET"]
    assert post_event(url, an_event(1), secret).status_code == 200
    # PostgreSQL restarts or an idle timeout ends the intake's kept connection(s).
    killed = db.session.scalar(text(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
        "where query like 'INSERT INTO webhook_events%' and pid <> pg_backend_pid()"))
    db.session.rollback()
    assert killed >= 1
    resp = post_event(url, an_event(2), secret)
    assert resp.status_code == 200 and resp.json()["duplicate"] is False
    assert [e.object_id for e in stored_events()] == ["in_endpoint_1", "in_endpoint_2"]


def test_an_unreachable_database_is_500_so_stripe_delivers_again(redis_url):
    from app import create_app

    dead = create_app(base_config("postgresql+psycopg://postgres@127.0.0.1:9/nowhere", redis_url))
    body, headers = signed(an_event(), dead.config["STRIPE_WEBHOOK_SECRET"])
    resp = dead.test_client().post("/webhooks/stripe", data=body, headers=headers)
    assert resp.status_code == 500 and resp.get_json()["error"]["code"] == "internal_error"


def test_the_embedded_sqlite_database_stores_each_event_once_and_drains_it(tmp_path, redis_url):
    import redis as redis_lib
    from flask_migrate import upgrade

    from app import create_app

    lite = create_app(base_config(f"sqlite:///{tmp_path / 'lite.db'}", redis_url))
    try:
        with lite.app_context():
            upgrade()
        assert isinstance(intake.for_app(lite).store, intake.CoreEventStore)
        event = an_event()
        body, headers = signed(event, lite.config["STRIPE_WEBHOOK_SECRET"])
        client = lite.test_client()
        first = client.post("/webhooks/stripe", data=body, headers=headers)
        again = client.post("/webhooks/stripe", data=body, headers=headers)
        assert first.status_code == again.status_code == 200
        assert (first.get_json()["duplicate"], again.get_json()["duplicate"]) == (False, True)
        with lite.app_context():
            run_jobs()  # the drainer the first delivery woke
            rows = db.session.execute(text("select stripe_event_id, status, attempts from webhook_events")).all()
            db.session.remove()
            db.engine.dispose()
        assert rows == [(event["id"], "ignored", 1)]  # an invoice we do not have: recorded, processed once
    finally:
        redis_lib.Redis.from_url(redis_url).flushdb()  # its drainer flags: only the `app` fixture flushes Redis
