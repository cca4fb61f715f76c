"""Helpers for the webhook tests: signed deliveries over HTTP, the emulator pointed at the live app, stored rows."""
from __future__ import annotations

import itertools
import json
import time
from datetime import date

import pytest
import requests
from stripe_emulator.webhooks import signature_header

from app.extensions import db
from app.models import Invoice, OutboxEmail, Tenant, WebhookEvent
from app.services import invoicing
from app.services.customers import ensure_customer

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def fast_stripe_retries(monkeypatch):
    """stripe-python's network retries without their real back-off (a Stripe outage test waits less)."""
    from stripe._http_client import HTTPClient

    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.02)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.1)


@pytest.fixture
def hook(app, emulator, live_server):
    """Call to make the emulator deliver its events to the running app's /webhooks/stripe (app's secret)."""
    url = f"{live_server}/webhooks/stripe"

    def enable() -> str:
        emulator.set_webhook(url, app.config["STRIPE_WEBHOOK_SECRET"], backoff_initial=0.05, backoff_max=0.2)
        return url

    try:
        yield enable
    finally:
        emulator.set_webhook(None)


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through an environment proxy
    return session


def make_event(type_: str, obj: dict, *, event_id: str | None = None, previous: dict | None = None,
               created: int | None = None) -> dict:
    """A Stripe-shaped event (what the emulator or Stripe would send)."""
    data: dict = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id or f"evt_test_{next(_ids):06d}_{int(time.time() * 1000)}", "object": "event",
            "api_version": "2026-10-28.endive", "created": created or int(time.time()), "data": data,
            "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
            "type": type_}


def signed(event: dict | str, secret: str, *, timestamp: int | None = None) -> tuple[bytes, dict]:
    """(raw body, headers) of a delivery signed like Stripe signs it."""
    payload = event if isinstance(event, str) else json.dumps(event, indent=2)
    headers = {"Content-Type": "application/json; charset=utf-8",
               "Stripe-Signature": signature_header(payload, secret, timestamp)}
    return payload.encode(), headers


def post_event(url: str, event: dict | str, secret: str, *, timestamp: int | None = None,
               session: requests.Session | None = None) -> requests.Response:
    body, headers = signed(event, secret, timestamp=timestamp)
    return (session or http()).post(url, data=body, headers=headers, timeout=30)


def stored_events() -> list[WebhookEvent]:
    db.session.expire_all()
    return list(db.session.scalars(db.select(WebhookEvent).order_by(WebhookEvent.id)))


def one_event(stripe_event_id: str) -> WebhookEvent:
    db.session.expire_all()
    return db.session.scalars(db.select(WebhookEvent).where(WebhookEvent.stripe_event_id == stripe_event_id)).one()


def reload(obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


def outbox(kind: str | None = None) -> list[OutboxEmail]:
    db.session.expire_all()
    stmt = db.select(OutboxEmail).order_by(OutboxEmail.id)
    if kind:
        stmt = stmt.where(OutboxEmail.kind == kind)
    return list(db.session.scalars(stmt))


def open_invoice_in_stripe(tenant: Tenant, year: int, month: int, *, now) -> Invoice:
    """Generate the tenant's invoice for a month and finalize it in Stripe WITHOUT charging it (open on both sides)."""
    customer_id = tenant.stripe_customer_id or ensure_customer(tenant.id)
    invoice = invoicing.generate_invoice(tenant.id, year, month, now=now)
    invoicing.finalize_in_stripe(invoice, customer_id, now=now)
    db.session.refresh(invoice)
    return invoice


def month_before(day: date, n: int) -> tuple[int, int]:
    y, m = divmod(day.year * 12 + day.month - 1 - n, 12)
    return y, m + 1
