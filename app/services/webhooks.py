"""Stripe webhooks: verify, store once, enqueue, answer — then process every event exactly once, in any order.

Receiving (`Intake.receive`, called by the WSGI endpoint in front of Flask): the signature is checked on the raw
body, the event is stored with INSERT ... ON CONFLICT DO NOTHING on its unique Stripe id — two concurrent
deliveries of one event store one row — and a newly stored row wakes a drainer (job `webhook-drain-<slot>-<row
id>` on the webhooks queue, unless that drainer's Redis flag says it is already running). Nothing is decided at
receipt, so it stays fast: one INSERT and one Redis SET per delivery. The one exception is an event of a type
no handler takes (the endpoint is subscribed to HANDLERS only, but Stripe's CLI and a dashboard-made endpoint may
send more): it is stored already `ignored`, without its body, and wakes nobody.

Processing: a drainer (`drain`) claims the oldest pending rows in one statement that also reads them (SKIP
LOCKED, so drainers share a backlog; the batch starts at one event and doubles while a backlog lasts), decides
what it can for the whole batch without the ORM (QUICK: an invoice we do not have, one already paid and read, a
card event that retries nothing, a type or account that is not ours) and gives each other event to its handler
(HANDLERS), then records all results in one statement — all through one connection of its own. `process_event`
processes one given row (retries and replays). A row is claimed by moving it pending/failed → processing in one
guarded UPDATE, so it is processed once; a drainer's claimed rows carry its token (`claimed_by`), leased in
Redis while it runs, so the rows of a drainer that died go back to pending within a minute instead of waiting
for the stale rule. Handlers never trust the state in the payload: they re-read the object from Stripe and apply
it with payments.apply_stripe_invoice, whose transitions only move forward, so an old `invoice.payment_failed`
arriving after `invoice.paid` cannot reopen a paid invoice and any delivery order ends in Stripe's current
state. An exception marks the row failed (attempts, last_error); `retry_failed` re-queues it with exponential
back-off and leaves it to a person after MAX_ATTEMPTS; `replay_event` is the root admin's button.

Row lifecycle: pending → processing → processed | ignored | failed. `attempts` counts claims (an event ignored at
receipt: 1); `processed_at` is when the last attempt started or ended (for a failed row: when it failed, the
start of its back-off). A note on a processed or ignored row (e.g. "no invoice here for in_…") is kept in
`last_error`.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import orjson
import psycopg
from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import Connection, Engine, Text, bindparam, cast, exists, func, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from app import stripe_gateway as gateway
from app.extensions import db, rq
from app.logs import log_context
from app.models import AuditLog, Invoice, InvoiceStatus, PaymentAttempt, Tenant, WebhookEvent, utcnow
from app.services import payments

log = logging.getLogger(__name__)

QUEUE = "webhooks"
JOB = "app.jobs.process_webhook_event"
DRAIN_JOB = "app.jobs.drain_webhook_events"
#: Drainers that may run at once (WEBHOOK_DRAINERS): each is one job on the webhooks queue working through
#: the pending events; a delivery wakes drainer `row id % DRAINERS`.
DRAINERS = 4
#: A drainer's "I am running" flag lives this long unless it refreshes it (a killed one is replaced after it).
DRAINER_TTL_S = 60
#: A drainer hands over to a fresh job after this long (jobs time out after 10 minutes).
DRAIN_BUDGET_S = 240.0
#: Claims of one event before it is left failed for a person (replay still works).
MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
#: A row left `processing` this long was interrupted (worker killed); jobs time out after 10 minutes.
STALE_PROCESSING = timedelta(minutes=30)
#: A row still `pending` this long lost its job (Redis was down at receipt, or the job was lost).
STALE_PENDING = timedelta(minutes=5)
#: Events looked at per retry sweep (it runs every 5 minutes).
RETRY_BATCH = 1000
#: The two events of one card change (payment_method.attached, customer.updated) retry the invoices once.
CARD_RETRY_TTL_S = 600


class EventStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


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


# -- receiving -------------------------------------------------------------------------------------------

def intake(app: Flask) -> "Intake":
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
        self.drainers = drainer_count(app)
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
        queued = wake_drainer(self.redis, row_id % self.drainers, str(row_id)) if row_id is not None else False
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
            "customer": _customer_of(obj), "payload": event}


def _customer_of(obj: dict) -> str | None:
    if obj.get("object") == "customer":
        ref = obj.get("id")
    else:
        ref = obj.get("customer")
    if isinstance(ref, dict):
        ref = ref.get("id")
    return ref if isinstance(ref, str) and ref else None


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


def wake_drainer(connection: Redis, slot: int, tag: str) -> bool:
    """See that drainer `slot` is running (start its job unless its flag says it is); False if Redis is down.

    One SET NX per delivery while a drainer is at work: queuing a job per event would cost receipt more than
    storing it. A stored event whose wake-up failed is still pending: the sweeper wakes the drainers for it.
    """
    try:
        _start_unless_running(connection, slot, tag)
    except RedisError:
        log.exception("could not wake webhook drainer %s; the sweeper will", slot)
        return False
    return True


def wake_drainers() -> int:
    """Start every drainer that is not running (the sweeper's call for events left pending); return how many."""
    tag = f"sweep-{time.time_ns() // 1_000_000}"
    return sum(_start_unless_running(rq.connection, slot, tag) for slot in range(drainer_count(current_app)))


def drainer_count(app: Flask) -> int:
    return max(1, int(app.config.get("WEBHOOK_DRAINERS", DRAINERS)))


def _start_unless_running(connection: Redis, slot: int, tag: str) -> bool:
    """Take drainer `slot`'s flag and queue its job; False when the flag says it is running already."""
    if not connection.set(_drainer_flag(slot), "1", nx=True, ex=DRAINER_TTL_S):
        return False
    start_drainer(connection, slot, tag)
    return True


def start_drainer(connection: Redis, slot: int, tag: str) -> None:
    Queue(QUEUE, connection=connection).enqueue(
        DRAIN_JOB, slot, job_id=f"webhook-drain-{slot}-{tag}", result_ttl=600, failure_ttl=7 * 86400,
        job_timeout=600)


def _drainer_flag(slot: int) -> str:
    return f"servicepro:webhooks:drainer:{slot}"


def enqueue(row_id: int) -> bool:
    """Queue one event's own processing job; False (logged) when Redis is unavailable (the sweep retries)."""
    try:
        rq.queue(QUEUE).enqueue(JOB, row_id, job_id=f"webhook-{row_id}", result_ttl=3600, failure_ttl=7 * 86400,
                                job_timeout=600)
    except RedisError:
        log.exception("could not queue webhook event %s; the retry sweep will", row_id)
        return False
    return True


# -- processing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    """What a handler gets: the stored event's facts, never an ORM row (handlers commit)."""

    row_id: int
    stripe_event_id: str
    type: str
    obj: dict
    previous: dict
    created: datetime | None
    now: datetime
    livemode: bool | None = None
    account: str | None = None  # set on events of a connected account (Connect)


@dataclass(frozen=True)
class Result:
    status: EventStatus
    note: str | None = None
    tenant_id: int | None = None


def _processed(note: str | None = None, tenant_id: int | None = None) -> Result:
    return Result(EventStatus.PROCESSED, note, tenant_id)


def _ignored(note: str, tenant_id: int | None = None) -> Result:
    return Result(EventStatus.IGNORED, note, tenant_id)


def process_event(event_row_id: int, *, now: datetime | None = None) -> str:
    """Process one stored event once (claimed against concurrent workers); return the row's resulting status."""
    now = now or utcnow()
    if not _claim(event_row_id, now):
        status = db.session.scalar(select(WebhookEvent.status).where(WebhookEvent.id == event_row_id))
        db.session.rollback()
        return status or "missing"
    return _process_claimed(event_row_id, now)


def _process_claimed(event_row_id: int, now: datetime) -> str:
    row = db.session.get(WebhookEvent, event_row_id)
    incoming = _incoming(row.id, row.stripe_event_id, row.type, row.payload, now)
    db.session.rollback()  # end the read; handlers run their own transactions
    result = _run_handler(incoming)
    t = WebhookEvent.__table__
    values: dict[str, Any] = {"status": result.status.value, "last_error": result.note, "processed_at": now}
    if result.tenant_id is not None:
        values["tenant_id"] = result.tenant_id
    db.session.execute(update(t).where(t.c.id == event_row_id).values(**values))
    db.session.commit()
    return result.status.value


def _run_handler(ev: Incoming) -> Result:
    """Apply one event with its handler (after the account and type checks); a failure is a FAILED result."""
    try:
        foreign = _not_for_this_account(ev)
        if foreign is not None:
            return _ignored(foreign)
        handler = HANDLERS.get(ev.type)
        if handler is None:
            return _ignored(f"event type {ev.type} is not handled")
        return handler(ev)
    except Exception as err:  # noqa: BLE001 - any failure is recorded on the row and retried with back-off
        db.session.rollback()
        log.warning("webhook event %s (%s) failed: %s", ev.stripe_event_id, ev.type, err,
                    exc_info=not isinstance(err, gateway.GatewayError))
        return Result(EventStatus.FAILED, f"{type(err).__name__}: {err}"[:2000])


def _claim(row_id: int, now: datetime) -> bool:
    """Claim one given event (pending or failed → processing, one more attempt), committed."""
    # The status guard is the lock: of two workers, the second's UPDATE matches no row once the first committed.
    t = WebhookEvent.__table__
    claimed = db.session.execute(
        update(t).where(t.c.id == row_id, t.c.status.in_((EventStatus.PENDING, EventStatus.FAILED)))
        .values(status=EventStatus.PROCESSING.value, attempts=t.c.attempts + 1, processed_at=now, claimed_by=None)
        .returning(t.c.id)).scalar()
    db.session.commit()
    return claimed is not None


def _incoming(row_id: int, stripe_event_id: str, type_: str, payload: Any, now: datetime) -> Incoming:
    payload = payload if isinstance(payload, dict) else {}
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    try:
        created = datetime.fromtimestamp(int(payload["created"]), timezone.utc) if payload.get("created") else None
    except (TypeError, ValueError, OverflowError, OSError):
        created = None
    livemode, account = payload.get("livemode"), payload.get("account")
    obj, previous = data.get("object"), data.get("previous_attributes")
    return Incoming(row_id=row_id, stripe_event_id=stripe_event_id, type=type_,
                    obj=obj if isinstance(obj, dict) else {}, previous=previous if isinstance(previous, dict) else {},
                    created=created, now=now,
                    livemode=livemode if isinstance(livemode, bool) else None,
                    account=account if isinstance(account, str) and account else None)


def _not_for_this_account(ev: Incoming) -> str | None:
    """Why an event is not ours to apply (another mode, a connected account), or None."""
    if ev.account is not None:
        return f"event of connected account {ev.account}: this app bills its own account only"
    live = gateway.live_mode()
    if ev.livemode is not None and ev.livemode != live:
        return (f"{'live' if ev.livemode else 'test'}-mode event, but the API key is a "
                f"{'live' if live else 'test'}-mode key")
    return None


# -- draining: batches ------------------------------------------------------------------------------------

#: A drainer's first claim takes one event (a lone delivery is processed at once, and drainers woken together
#: split a small backlog); each full claim doubles the next, up to this many, while a backlog lasts.
CLAIM_MAX = 128
#: A `processing` row claimed this long ago whose drainer's lease is gone goes back to pending (it died).
ORPHAN_AFTER = timedelta(seconds=30)
#: How long a drainer keeps trying to reach a database that went away (a restart) before it gives up.
RECONNECT_FOR_S = 90.0

_DRAINER: ContextVar["_Drainer | None"] = ContextVar("webhook_drainer", default=None)


class _Drainer:
    """One drain run: its claim token (leased in Redis while it runs), one database connection, its claim size.

    Its own statements (claims, quick decisions, results) go through that one connection, each committed by
    itself; handlers keep using the session. A connection the server dropped is replaced and the statement run
    again: each is idempotent, and a claim whose answer was lost is let go when the drainer stops.
    """

    def __init__(self, token: str, engine: Engine) -> None:
        self.token, self.engine, self.batch = token, engine, 1
        self.conn: Connection | None = None

    def execute(self, stmt: Any, params: Any = None) -> Any:
        deadline, delay = time.monotonic() + RECONNECT_FOR_S, 0.2
        while True:
            try:
                if self.conn is None:
                    self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                return self.conn.execute(stmt, params)
            except DBAPIError as err:
                if not (err.connection_invalidated or isinstance(err, OperationalError)) \
                        or time.monotonic() > deadline:
                    raise
                log.warning("webhook drainer %s: database unavailable (%s); retrying", self.token,
                            type(err.orig).__name__)
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close
                pass


@contextmanager
def _drainer(slot: int) -> Iterator[_Drainer]:
    """A drain run's context: lease taken before the first claim, rows still held let go at the end."""
    from app.workers import lease

    d = _Drainer(f"drain-{slot}-{uuid.uuid4().hex[:20]}", db.engine)
    with lease(rq.connection, _claim_lease(d.token), name=f"lease-{d.token}"):
        reset = _DRAINER.set(d)
        try:
            yield d
        finally:
            _DRAINER.reset(reset)
            try:
                _release(d, None)
            except Exception:  # noqa: BLE001 - the lease lapses and another drainer or the sweeper frees them
                log.exception("webhook drainer %s could not let go of its rows", d.token)
            d.close()


def _claim_lease(token: str) -> str:
    return f"servicepro:webhooks:claim:{token}"


def drain(slot: int, *, now: datetime | None = None, budget_s: float = DRAIN_BUDGET_S) -> int:
    """Process pending events, oldest first, until none is left (a drainer's job); return how many it processed.

    Any drainer takes any pending events (claimed with SKIP LOCKED, in batches that grow while a backlog lasts),
    so the running drainers share a backlog. Before it stops, a drainer lets go of its slot and looks once more:
    an event stored after its last claim but before the release found the slot taken and started nobody, so the
    drainer takes the slot back and goes on (or, if someone else took it, leaves the event to them). Past its
    time budget it lets go of the events it has not started and hands the slot to a fresh job, so one drain
    never runs into the job timeout and the worker gets to its other queues.
    """
    connection, flag = rq.connection, _drainer_flag(slot)
    started = refreshed = time.monotonic()
    deadline = started + budget_s
    handled = 0
    with _drainer(slot) as d:
        while True:
            events = _claim_next(now or utcnow())
            if not events:
                if _release_orphans(d.execute):
                    continue
                connection.delete(flag)
                if not _pending_exists(d):
                    return handled
                if not connection.set(flag, "1", nx=True, ex=DRAINER_TTL_S):
                    return handled  # a new drainer has the slot and will take it
                continue
            handled += _process_batch(d, events, deadline)
            if time.monotonic() > deadline:
                connection.set(flag, "1", ex=DRAINER_TTL_S)
                start_drainer(connection, slot, f"next-{time.time_ns() // 1_000_000}")
                return handled
            if time.monotonic() - refreshed > DRAINER_TTL_S / 4:
                connection.expire(flag, DRAINER_TTL_S)  # still here: ingestion must not start a second one
                refreshed = time.monotonic()


def _claim_next(now: datetime) -> list[Incoming] | None:
    """Claim the oldest pending events nobody else is claiming (their row locks skipped), read in one statement."""
    d = _DRAINER.get()
    t = WebhookEvent.__table__
    # Materialized, so the locking SELECT runs once: as an IN (...) subquery the planner may run it again per
    # row, and with SKIP LOCKED each run can pick other rows (a claim larger than its LIMIT).
    oldest = (select(t.c.id).where(t.c.status == EventStatus.PENDING).order_by(t.c.id).limit(d.batch)
              .with_for_update(skip_locked=True).cte("claimable").prefix_with("MATERIALIZED"))
    rows = d.execute(
        update(t).where(t.c.id == oldest.c.id, t.c.status == EventStatus.PENDING)
        .values(status=EventStatus.PROCESSING.value, attempts=t.c.attempts + 1, processed_at=now, claimed_by=d.token)
        .returning(t.c.id, t.c.stripe_event_id, t.c.type, cast(t.c.payload, Text))).all()
    if len(rows) == d.batch:
        d.batch = min(CLAIM_MAX, d.batch * 2)
    # The payload as text, parsed here by orjson: a third of the stdlib's time, which was a third of a batch's.
    return sorted((_incoming(row_id, event_id, type_, _loads(payload), now)
                   for row_id, event_id, type_, payload in rows), key=lambda ev: ev.row_id)


def _loads(text: str | None) -> Any:
    try:
        return orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None


def _process_batch(d: _Drainer, events: list[Incoming], deadline: float) -> int:
    """Decide a claimed batch: quick events together without the ORM, the others by their handlers, one by one.

    Of several events about one object only the first goes to its handler; the others are looked at again
    after it, when the state it recorded usually makes them quick (a backlog holds ~3 events per invoice).
    Past the deadline the events not started are let go (pending again) for the next drainer. Returns how
    many were decided.
    """
    done = 0
    todo = events
    while todo:
        quick, slow = _triage(d, todo)
        _record(d, quick)
        done += len(quick)
        first, later, seen = [], [], set()
        for ev in slow:
            key = (ev.type.split(".", 1)[0], _ref(ev.obj.get("id")))
            (later if key in seen else first).append(ev)
            seen.add(key)
        for i, ev in enumerate(first):
            if time.monotonic() > deadline and done:
                _release(d, [e.row_id for e in first[i:] + later])
                return done
            with log_context(webhook_event_id=ev.row_id):
                _record(d, [(ev, _run_handler(ev))])
            done += 1
        todo = later
    return done


def _triage(d: _Drainer, events: list[Incoming]) -> tuple[list[tuple[Incoming, Result]], list[Incoming]]:
    """Split events into those decided here without the ORM (with their results) and those for their handlers."""
    quick: list[tuple[Incoming, Result]] = []
    slow: list[Incoming] = []
    groups: dict[Callable, list[Incoming]] = {}
    for ev in events:
        foreign = _not_for_this_account(ev)
        if foreign is not None:
            quick.append((ev, _ignored(foreign)))
        elif ev.type not in HANDLERS:  # stored before the type was dropped at receipt, or replayed
            quick.append((ev, _ignored(f"event type {ev.type} is not handled")))
        elif ev.type in QUICK:
            groups.setdefault(QUICK[ev.type], []).append(ev)
        else:
            slow.append(ev)
    for decide, group in groups.items():
        decided = decide(d, group)
        for ev in group:
            if ev.row_id in decided:
                quick.append((ev, decided[ev.row_id]))
            else:
                slow.append(ev)
    slow.sort(key=lambda ev: ev.row_id)
    return quick, slow


def _record(d: _Drainer, results: list[tuple[Incoming, Result]]) -> None:
    """Write the results of claimed events (one statement for all), unless another drainer took them back."""
    if not results:
        return
    t = WebhookEvent.__table__
    d.execute(
        update(t).where(t.c.id == bindparam("row_id"), t.c.status == EventStatus.PROCESSING,
                        t.c.claimed_by == bindparam("token"))
        .values(status=bindparam("new_status"), last_error=bindparam("note"),
                processed_at=bindparam("at", type_=t.c.processed_at.type),
                tenant_id=func.coalesce(bindparam("tenant", type_=t.c.tenant_id.type), t.c.tenant_id),
                claimed_by=None),
        [{"row_id": ev.row_id, "token": d.token, "new_status": result.status.value, "note": result.note,
          "at": ev.now, "tenant": result.tenant_id} for ev, result in results])


def _release(d: _Drainer, row_ids: list[int] | None) -> None:
    """Let go of claimed events not started (pending again, the claim not counted); None: all still held."""
    t = WebhookEvent.__table__
    stmt = update(t).where(t.c.status == EventStatus.PROCESSING, t.c.claimed_by == d.token)
    if row_ids is not None:
        if not row_ids:
            return
        stmt = stmt.where(t.c.id.in_(row_ids)).values(attempts=t.c.attempts - 1)
    d.execute(stmt.values(status=EventStatus.PENDING.value, claimed_by=None))


def _pending_exists(d: _Drainer) -> bool:
    t = WebhookEvent.__table__
    return bool(d.execute(select(exists().where(t.c.status == EventStatus.PENDING))).scalar())


def release_orphans(*, now: datetime | None = None) -> int:
    """Put back the events held by drainers that died (their lease lapsed); return how many (the sweeper's call)."""
    freed = _release_orphans(lambda stmt, params=None: db.session.execute(stmt, params), now=now)
    db.session.commit()
    return freed


def _release_orphans(execute: Callable, *, now: datetime | None = None) -> int:
    t = WebhookEvent.__table__
    cutoff = (now or utcnow()) - ORPHAN_AFTER
    tokens = [token for (token,) in execute(
        select(t.c.claimed_by).distinct().where(t.c.status == EventStatus.PROCESSING, t.c.claimed_by.is_not(None),
                                                t.c.processed_at < cutoff))]
    freed = 0
    for token in tokens:
        try:
            alive = rq.connection.exists(_claim_lease(token))
        except RedisError:
            return freed  # cannot tell who is alive: leave them
        if alive:
            continue
        # Interrupted mid-way: processed again from the start (every handler is idempotent), unless it has
        # used up its attempts (it may be what kills the worker) — then it waits for a person, like a failure.
        held = update(t).where(t.c.status == EventStatus.PROCESSING, t.c.claimed_by == token)
        execute(held.where(t.c.attempts >= MAX_ATTEMPTS).values(
            status=EventStatus.FAILED.value, claimed_by=None,
            last_error="interrupted: the worker stopped while processing it"))
        back = execute(held.values(status=EventStatus.PENDING.value, claimed_by=None)).rowcount
        log.warning("%s webhook events of drainer %s, which stopped without finishing them, are pending again",
                    back, token)
        freed += back
    return freed


# -- quick decisions: no ORM, one query per batch and type ------------------------------------------------

def _quick_invoice_events(d: _Drainer, events: list[Incoming]) -> dict[int, Result]:
    """Invoice events whose handler would change nothing: an invoice we do not have, or one paid and read since.

    Paid wins, so no event moves a paid invoice; once it was read from Stripe after it was paid (amounts,
    number, PDF recorded), a re-read cannot add anything either — the same result the handler gives, without
    a Stripe request (dunning was re-evaluated by whoever recorded the payment).
    """
    inv = Invoice.__table__
    stripe_ids = {sid for sid in (ev.obj.get("id") for ev in events) if isinstance(sid, str)}
    known = {r.stripe_invoice_id: r for r in d.execute(
        select(inv.c.stripe_invoice_id, inv.c.tenant_id, inv.c.status, inv.c.stripe_synced_at, inv.c.paid_at,
               inv.c.stripe_number, inv.c.invoice_pdf_url).where(inv.c.stripe_invoice_id.in_(stripe_ids)))}
    # An invoice of ours not linked to its Stripe id yet is found by the id in its metadata (the handler checks
    # the customer too): only when there is such an invoice must the handler look.
    ours = {_metadata_invoice_id(ev.obj) for ev in events
            if not (isinstance(ev.obj.get("id"), str) and ev.obj["id"] in known)} - {None}
    unlinked = set(d.execute(select(inv.c.id).where(inv.c.id.in_(ours), inv.c.stripe_invoice_id.is_(None)))
                   .scalars()) if ours else set()
    out: dict[int, Result] = {}
    for ev in events:
        stripe_id = ev.obj.get("id")
        row = known.get(stripe_id) if isinstance(stripe_id, str) else None
        if row is None:
            if _metadata_invoice_id(ev.obj) not in unlinked:
                out[ev.row_id] = _ignored(f"no invoice here for Stripe invoice {stripe_id}")
            continue
        settled = (row.status == InvoiceStatus.PAID and row.stripe_synced_at is not None and row.paid_at is not None
                   and row.stripe_synced_at >= row.paid_at and row.stripe_number and row.invoice_pdf_url)
        if settled:
            out[ev.row_id] = _processed("stale: Stripe has the invoice paid" if ev.type in EXTRAS else None,
                                        row.tenant_id)
    return out


def _metadata_invoice_id(obj: dict) -> int | None:
    ours = str((obj.get("metadata") or {}).get("invoice_id") or "")
    return int(ours) if ours.isdigit() and len(ours) < 19 else None


def _quick_card_events(d: _Drainer, events: list[Incoming]) -> dict[int, Result]:
    """Card events that retry nothing: the default card did not change, no tenant, or no open invoice."""
    out: dict[int, Result] = {}
    customers: dict[int, str | None] = {}
    for ev in events:
        if ev.type == "customer.updated":
            unchanged = _default_card_unchanged(ev)
            if unchanged is not None:
                out[ev.row_id] = _processed(unchanged)
                continue
            customers[ev.row_id] = ev.obj.get("id")
        else:
            customers[ev.row_id] = _customer_of(ev.obj)
    wanted = {c for c in customers.values() if isinstance(c, str) and c}
    tenants, inv = Tenant.__table__, Invoice.__table__
    has_open = exists().where(inv.c.tenant_id == tenants.c.id, inv.c.status == InvoiceStatus.OPEN,
                              inv.c.stripe_invoice_id.is_not(None))
    found = {r.stripe_customer_id: r for r in d.execute(
        select(tenants.c.stripe_customer_id, tenants.c.id, has_open.label("has_open"))
        .where(tenants.c.stripe_customer_id.in_(wanted)))} if wanted else {}
    for row_id, customer in customers.items():
        tenant = found.get(customer) if isinstance(customer, str) else None
        if tenant is None:
            out[row_id] = _ignored(f"no tenant here for Stripe customer {customer}")
        elif not tenant.has_open:
            out[row_id] = _processed("no open invoices to retry", tenant.id)
    return out


# -- handlers: invoices ----------------------------------------------------------------------------------

def _find_invoice(obj: dict, *, lock: bool) -> Invoice | None:
    """Our invoice for a Stripe invoice object: by its Stripe id, else by our metadata (same customer only)."""
    stripe_id = obj.get("id")
    if not isinstance(stripe_id, str):
        return None
    stmt = select(Invoice).where(Invoice.stripe_invoice_id == stripe_id)
    if lock:
        stmt = stmt.with_for_update()
    invoice = db.session.scalar(stmt.execution_options(populate_existing=True))
    if invoice is not None:
        return invoice
    ours = _metadata_invoice_id(obj)
    if ours is None:
        return None
    stmt = select(Invoice).where(Invoice.id == ours, Invoice.stripe_invoice_id.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    invoice = db.session.scalar(stmt.execution_options(populate_existing=True))
    if invoice is None:
        return None
    # Metadata ids repeat across environments sharing a Stripe account: the customer must be this tenant's too.
    customer = db.session.scalar(select(Tenant.stripe_customer_id).where(Tenant.id == invoice.tenant_id))
    return invoice if customer and customer == _customer_of(obj) else None


def _resume_invoicing(invoice: Invoice) -> None:
    """Queue the invoice's own (resumable, idempotent) job: it records finalization, number and due date."""
    from app.jobs import enqueue_unique

    period = f"{invoice.period_start:%Y-%m}"
    enqueue_unique("billing", "app.jobs.invoice_tenant", invoice.tenant_id, period, "scheduled",
                   job_id=f"invoice-{invoice.tenant_id}-{period}")


def _reevaluate(tenant_id: int, now: datetime) -> None:
    from app.services import dunning

    dunning.reevaluate_tenant(tenant_id, now=now)


def _invoice_event(ev: Incoming) -> Result:
    """Any invoice event: re-read the invoice from Stripe and apply its current state (then the type's extras)."""
    stripe_id = ev.obj.get("id")
    invoice = _find_invoice(ev.obj, lock=True)
    if invoice is None:
        db.session.rollback()
        return _ignored(f"no invoice here for Stripe invoice {stripe_id}")
    tenant_id = invoice.tenant_id
    if invoice.status == InvoiceStatus.DRAFT:
        # Draft → open belongs to invoicing (it numbers the invoice and sets issue and due dates): hand it over.
        db.session.rollback()
        _resume_invoicing(invoice)
        return _processed("still a draft here: handed to the invoicing job", tenant_id)
    invoice_sid = invoice.stripe_invoice_id or stripe_id
    before = invoice.status
    extra = EXTRAS.get(ev.type)
    if extra is None and _fresh_since(invoice.stripe_synced_at, ev.created):
        # A backlog holds several events per invoice; the state we read after this one was created already
        # includes it, so one re-read serves them all (and spares the shared Stripe request budget).
        current = None
    else:
        read_at = datetime.now(timezone.utc)
        current = gateway.retrieve_invoice(invoice_sid)
        payments.apply_stripe_invoice(invoice, current, now=ev.now)
        _record_stripe_documents(invoice, current)
        invoice.stripe_synced_at = read_at
    note = extra(ev, invoice, current) if extra else None
    db.session.commit()
    if invoice.status != before or invoice.status != InvoiceStatus.OPEN:
        _reevaluate(tenant_id, ev.now)
    return _processed(note, tenant_id)


def _record_stripe_documents(invoice: Invoice, current: Any) -> None:
    """Keep Stripe's own invoice number and PDF link (set when Stripe finalizes it) for the tenant's page."""
    number, pdf = _get(current, "number"), _get(current, "invoice_pdf")
    if isinstance(number, str) and number:
        invoice.stripe_number = number[:64]
    if isinstance(pdf, str) and pdf.startswith(("https://", "http://")):
        invoice.invoice_pdf_url = pdf


# Stripe's event timestamps are whole seconds from Stripe's clock: only trust a read made clearly after them.
FRESH_MARGIN_S = 5


def _fresh_since(synced_at: datetime | None, created: datetime | None) -> bool:
    """True when we re-read the object from Stripe (and applied it) clearly after the event was created."""
    if synced_at is None or created is None:
        return False
    return synced_at >= created + timedelta(seconds=1 + FRESH_MARGIN_S)


def _payment_failed(ev: Incoming, invoice: Invoice, current: Any) -> str | None:
    if invoice.status != InvoiceStatus.OPEN:
        return f"stale: Stripe has the invoice {invoice.status}"
    if not invoice.last_payment_error:  # our own charge's decline message is more precise: keep it
        attempts = _get(current, "attempt_count") or 0
        invoice.last_payment_error = f"Stripe could not collect the payment (attempt {attempts})."
        invoice.last_payment_error_code = invoice.last_payment_error_code or "payment_failed"
    db.session.commit()
    if invoice.last_payment_error_code == "authentication_required":
        return "authentication required: the hosted-invoice email covers it"
    _notify("notify_payment_failed", invoice, ev.now)
    return None


def _action_required(ev: Incoming, invoice: Invoice, current: Any) -> str | None:
    if invoice.status != InvoiceStatus.OPEN:
        return f"stale: Stripe has the invoice {invoice.status}"
    # The event type alone proves nothing: a late or replayed one must not turn a plain decline into
    # "authentication required" (cancelling the retry and emailing the tenant). Stripe's latest attempt decides.
    if not gateway.awaiting_authentication(invoice.stripe_invoice_id or _get(current, "id")):
        return "stale: Stripe's latest payment attempt on this invoice is not waiting for authentication"
    if not invoice.last_payment_error:
        invoice.last_payment_error = "The bank asks the cardholder to authenticate this payment."
    invoice.last_payment_error_code = "authentication_required"
    # Off-session retries cannot authenticate: the customer pays on the hosted page (or changes card).
    invoice.next_payment_attempt_at = None
    db.session.commit()
    _notify("notify_action_required", invoice, ev.now)
    return None


def _notify(name: str, invoice: Invoice, now: datetime) -> None:
    # The outbox's dedupe key (one email per invoice and kind) makes a repeated or replayed event send nothing.
    from app.services import notifications

    getattr(notifications, name)(invoice, now=now)


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) or hasattr(obj, "get") else getattr(obj, name, None)


EXTRAS: dict[str, Callable[[Incoming, Invoice, Any], str | None]] = {
    "invoice.payment_failed": _payment_failed,
    "invoice.payment_action_required": _action_required,
}


# -- handlers: a new default card ------------------------------------------------------------------------

def _tenant_for_customer(customer_id: str | None) -> Tenant | None:
    if not customer_id:
        return None
    return db.session.scalar(select(Tenant).where(Tenant.stripe_customer_id == customer_id))


def _customer_updated(ev: Incoming) -> Result:
    """customer.updated: only a change of the default payment method matters (then retry open invoices)."""
    unchanged = _default_card_unchanged(ev)
    if unchanged is not None:
        return _processed(unchanged)
    new_pm = _ref((ev.obj.get("invoice_settings") or {}).get("default_payment_method"))
    return _card_changed(ev, ev.obj.get("id"), new_pm)


def _default_card_unchanged(ev: Incoming) -> str | None:
    """Why a customer.updated event changed no default card (read from the event alone), or None if it did."""
    before = (ev.previous.get("invoice_settings") or {}) if isinstance(ev.previous, dict) else {}
    after = ev.obj.get("invoice_settings") or {}
    if "default_payment_method" not in before:
        return "the default payment method did not change"
    new_pm = _ref(after.get("default_payment_method"))
    if new_pm is None or new_pm == _ref(before.get("default_payment_method")):
        return "no new default payment method"
    return None


def _payment_method_attached(ev: Incoming) -> Result:
    """payment_method.attached: retry open invoices if the card is (now) the customer's default."""
    return _card_changed(ev, _customer_of(ev.obj), ev.obj.get("id"))


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _card_changed(ev: Incoming, customer_id: str | None, pm_id: str | None) -> Result:
    tenant = _tenant_for_customer(customer_id)
    if tenant is None:
        db.session.rollback()
        return _ignored(f"no tenant here for Stripe customer {customer_id}")
    tenant_id = tenant.id
    open_ids = list(db.session.scalars(select(Invoice.id).where(
        Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN, Invoice.stripe_invoice_id.is_not(None))))
    if not open_ids:
        db.session.rollback()
        return _processed("no open invoices to retry", tenant_id)
    if gateway.default_payment_method(customer_id) != pm_id:  # re-read: a later change may have replaced it
        db.session.rollback()
        return _processed(f"{pm_id} is not the customer's default payment method now", tenant_id)
    since = ev.created or ev.now
    # Any charge attempt after the change (its retry, a scheduled one) already used this card: a late or replayed
    # event for the current card must not charge again.
    retried = db.session.scalar(select(exists().where(
        PaymentAttempt.tenant_id == tenant_id, PaymentAttempt.created_at >= since)))
    db.session.rollback()
    if retried:
        return _processed("open invoices were already charged since this card change", tenant_id)
    # One card change sends two events (payment_method.attached and customer.updated), possibly processed at once.
    key = f"servicepro:card-retry:{customer_id}:{pm_id}"
    if not rq.connection.set(key, ev.stripe_event_id, nx=True, ex=CARD_RETRY_TTL_S):
        return _processed("open invoices are being retried for this card already", tenant_id)
    try:
        made = payments.retry_open_invoices(tenant_id, trigger="card_updated", now=ev.now)
    except Exception:
        rq.connection.delete(key)
        raise
    log.info("card change of tenant %s: %s charge attempts on %s open invoices", tenant_id, made, len(open_ids))
    return _processed(None, tenant_id)


# -- handlers: disputes ----------------------------------------------------------------------------------

#: Dispute statuses after which the money is back with us (the invoice is no longer flagged).
DISPUTE_RESOLVED = {"won", "warning_closed", "prevented"}


def _dispute_event(ev: Incoming) -> Result:
    """charge.dispute.*: re-read the dispute and flag (or clear) exactly the invoice its charge paid."""
    dispute_id = _ref(ev.obj.get("id"))
    if dispute_id is None:
        return _ignored("the event names no dispute")
    dispute = _stripe_or_none(gateway.retrieve_dispute, dispute_id)
    if dispute is None:
        return _ignored(f"Stripe has no dispute {dispute_id} for this account")
    charge = dispute.get("charge") if isinstance(dispute.get("charge"), dict) else {}
    tenant = _tenant_for_customer(_ref(charge.get("customer")))
    if tenant is None:
        db.session.rollback()
        return _ignored(f"dispute {dispute_id} on charge {_ref(dispute.get('charge'))}: no tenant here for it")
    tenant_id, status = tenant.id, str(dispute.get("status") or "")
    invoice = _invoice_paid_by(tenant_id, dispute, charge)
    flagged = status not in DISPUTE_RESOLVED
    if invoice is not None:
        invoice.stripe_dispute_id, invoice.dispute_status, invoice.disputed = dispute_id, status, flagged
    tenant_flagged = db.session.scalar(select(exists().where(
        Invoice.tenant_id == tenant_id, Invoice.disputed.is_(True))))
    tenant.disputed = bool(tenant_flagged) or (invoice is None and flagged)
    db.session.commit()
    log.warning("dispute %s (%s) on charge %s: tenant %s, invoice %s", dispute_id, status, charge.get("id"),
                tenant_id, invoice.id if invoice else None)
    if invoice is None:
        return _processed(f"dispute {dispute_id} ({status}): the charge paid no invoice of ours, tenant flagged",
                          tenant_id)
    return _processed(None, tenant_id)


def _invoice_paid_by(tenant_id: int, dispute: dict, charge: dict) -> Invoice | None:
    """The tenant's invoice the disputed charge paid: through its invoice payment (by payment intent)."""
    payment_intent = _ref(dispute.get("payment_intent")) or _ref(charge.get("payment_intent"))
    if payment_intent:
        stripe_invoice_id = gateway.invoice_for_payment_intent(payment_intent)
    else:
        stripe_invoice_id = _ref(charge.get("invoice"))  # charges of API versions before 2025-03-31
    if stripe_invoice_id is None:
        return None
    return db.session.scalar(select(Invoice).where(
        Invoice.tenant_id == tenant_id, Invoice.stripe_invoice_id == stripe_invoice_id).with_for_update())


def _stripe_or_none(read: Callable[[str], Any], object_id: str) -> dict | None:
    """Stripe's current state of an object, or None when Stripe does not know it (404)."""
    try:
        return read(object_id).to_dict()
    except gateway.GatewayError as err:
        if err.http_status == 404:
            db.session.rollback()
            return None
        raise


# -- handlers: refunds and deleted customers -------------------------------------------------------------

def _charge_refunded(ev: Incoming) -> Result:
    """charge.refunded: record on the invoice the charge paid how much Stripe has refunded of it now."""
    charge_id = _ref(ev.obj.get("id"))
    charge = _stripe_or_none(gateway.retrieve_charge, charge_id) if charge_id else None
    if charge is None:
        return _ignored(f"Stripe has no charge {charge_id} for this account")
    tenant = _tenant_for_customer(_ref(charge.get("customer")))
    if tenant is None:
        db.session.rollback()
        return _ignored(f"charge {charge_id}: no tenant here for it")
    tenant_id = tenant.id
    invoice = _invoice_paid_by(tenant_id, {}, charge)
    if invoice is None:
        db.session.rollback()
        return _processed(f"charge {charge_id} paid no invoice of ours", tenant_id)
    refunded = int(charge.get("amount_refunded") or 0)
    note = None if refunded != invoice.amount_refunded else "already recorded"
    invoice.amount_refunded = refunded
    db.session.commit()
    return _processed(note, tenant_id)


def _customer_deleted(ev: Incoming) -> Result:
    """customer.deleted: forget the tenant's dead customer id (sync-customers creates a new customer)."""
    customer_id = _ref(ev.obj.get("id"))
    tenant = _tenant_for_customer(customer_id)
    if tenant is None:
        db.session.rollback()
        return _ignored(f"no tenant here for Stripe customer {customer_id}")
    tenant_id = tenant.id
    current = _stripe_or_none(gateway.retrieve_customer, customer_id)
    if current is not None and not current.get("deleted"):
        return _processed(f"Stripe still has customer {customer_id}: nothing to forget", tenant_id)
    forgot = db.session.execute(update(Tenant).where(Tenant.id == tenant_id, Tenant.stripe_customer_id == customer_id)
                                .values(stripe_customer_id=None)).rowcount
    if forgot:
        db.session.add(AuditLog(actor_user_id=None, tenant_id=tenant_id, action="stripe.customer_deleted",
                                details={"customer": customer_id, "stripe_event_id": ev.stripe_event_id},
                                created_at=ev.now))
    db.session.commit()
    log.warning("Stripe customer %s of tenant %s was deleted: sync-customers creates a new one", customer_id,
                tenant_id)
    return _processed(None, tenant_id)


HANDLERS: dict[str, Callable[[Incoming], Result]] = {
    "invoice.paid": _invoice_event,
    "invoice.payment_succeeded": _invoice_event,
    "invoice.payment_failed": _invoice_event,
    "invoice.payment_action_required": _invoice_event,
    "invoice.finalized": _invoice_event,
    "invoice.voided": _invoice_event,
    "invoice.marked_uncollectible": _invoice_event,
    "customer.updated": _customer_updated,
    "payment_method.attached": _payment_method_attached,
    "charge.dispute.created": _dispute_event,
    "charge.dispute.updated": _dispute_event,
    "charge.dispute.closed": _dispute_event,
    "charge.dispute.funds_withdrawn": _dispute_event,
    "charge.dispute.funds_reinstated": _dispute_event,
    "charge.refunded": _charge_refunded,
    "customer.deleted": _customer_deleted,
}

#: Quick decisions a drainer makes for a whole batch of one type before any handler runs (see _triage): the
#: events they decide get exactly the handler's result; the rest go to HANDLERS.
QUICK: dict[str, Callable[[_Drainer, list[Incoming]], dict[int, Result]]] = {
    **{name: _quick_invoice_events for name, handler in HANDLERS.items() if handler is _invoice_event},
    "customer.updated": _quick_card_events,
    "payment_method.attached": _quick_card_events,
}


# -- retries, replay and the root page -------------------------------------------------------------------

def backoff(attempts: int) -> timedelta:
    """How long a failed event waits after its `attempts`-th attempt (doubling, capped)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, attempts - 1)))


def retry_failed(*, now: datetime | None = None) -> int:
    """Re-queue failed events whose back-off has elapsed, interrupted and lost ones; return how many were queued."""
    from app.jobs import enqueue_unique

    now = now or utcnow()
    t = WebhookEvent.__table__
    # A worker killed mid-event leaves it `processing`: record it as failed so the back-off below applies.
    db.session.execute(update(t).where(t.c.status == EventStatus.PROCESSING, t.c.processed_at < now - STALE_PROCESSING)
                       .values(status=EventStatus.FAILED.value,
                               last_error="interrupted: the worker stopped while processing it"))
    db.session.commit()
    candidates = db.session.execute(
        select(t.c.id, t.c.status, t.c.attempts, t.c.processed_at).where(or_(
            (t.c.status == EventStatus.FAILED) & (t.c.attempts < MAX_ATTEMPTS),
            (t.c.status == EventStatus.PENDING) & (t.c.received_at < now - STALE_PENDING)))
        .order_by(t.c.id).limit(RETRY_BATCH)).all()
    db.session.rollback()
    queued = 0
    for row_id, status, attempts, last_at in candidates:
        if status == EventStatus.FAILED and last_at is not None and last_at + backoff(attempts) > now:
            continue
        try:
            enqueue_unique(QUEUE, JOB, row_id, job_id=f"webhook-{row_id}", job_timeout=600)
        except (RedisError, RuntimeError):
            log.exception("could not re-queue webhook event %s", row_id)
            continue
        queued += 1
    return queued


def replay_event(event_row_id: int, actor_user_id: int | None, *, inline: bool = True,
                 now: datetime | None = None) -> str:
    """Reset an event to pending and process it again (inline, or queued), audit-logged; return its status."""
    now = now or utcnow()
    row = db.session.scalar(select(WebhookEvent).where(WebhookEvent.id == event_row_id).with_for_update())
    if row is None:
        db.session.rollback()
        raise LookupError(f"webhook event {event_row_id} not found")
    if row.status == EventStatus.PROCESSING and row.processed_at and row.processed_at > now - STALE_PROCESSING:
        db.session.rollback()
        raise ValueError(f"webhook event {event_row_id} is being processed right now")
    db.session.add(AuditLog(actor_user_id=actor_user_id, tenant_id=row.tenant_id, action="webhook.replay",
                            details={"event_row_id": row.id, "stripe_event_id": row.stripe_event_id,
                                     "type": row.type, "previous_status": row.status,
                                     "previous_error": row.last_error, "attempts": row.attempts},
                            created_at=now))
    row.status = EventStatus.PENDING.value
    row.last_error = None
    row.claimed_by = None
    db.session.commit()
    if inline:
        return process_event(event_row_id, now=now)
    if not enqueue(event_row_id):
        raise RuntimeError("could not queue the replay (Redis unavailable); the retry sweep will process it")
    return EventStatus.PENDING.value


def failed_events(limit: int = 50) -> list[WebhookEvent]:
    """Failed events for the root page, newest first (each can be replayed)."""
    return list(db.session.scalars(
        select(WebhookEvent).where(WebhookEvent.status == EventStatus.FAILED)
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc()).limit(limit)))
