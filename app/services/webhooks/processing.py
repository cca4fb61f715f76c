"""Processing: claim stored events, give each to its handler, record the result — once, in any order.

A drainer (`drain`, the job app.jobs.drain_webhook_events) works through the pending events: it claims the
oldest rows in one statement that also reads them (SKIP LOCKED, so drainers share a backlog; the batch starts at
one event and doubles while a backlog lasts), lets the handlers' QUICK decisions settle what they can for a whole
batch without the ORM, gives every other event to its handler (HANDLERS), and records all results in one
statement, all through one connection of its own. A drainer's claimed rows carry its token (`claimed_by`),
leased in Redis while it runs, so the rows of a drainer that died go back to pending within a minute instead
of waiting for the stale rule. `process_event` processes one given row (retries and replays): a row is claimed
by moving it pending/failed → processing in one guarded UPDATE, so it is processed once. An exception marks the
row failed (attempts, last_error); `retry_failed` re-queues it with exponential back-off and leaves it to a
person after MAX_ATTEMPTS; `replay_event` is the root admin's button. Jobs are queued through app/queue.py.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

import orjson
from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Connection, Engine, Text, bindparam, cast, exists, func, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from app import queue
from app import stripe_gateway as gateway
from app.extensions import db, rq
from app.logs import log_context
from app.models import AuditLog, WebhookEvent, utcnow
from app.services.webhooks.events import EventStatus, Incoming, Result, failed, ignored, incoming
from app.services.webhooks.handlers import HANDLERS, QUICK
from app.stripe_objects import id_of
from app.workers import lease

log = logging.getLogger(__name__)

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


# -- waking drainers: one Redis flag per slot -------------------------------------------------------------

def wake_drainer(connection: Redis, slot: int, tag: str) -> bool:
    """See that drainer `slot` is running (start its job unless its flag says it is); False if Redis is down.

    One SET NX per delivery while a drainer is at work: queuing a job per event would cost receipt more than
    storing it. A stored event whose wake-up failed is still pending: the stuck-rows pass wakes the drainers for it.
    """
    try:
        _start_unless_running(connection, slot, tag)
    except RedisError:
        log.exception("could not wake webhook drainer %s; the stuck-rows pass will", slot)
        return False
    return True


def wake_drainers() -> int:
    """Start every drainer that is not running (the stuck-rows pass, for events left pending); return how many."""
    tag = f"sweep-{time.time_ns() // 1_000_000}"
    return sum(_start_unless_running(rq.connection, slot, tag) for slot in range(drainer_count(current_app)))


def drainer_count(app: Flask) -> int:
    return max(1, int(app.config.get("WEBHOOK_DRAINERS", DRAINERS)))


def _start_unless_running(connection: Redis, slot: int, tag: str) -> bool:
    """Take drainer `slot`'s flag and queue its job; False when the flag says it is running already."""
    if not connection.set(_drainer_flag(slot), "1", nx=True, ex=DRAINER_TTL_S):
        return False
    queue.start_webhook_drainer(connection, slot, tag)
    return True


def _drainer_flag(slot: int) -> str:
    return f"servicepro:webhooks:drainer:{slot}"


# -- one event: claim, dispatch, record ------------------------------------------------------------------

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
    ev = incoming(row.id, row.stripe_event_id, row.type, row.payload, now)
    db.session.rollback()  # end the read; handlers run their own transactions
    result = run_handler(ev)
    t = WebhookEvent.__table__
    values: dict[str, Any] = {"status": result.status.value, "last_error": result.note, "processed_at": now}
    if result.tenant_id is not None:
        values["tenant_id"] = result.tenant_id
    db.session.execute(update(t).where(t.c.id == event_row_id).values(**values))
    db.session.commit()
    return result.status.value


def run_handler(ev: Incoming) -> Result:
    """Apply one event with its handler (after the account and type checks); a failure is a FAILED result."""
    try:
        foreign = _not_for_this_account(ev)
        if foreign is not None:
            return ignored(foreign)
        handler = HANDLERS.get(ev.type)
        if handler is None:
            return ignored(f"event type {ev.type} is not handled")
        return handler(ev)
    except Exception as err:  # noqa: BLE001 - any failure is recorded on the row and retried with back-off
        db.session.rollback()
        log.warning("webhook event %s (%s) failed: %s", ev.stripe_event_id, ev.type, err,
                    exc_info=not isinstance(err, gateway.GatewayError))
        return failed(f"{type(err).__name__}: {err}")


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
    d = _Drainer(f"drain-{slot}-{uuid.uuid4().hex[:20]}", db.engine)
    with lease(rq.connection, _claim_lease(d.token), name=f"lease-{d.token}"):
        reset = _DRAINER.set(d)
        try:
            yield d
        finally:
            _DRAINER.reset(reset)
            try:
                _release(d, None)
            except Exception:  # noqa: BLE001 - the lease lapses and another drainer or the stuck-rows pass frees them
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
                queue.start_webhook_drainer(connection, slot, f"next-{time.time_ns() // 1_000_000}")
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
    return sorted((incoming(row_id, event_id, type_, _loads(payload), now)
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
            key = (ev.type.split(".", 1)[0], id_of(ev.obj.get("id")))
            (later if key in seen else first).append(ev)
            seen.add(key)
        for i, ev in enumerate(first):
            if time.monotonic() > deadline and done:
                _release(d, [e.row_id for e in first[i:] + later])
                return done
            with log_context(webhook_event_id=ev.row_id):
                _record(d, [(ev, run_handler(ev))])
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
            quick.append((ev, ignored(foreign)))
        elif ev.type not in HANDLERS:  # stored before the type was dropped at receipt, or replayed
            quick.append((ev, ignored(f"event type {ev.type} is not handled")))
        elif ev.type in QUICK:
            groups.setdefault(QUICK[ev.type], []).append(ev)
        else:
            slow.append(ev)
    for decide, group in groups.items():
        decided = decide(d.execute, group)
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
    """Put back the events held by drainers that died (their lease lapsed); return how many (the stuck-rows pass)."""
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



# -- retries, replay and the root page -------------------------------------------------------------------

def backoff(attempts: int) -> timedelta:
    """How long a failed event waits after its `attempts`-th attempt (doubling, capped)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, attempts - 1)))


def retry_failed(*, now: datetime | None = None) -> int:
    """Re-queue failed events whose back-off has elapsed, interrupted and lost ones; return how many were queued."""
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
            queue.enqueue_webhook_event(row_id)
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
    try:
        queue.enqueue_webhook_event(event_row_id)
    except RedisError as err:
        log.exception("could not queue webhook event %s; the retry sweep will", event_row_id)
        raise RuntimeError("could not queue the replay (Redis unavailable); the retry sweep will process it") from err
    return EventStatus.PENDING.value


def failed_events(limit: int = 50) -> list[WebhookEvent]:
    """Failed events for the root page, newest first (each can be replayed)."""
    return list(db.session.scalars(
        select(WebhookEvent).where(WebhookEvent.status == EventStatus.FAILED)
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc()).limit(limit)))
