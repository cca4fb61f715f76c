"""Intake: verify a delivery on its raw body, store it once, wake a drainer, answer — nothing decided here.

Called by the WSGI endpoint in front of Flask (app/webhooks/endpoint.py) without an app context: `for_app(app)`
binds the signing secret, the store and Redis once per app, so a delivery costs one INSERT and one Redis SET.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from flask import Flask
from sqlalchemy import Engine, bindparam, select
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite

from app import stripe_gateway as gateway
from app.extensions import db, rq
from app.models import Tenant, WebhookEvent, utcnow
from app.services.webhooks import processing
from app.services.webhooks.events import EventStatus
from app.services.webhooks.handlers import HANDLERS
from app.stripe_objects import customer_of


class InvalidEvent(ValueError):
    """A delivery that is not a genuine, well-formed Stripe event: answered 400, nothing stored."""

    def __init__(self, message: str, code: str = "invalid_signature"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Received:
    stripe_event_id: str
    type: str
    row_id: int | None  # None for a duplicate delivery
    queued: bool

    @property
    def duplicate(self) -> bool:
        return self.row_id is None


def for_app(app: Flask) -> "Intake":
    """The app's receiving side, built on first use (after a server forks its workers) and kept on the app."""
    found = app.extensions.get("webhook_intake")
    if found is None:
        with _INTAKE_LOCK:
            found = app.extensions.get("webhook_intake")
            if found is None:
                found = app.extensions["webhook_intake"] = Intake(app)
    return found


_INTAKE_LOCK = threading.Lock()


class Intake:
    """Receiving bound once per app: the signing secret, where events are stored, the queue that processes them.

    Built once so that a delivery pays for none of the app's per-request machinery: the webhook endpoint
    (app/webhooks/endpoint.py) calls it straight from WSGI, without an app context.
    """

    def __init__(self, app: Flask) -> None:
        self.secret = app.config.get("STRIPE_WEBHOOK_SECRET")
        self.drainers = processing.drainer_count(app)
        with app.app_context():
            engine = db.engine
            self.redis = rq.connection
        self.store = PgEventStore(engine) if engine.dialect.name == "postgresql" else CoreEventStore(engine)

    def receive(self, payload: bytes, signature: str | None, *, now: datetime | None = None) -> Received:
        """Verify a delivery on its raw body, store it once and queue its processing; InvalidEvent if not genuine."""
        if not self.secret:
            raise RuntimeError("STRIPE_WEBHOOK_SECRET is not configured: webhooks cannot be verified")
        try:
            text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
            event = gateway.verify_event(text, signature, self.secret)
        except UnicodeDecodeError as err:
            raise InvalidEvent(f"malformed body: {err}", "malformed_event") from err
        except ValueError as err:
            message = str(err)
            raise InvalidEvent(message, "malformed_event" if message.startswith("malformed") else
                               "invalid_signature") from err
        fields = event_fields(event)
        if fields["type"] not in HANDLERS:
            # A type the endpoint need not send (`flask stripe setup-webhook` subscribes to HANDLERS only): kept
            # as a small ignored row (dedupe, audit), without its body and without waking anybody.
            envelope = _envelope(event)
            fields["payload"] = envelope
            note = f"event type {fields['type']} is not handled"
            row_id = self.store.insert(fields, orjson.dumps(envelope).decode(), now or utcnow(), ignored=note)
            return Received(fields["stripe_event_id"], fields["type"], row_id, False)
        row_id = self.store.insert(fields, text, now or utcnow())
        queued = (processing.wake_drainer(self.redis, row_id % self.drainers, str(row_id))
                  if row_id is not None else False)
        return Received(fields["stripe_event_id"], fields["type"], row_id, queued)


#: What is kept of an event of a type the app does not handle (Stripe keeps the whole event, and resends it).
ENVELOPE_KEYS = ("id", "object", "type", "created", "livemode", "api_version", "account")


def _envelope(event: dict) -> dict:
    obj = event["data"]["object"]
    kept = {key: event[key] for key in ENVELOPE_KEYS if key in event}
    kept["data"] = {"object": {key: obj[key] for key in ("id", "object") if key in obj}}
    return kept


def event_fields(event: Any) -> dict[str, Any]:
    """The columns of a verified event (id, type, object id, customer); InvalidEvent when it is not one."""
    if not isinstance(event, dict):
        raise InvalidEvent("malformed body: the event is not a JSON object", "malformed_event")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64:
        raise InvalidEvent("malformed body: the event has no valid id", "malformed_event")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 80:
        raise InvalidEvent("malformed body: the event has no valid type", "malformed_event")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise InvalidEvent("malformed body: the event has no data.object", "malformed_event")
    object_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return {"stripe_event_id": event_id, "type": event_type, "object_id": object_id[:64] if object_id else None,
            "customer": customer_of(obj), "payload": event}


