"""Helpers for the webhook tests: signed deliveries over HTTP, the emulator pointed at the live app, stored rows."""
from __future__ import annotations

import itertools
import json
import time
from datetime import date

import requests
from stripe_emulator.webhooks import signature_header

from app.extensions import db
from app.models import OutboxEmail, WebhookEvent

_ids = itertools.count(1)


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


def month_before(day: date, n: int) -> tuple[int, int]:
    y, m = divmod(day.year * 12 + day.month - 1 - n, 12)
    return y, m + 1
