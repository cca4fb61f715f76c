"""Stripe webhooks: verify, store once, enqueue, answer — then process every event exactly once, in any order.

Receiving (`Intake.receive`, called by the WSGI endpoint in front of Flask): the signature is checked on the raw
body, the event is stored with INSERT ... ON CONFLICT DO NOTHING on its unique Stripe id — two concurrent
deliveries of one event store one row — and a newly stored row wakes a drainer (job `webhook-drain-<slot>-<row
id>` on the webhooks queue, unless that drainer's Redis flag says it is already running). Nothing is decided at
receipt, so it stays fast: one INSERT and one Redis SET per delivery.

Processing: a drainer (`drain`) claims the oldest pending row (SKIP LOCKED, so drainers share a backlog) and
processes it, until none is left; `process_event` processes one given row (retries and replays). A row is
claimed by moving it pending/failed → processing in one guarded UPDATE, so it is processed once, and a drainer
processes events one after another in one job (no work horse forked per event). Handlers never trust the state
in the payload: they re-read the object from Stripe and apply it with payments.apply_stripe_invoice, whose
transitions only move forward, so an old `invoice.payment_failed` arriving after `invoice.paid` cannot reopen a
paid invoice and any delivery order ends in Stripe's current state. An exception marks the row failed
(attempts, last_error); `retry_failed` re-queues it with exponential back-off and leaves it to a person after
MAX_ATTEMPTS; `replay_event` is the root admin's button.

Row lifecycle: pending → processing → processed | ignored | failed. `attempts` counts claims; `processed_at` is
when the last attempt started or ended (for a failed row: when it failed, the start of its back-off). A note on
a processed or ignored row (e.g. "no invoice here for in_…") is kept in `last_error`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import psycopg
from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import Engine, bindparam, exists, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite

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
        row_id = self.store.insert(fields, text, now or utcnow())
        queued = wake_drainer(self.redis, row_id % self.drainers, str(row_id)) if row_id is not None else False
        return Received(fields["stripe_event_id"], fields["type"], row_id, queued)


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
           "received_at) VALUES (%(stripe_event_id)s, %(type)s, %(object_id)s, "
           "(SELECT id FROM tenants WHERE stripe_customer_id = %(customer)s), %(payload)s::json, 'pending', 0, "
           "%(received_at)s) ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id")
    #: Idle connections kept between deliveries (one per concurrent delivery is enough; extras are closed).
    KEEP_IDLE = 8

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._idle: list = []
        self._lock = threading.Lock()
        # The app's engine being disposed (shutdown, tests) closes these connections too.
        sa_event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def insert(self, fields: dict[str, Any], text: str, received_at: datetime) -> int | None:
        params = {"stripe_event_id": fields["stripe_event_id"], "type": fields["type"],
                  "object_id": fields["object_id"], "customer": fields.get("customer"), "payload": text,
                  "received_at": received_at}
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
                              status=EventStatus.PENDING.value, attempts=0,
                              received_at=bindparam("received_at", type_=events.c.received_at.type))
                      .on_conflict_do_nothing(index_elements=["stripe_event_id"])
                      .returning(events.c.id))

    def insert(self, fields: dict[str, Any], text: str, received_at: datetime) -> int | None:
        params = {"stripe_event_id": fields["stripe_event_id"], "type": fields["type"],
                  "object_id": fields["object_id"], "customer": fields.get("customer"),
                  "payload": fields["payload"], "received_at": received_at}
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
    event_type, stripe_event_id = row.type, row.stripe_event_id
    try:
        incoming = _incoming(row, now)
        db.session.rollback()  # end the read; handlers run their own transactions
        handler = HANDLERS.get(incoming.type)
        foreign = _not_for_this_account(incoming)
        if foreign is not None:
            result = _ignored(foreign)
        elif handler is None:
            result = _ignored(f"event type {incoming.type} is not handled")
        else:
            result = handler(incoming)
    except Exception as err:  # noqa: BLE001 - any failure is recorded on the row and retried with back-off
        db.session.rollback()
        log.warning("webhook event %s (%s) failed: %s", stripe_event_id, event_type, err,
                    exc_info=not isinstance(err, gateway.GatewayError))
        return _mark_failed(event_row_id, err, now)
    return _finish(event_row_id, result, now)


def drain(slot: int, *, now: datetime | None = None, budget_s: float = DRAIN_BUDGET_S) -> int:
    """Process pending events, oldest first, until none is left (a drainer's job); return how many it processed.

    Any drainer takes any pending event (claimed with SKIP LOCKED), so the running drainers share a backlog.
    Before it stops, a drainer lets go of its slot and looks once more: an event stored after its last claim
    but before the release found the slot taken and started nobody, so the drainer takes the slot back and
    goes on (or, if someone else took it, leaves the event to them). Past its time budget it hands the slot to
    a fresh job, so one drain never runs into the job timeout and the worker gets to its other queues.
    """
    connection, flag = rq.connection, _drainer_flag(slot)
    started = refreshed = time.monotonic()
    handled = 0
    while True:
        row_id = _claim_next(now or utcnow())
        if row_id is None:
            connection.delete(flag)
            if not _pending_exists():
                return handled
            if not connection.set(flag, "1", nx=True, ex=DRAINER_TTL_S):
                return handled  # a new drainer has the slot and will take it
            continue
        with log_context(webhook_event_id=row_id):
            _process_claimed(row_id, now or utcnow())
        handled += 1
        elapsed = time.monotonic() - started
        if elapsed > budget_s:
            connection.set(flag, "1", ex=DRAINER_TTL_S)
            start_drainer(connection, slot, f"next-{time.time_ns() // 1_000_000}")
            return handled
        if time.monotonic() - refreshed > DRAINER_TTL_S / 4:
            connection.expire(flag, DRAINER_TTL_S)  # still here: ingestion must not start a second one
            refreshed = time.monotonic()


def _claim_next(now: datetime) -> int | None:
    """Claim the oldest pending event nobody else is claiming (its row lock skipped by the others)."""
    t = WebhookEvent.__table__
    oldest = (select(t.c.id).where(t.c.status == EventStatus.PENDING).order_by(t.c.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    return _claim_where(now, t.c.id == oldest, t.c.status == EventStatus.PENDING)


def _pending_exists() -> bool:
    t = WebhookEvent.__table__
    found = db.session.scalar(select(exists().where(t.c.status == EventStatus.PENDING)))
    db.session.rollback()
    return bool(found)


def _claim(row_id: int, now: datetime) -> bool:
    t = WebhookEvent.__table__
    return _claim_where(now, t.c.id == row_id, t.c.status.in_((EventStatus.PENDING, EventStatus.FAILED))) is not None


def _claim_where(now: datetime, *conditions) -> int | None:
    """Move the row the conditions pick to processing (one more attempt), committed; its id, or None if none."""
    # The status guard is the lock: of two workers, the second's UPDATE matches no row once the first committed.
    t = WebhookEvent.__table__
    claimed = db.session.execute(
        update(t).where(*conditions)
        .values(status=EventStatus.PROCESSING.value, attempts=t.c.attempts + 1, processed_at=now)
        .returning(t.c.id)).scalar()
    db.session.commit()
    return claimed


def _incoming(row: WebhookEvent, now: datetime) -> Incoming:
    payload = row.payload if isinstance(row.payload, dict) else {}
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    created = payload.get("created")
    livemode, account = payload.get("livemode"), payload.get("account")
    return Incoming(row_id=row.id, stripe_event_id=row.stripe_event_id, type=row.type,
                    obj=data.get("object") or {}, previous=data.get("previous_attributes") or {},
                    created=datetime.fromtimestamp(int(created), timezone.utc) if created else None, now=now,
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


def _finish(row_id: int, result: Result, now: datetime) -> str:
    t = WebhookEvent.__table__
    values: dict[str, Any] = {"status": result.status.value, "last_error": result.note, "processed_at": now}
    if result.tenant_id is not None:
        values["tenant_id"] = result.tenant_id
    db.session.execute(update(t).where(t.c.id == row_id).values(**values))
    db.session.commit()
    return result.status.value


def _mark_failed(row_id: int, err: Exception, now: datetime) -> str:
    t = WebhookEvent.__table__
    message = f"{type(err).__name__}: {err}"[:2000]
    db.session.execute(update(t).where(t.c.id == row_id)
                       .values(status=EventStatus.FAILED.value, last_error=message, processed_at=now))
    db.session.commit()
    return EventStatus.FAILED.value


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
    ours = str((obj.get("metadata") or {}).get("invoice_id") or "")
    if not ours.isdigit():
        return None
    stmt = select(Invoice).where(Invoice.id == int(ours), Invoice.stripe_invoice_id.is_(None))
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
    before = (ev.previous.get("invoice_settings") or {}) if isinstance(ev.previous, dict) else {}
    after = ev.obj.get("invoice_settings") or {}
    if "default_payment_method" not in before:
        return _processed("the default payment method did not change")
    new_pm = _ref(after.get("default_payment_method"))
    if new_pm is None or new_pm == _ref(before.get("default_payment_method")):
        return _processed("no new default payment method")
    return _card_changed(ev, ev.obj.get("id"), new_pm)


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