class PgEventStore:
    """Store an event once on PostgreSQL: one prepared INSERT ... ON CONFLICT DO NOTHING RETURNING id.

    The statement goes straight to psycopg on connections of its own, taken from the app's engine (so they are
    configured like every other) and detached from its pool. Going around SQLAlchemy's pool and statement
    machinery is what makes receipt cheap: the pool's pre-ping alone is a second round trip, and executing a
    Core statement costs several times the INSERT itself (bench/webhooks.py). A connection found broken is
    replaced and the INSERT tried once more (harmless: it is idempotent by the event id). The body is stored
    verbatim, exactly as Stripe signed it. The tenant is resolved in the same statement from the customer.
    """

    SQL = ("INSERT INTO webhook_events (stripe_event_id, type, object_id, tenant_id, payload, status, attempts, "
           "received_at, last_error, processed_at) VALUES (%(stripe_event_id)s, %(type)s, %(object_id)s, "
           "(SELECT id FROM tenants WHERE stripe_customer_id = %(customer)s), %(payload)s::json, %(status)s, "
           "%(attempts)s, %(received_at)s, %(last_error)s, %(processed_at)s) "
           "ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id")
    #: Idle connections kept between deliveries (one per concurrent delivery is enough; extras are closed).
    KEEP_IDLE = 8

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._idle: list = []
        self._lock = threading.Lock()
        # The app's engine being disposed (shutdown, tests) closes these connections too.
        sa_event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def insert(self, fields: dict[str, Any], text: str, received_at: datetime, *,
               ignored: str | None = None) -> int | None:
        """Store the event once (pending; or already ignored, with that note); its row id, None if a duplicate."""
        params = {"stripe_event_id": fields["stripe_event_id"], "type": fields["type"],
                  "object_id": fields["object_id"], "customer": fields.get("customer"), "payload": text,
                  "received_at": received_at, **_initial_state(received_at, ignored)}
        for attempt in (1, 2):
            cursor = self._checkout()
            try:
                row = cursor.execute(self.SQL, params, prepare=True).fetchone()
            except psycopg.OperationalError:
                cursor.connection.close()  # the server went away or restarted: a fresh connection, once
                if attempt == 2:
                    raise
                continue
            except BaseException:
                cursor.connection.close()
                raise
            self._checkin(cursor)
            return row[0] if row else None
        raise AssertionError("unreachable")

    def _checkout(self) -> psycopg.Cursor:
        """An idle connection's cursor (kept with it: one cursor object less per delivery), or a new one."""
        with self._lock:
            while self._idle:
                cursor = self._idle.pop()
                if not cursor.connection.closed and not cursor.connection.broken:
                    return cursor
        fairy = self._engine.raw_connection()
        fairy.detach()  # ours from now on: never returned to (or counted by) the engine's pool
        conn = fairy.dbapi_connection
        conn.autocommit = True  # one statement, committed by itself: no BEGIN/COMMIT round trips
        return conn.cursor()

    def _checkin(self, cursor: psycopg.Cursor) -> None:
        with self._lock:
            if len(self._idle) < self.KEEP_IDLE:
                self._idle.append(cursor)
                return
        cursor.connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for cursor in idle:
            cursor.connection.close()


def _initial_state(received_at: datetime, ignored: str | None) -> dict[str, Any]:
    if ignored is None:
        return {"status": EventStatus.PENDING.value, "attempts": 0, "last_error": None, "processed_at": None}
    # Decided at receipt: that is its one attempt.
    return {"status": EventStatus.IGNORED.value, "attempts": 1, "last_error": ignored, "processed_at": received_at}


class CoreEventStore:
    """Store an event once on any other database (the embedded SQLite): the same INSERT as a Core statement."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        events, tenants = WebhookEvent.__table__, Tenant.__table__
        insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        self._stmt = (insert(events)
                      .values(stripe_event_id=bindparam("stripe_event_id"), type=bindparam("type"),
                              object_id=bindparam("object_id"),
                              tenant_id=select(tenants.c.id)
                              .where(tenants.c.stripe_customer_id == bindparam("customer")).scalar_subquery(),
                              payload=bindparam("payload", type_=events.c.payload.type),
                              status=bindparam("status"), attempts=bindparam("attempts"),
                              last_error=bindparam("last_error"),
                              received_at=bindparam("received_at", type_=events.c.received_at.type),
                              processed_at=bindparam("processed_at", type_=events.c.processed_at.type))
                      .on_conflict_do_nothing(index_elements=["stripe_event_id"])
                      .returning(events.c.id))

    def insert(self, fields: dict[str, Any], text: str, received_at: datetime, *,
               ignored: str | None = None) -> int | None:
        params = {"stripe_event_id": fields["stripe_event_id"], "type": fields["type"],
                  "object_id": fields["object_id"], "customer": fields.get("customer"),
                  "payload": fields["payload"], "received_at": received_at, **_initial_state(received_at, ignored)}
        # The conflict clause waits for a concurrent insert of the same id to commit, then answers "no row".
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return conn.execute(self._stmt, params).scalar_one_or_none()
