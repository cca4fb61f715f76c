"""Integrations: service tokens, push endpoints and the entitlements outbox, delivered with retries.

Tokens are shown once and stored as SHA-256 hashes (256-bit random, so a fast hash is safe and lets us look them up
by hash). Events are written by app/services/entitlements.py in the transaction that changed the tenant: one
`entitlement_events` row (its `body` is the exact JSON every attempt sends, so the id never changes) and one
`integration_deliveries` row per active endpoint. The deliverer (an RQ job woken after such a commit, plus a
periodic sweep) sends each endpoint's deliveries in order, one endpoint at a time per process (a lease on the
endpoint row), and stops at the first failure: the oldest undelivered event is retried with back-off and the ones
after it wait behind it, so a receiver never sees an older state after a newer one.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import bindparam, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app import queue
from app.extensions import db, rq
from app.models import (ApiKey, AuditLog, DeliveryStatus, EntitlementEvent, IntegrationDelivery, IntegrationEndpoint,
                        ServiceToken)
from app.services.clock import utcnow
from app.services.tenants import hash_api_key

log = logging.getLogger(__name__)

TOKEN_PREFIX = "sp_svc_"
SCOPES = ("entitlements:read",)
# last_used_at is shown by the minute: write it at most once a minute per token, not on every request.
TOKEN_USED_EVERY = timedelta(seconds=60)
EVENT_TYPE = "entitlements.updated"
SIGNATURE_HEADER = "ServicePro-Signature"
WAKE = "entitlements_wake"  # session.info: this transaction queued deliveries
WAKE_KEY = "servicepro:entitlements:wake"  # Redis: deliveries were queued since the deliverer last looked
LEASE = timedelta(seconds=60)
BATCH = 100
TIMEOUT = (3.05, 10)  # connect, read (seconds)
BACKOFF_BASE_S, BACKOFF_MAX_S = 10, 600


class IntegrationError(ValueError):
    """An integration could not be set up as asked; `field` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _audit(actor_user_id: int | None, action: str, details: dict[str, Any], now: datetime) -> None:
    db.session.add(AuditLog(actor_user_id=actor_user_id, tenant_id=None, action=action, details=details,
                            created_at=now))


# -- service tokens ------------------------------------------------------------------------------------------

def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(name: str, scopes: list[str] | tuple[str, ...], *, actor_user_id: int | None = None,
                 now: datetime | None = None) -> tuple[ServiceToken, str]:
    """Issue a service token; return (row, plaintext shown once); audit-logged, commits."""
    name = (name or "").strip()
    if not name:
        raise IntegrationError("name", "Give the token a name (which service uses it).")
    if len(name) > 120:
        raise IntegrationError("name", "Keep the name under 120 characters.")
    scopes = sorted(set(scopes or ()))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise IntegrationError("scope", f"Choose a scope among: {', '.join(SCOPES)}.")
    now = now or utcnow()
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ServiceToken(name=name, scopes=" ".join(scopes), prefix=plaintext[:12], token_hash=hash_token(plaintext),
                         created_by_user_id=actor_user_id, created_at=now)
    db.session.add(token)
    db.session.flush()
    _audit(actor_user_id, "service_token.create", {"token_id": token.id, "name": name, "scopes": scopes}, now)
    db.session.commit()
    return token, plaintext


def revoke_token(token_id: int, *, actor_user_id: int | None = None,
                 now: datetime | None = None) -> ServiceToken | None:
    """Revoke a token at once (idempotent); None when there is no such token; commits."""
    token = db.session.scalar(select(ServiceToken).where(ServiceToken.id == token_id).with_for_update()
                              .execution_options(populate_existing=True))
    if token is None:
        db.session.rollback()
        return None
    if token.revoked_at is None:
        now = now or utcnow()
        token.revoked_at = now
        _audit(actor_user_id, "service_token.revoke", {"token_id": token.id, "name": token.name}, now)
    db.session.commit()
    return token


@dataclass(frozen=True)
class TokenUse:
    token_id: int
    name: str
    scopes: tuple[str, ...]


@functools.cache
def _live_token():
    # Built once: every service request runs it (a Core statement skips the ORM's per-call work).
    t = ServiceToken.__table__
    return select(t.c.id, t.c.name, t.c.scopes, t.c.last_used_at).where(t.c.token_hash == bindparam("token_hash"),
                                                                        t.c.revoked_at.is_(None))


def use_token(plaintext: str, now: datetime | None = None) -> TokenUse | None:
    """The non-revoked token with this plaintext, or None; records last_used_at (at most once a minute)."""
    row = db.session.connection().execute(_live_token(), {"token_hash": hash_token(plaintext)}).first()
    if row is None:
        return None
    now = now or utcnow()
    stale = now - TOKEN_USED_EVERY
    if row.last_used_at is None or row.last_used_at < stale:
        # One conditional UPDATE, committed at once: concurrent requests write once, most requests not at all.
        db.session.execute(update(ServiceToken)
                           .where(ServiceToken.id == row.id,
                                  or_(ServiceToken.last_used_at.is_(None), ServiceToken.last_used_at < stale))
                           .values(last_used_at=now).execution_options(synchronize_session=False))
        db.session.commit()
    return TokenUse(row.id, row.name, tuple(row.scopes.split()))


def is_tenant_api_key(plaintext: str) -> bool:
    """Whether this is a live tenant API key (refused here with 403 rather than 401: right key, wrong door)."""
    return db.session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(plaintext),
                                                     ApiKey.revoked_at.is_(None))
                             .execution_options(skip_tenant_scope=True)) is not None


# -- endpoints -----------------------------------------------------------------------------------------------

def _valid_url(url: str) -> str:
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IntegrationError("url", "Enter an absolute http:// or https:// URL.")
    if len(url) > 2000:
        raise IntegrationError("url", "Keep the URL under 2,000 characters.")
    return url


def add_endpoint(url: str, secret: str | None = None, *, actor_user_id: int | None = None,
                 now: datetime | None = None) -> tuple[IntegrationEndpoint, str]:
    """Register a push endpoint; return (row, signing secret) — generated when none is given; commits."""
    url = _valid_url(url)
    secret = (secret or "").strip() or "whsec_" + secrets.token_urlsafe(24)
    if len(secret) > 200:
        raise IntegrationError("secret", "Keep the secret under 200 characters.")
    now = now or utcnow()
    endpoint = IntegrationEndpoint(url=url, secret=secret, created_by_user_id=actor_user_id, created_at=now)
    db.session.add(endpoint)
    db.session.flush()
    _audit(actor_user_id, "integration_endpoint.add", {"endpoint_id": endpoint.id, "url": url}, now)
    db.session.commit()
    return endpoint, secret


def set_endpoint_enabled(endpoint_id: int, enabled: bool, *, actor_user_id: int | None = None,
                         now: datetime | None = None) -> IntegrationEndpoint | None:
    """Disable an endpoint (its queued deliveries wait; new events skip it) or enable it again; commits."""
    endpoint = db.session.get(IntegrationEndpoint, endpoint_id, with_for_update=True, populate_existing=True)
    if endpoint is None:
        db.session.rollback()
        return None
    now = now or utcnow()
    if enabled == (endpoint.disabled_at is not None):
        endpoint.disabled_at = None if enabled else now
        _audit(actor_user_id, "integration_endpoint." + ("enable" if enabled else "disable"),
               {"endpoint_id": endpoint.id, "url": endpoint.url}, now)
    db.session.commit()
    if enabled:
        wake_deliverer()
    return endpoint


# -- the outbox ----------------------------------------------------------------------------------------------

def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def event_body(event_id: str, doc: dict[str, Any], now: datetime) -> str:
    """The exact JSON an event is delivered as (stored once, so every retry sends the same bytes)."""
    return json.dumps({"id": event_id, "type": EVENT_TYPE, "created": int(now.timestamp()), "data": doc},
                      separators=(",", ":"), sort_keys=True)


def active_endpoint_ids(session: Session | None = None) -> list[int]:
    """Ids of the endpoints that receive new events."""
    return list((session or db.session).scalars(
        select(IntegrationEndpoint.id).where(IntegrationEndpoint.disabled_at.is_(None)).order_by(IntegrationEndpoint.id)))


def record_events(docs: list[dict[str, Any]], endpoint_ids: list[int], *, now: datetime,
                  session: Session | None = None) -> int:
    """Queue one `entitlements.updated` event per document for each endpoint (in the caller's transaction)."""
    session = session or db.session
    if not endpoint_ids or not docs:
        return 0
    events = []
    for doc in docs:
        event_id = new_event_id()
        events.append({"id": event_id, "tenant_id": doc["tenant_id"], "type": EVENT_TYPE,
                       "body": event_body(event_id, doc, now), "created_at": now})
    session.execute(insert(EntitlementEvent), events)
    session.execute(insert(IntegrationDelivery), [
        {"event_id": ev["id"], "endpoint_id": endpoint_id, "status": DeliveryStatus.PENDING, "attempts": 0,
         "next_attempt_at": now, "created_at": now}
        for endpoint_id in endpoint_ids for ev in events])
    session.info[WAKE] = True
    return len(events)


def wake_deliverer() -> None:
    """Ask for a delivery run now (one job at a time; a run in progress looks again before it stops)."""
    try:
        rq.connection.set(WAKE_KEY, "1", ex=3600)
        queue.enqueue_entitlements_delivery()
    except Exception as err:  # noqa: BLE001 - Redis down must not fail the change; the periodic sweep delivers
        log.warning("could not queue the entitlements deliverer (%s); the periodic sweep will deliver", err)


def replay_delivery(delivery_id: int, *, actor_user_id: int | None = None,
                    now: datetime | None = None) -> IntegrationDelivery | None:
    """Send a delivery again now — the same event, same id (a delivered one is queued again); commits."""
    delivery = db.session.get(IntegrationDelivery, delivery_id, with_for_update=True, populate_existing=True)
    if delivery is None:
        db.session.rollback()
        return None
    now = now or utcnow()
    delivery.status, delivery.next_attempt_at = DeliveryStatus.PENDING, now
    _audit(actor_user_id, "integration_delivery.replay",
           {"delivery_id": delivery.id, "event_id": delivery.event_id, "endpoint_id": delivery.endpoint_id}, now)
    db.session.commit()
    wake_deliverer()
    return delivery


# -- delivery ------------------------------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ServicePro-Signature header: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff(attempts: int) -> timedelta:
    """How long to wait after the n-th failed attempt: 10 s, doubling, at most 10 minutes."""
    return timedelta(seconds=min(BACKOFF_BASE_S * 2 ** max(0, attempts - 1), BACKOFF_MAX_S))


@dataclass
class DeliveryRun:
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def deliver_due(now: datetime | None = None, *, budget: int = 5000) -> DeliveryRun:
    """Send every due delivery of every active endpoint, each endpoint in order, until its first failure."""
    now = now or utcnow()
    result = DeliveryRun()
    pending = (select(IntegrationDelivery.id)
               .where(IntegrationDelivery.endpoint_id == IntegrationEndpoint.id,
                      IntegrationDelivery.status == DeliveryStatus.PENDING))
    endpoint_ids = list(db.session.scalars(select(IntegrationEndpoint.id)
                                           .where(IntegrationEndpoint.disabled_at.is_(None), exists(pending))
                                           .order_by(IntegrationEndpoint.id)))
    db.session.commit()
    with requests.Session() as http:
        for endpoint_id in endpoint_ids:
            if result.delivered >= budget:
                break
            _drain_endpoint(endpoint_id, http, now, budget, result)
    return result


def deliver_until_idle(now: datetime | None = None, *, rounds: int = 20) -> int:
    """The woken job: deliver, and look again while new events were queued meanwhile; return deliveries made."""
    total = 0
    for _ in range(rounds):
        try:
            rq.connection.delete(WAKE_KEY)
        except Exception:  # noqa: BLE001 - without Redis, one round is all we can know to do
            log.warning("Redis unavailable: one delivery round only")
            return total + deliver_due(now).delivered
        total += deliver_due(now).delivered
        try:
            if not rq.connection.exists(WAKE_KEY):
                break
        except Exception:  # noqa: BLE001
            break
    return total


def _take_lease(endpoint_id: int) -> bool:
    # Real time, not the injected `now`: a lease is about this process being alive.
    real = utcnow()
    got = db.session.execute(
        update(IntegrationEndpoint)
        .where(IntegrationEndpoint.id == endpoint_id, IntegrationEndpoint.disabled_at.is_(None),
               or_(IntegrationEndpoint.lease_until.is_(None), IntegrationEndpoint.lease_until < real))
        .values(lease_until=real + LEASE).returning(IntegrationEndpoint.id)
        .execution_options(synchronize_session=False)).first()
    db.session.commit()
    return got is not None


def _renew_lease(endpoint_id: int) -> datetime:
    real = utcnow()
    db.session.execute(update(IntegrationEndpoint).where(IntegrationEndpoint.id == endpoint_id)
                       .values(lease_until=real + LEASE).execution_options(synchronize_session=False))
    db.session.commit()
    return real


def _release_lease(endpoint_id: int) -> None:
    db.session.rollback()
    db.session.execute(update(IntegrationEndpoint).where(IntegrationEndpoint.id == endpoint_id)
                       .values(lease_until=None).execution_options(synchronize_session=False))
    db.session.commit()


def _drain_endpoint(endpoint_id: int, http: requests.Session, now: datetime, budget: int,
                    result: DeliveryRun) -> None:
    if not _take_lease(endpoint_id):
        return  # another deliverer is on it
    leased_at = utcnow()
    try:
        while result.delivered < budget:
            rows = db.session.execute(
                select(IntegrationDelivery.id, IntegrationDelivery.attempts, IntegrationDelivery.next_attempt_at,
                       EntitlementEvent.body, IntegrationEndpoint.url, IntegrationEndpoint.secret,
                       IntegrationEndpoint.disabled_at)
                .join(EntitlementEvent, EntitlementEvent.id == IntegrationDelivery.event_id)
                .join(IntegrationEndpoint, IntegrationEndpoint.id == IntegrationDelivery.endpoint_id)
                .where(IntegrationDelivery.endpoint_id == endpoint_id,
                       IntegrationDelivery.status == DeliveryStatus.PENDING)
                .order_by(IntegrationDelivery.id).limit(BATCH)
                .execution_options(skip_tenant_scope=True)).all()
            db.session.commit()
            if not rows:
                return
            for row in rows:
                if row.disabled_at is not None or row.next_attempt_at > now:
                    return  # disabled meanwhile, or the oldest is backing off: the rest wait behind it
                if not _attempt(http, row, now, result):
                    return
                if utcnow() - leased_at > LEASE / 2:
                    leased_at = _renew_lease(endpoint_id)
    finally:
        _release_lease(endpoint_id)


def _attempt(http: requests.Session, row, now: datetime, result: DeliveryRun) -> bool:
    body = row.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "ServicePro-Webhooks/1.0",
               SIGNATURE_HEADER: sign(row.secret, int(time.time()), body)}
    code, error = None, None
    try:
        resp = http.post(row.url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
        code = resp.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {resp.text[:300]}".strip()
    except requests.RequestException as err:
        error = f"{type(err).__name__}: {err}"
    values: dict[str, Any] = {"attempts": row.attempts + 1, "last_attempt_at": now, "last_status_code": code,
                              "last_error": error[:1000] if error else None}
    if error is None:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
        result.delivered += 1
    else:
        values["next_attempt_at"] = now + backoff(row.attempts + 1)
        result.failed += 1
        result.errors.append(error)
        log.warning("entitlements delivery %s to %s failed (attempt %s): %s", row.id, row.url, row.attempts + 1,
                    error)
    db.session.execute(update(IntegrationDelivery).where(IntegrationDelivery.id == row.id).values(**values)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return error is None


# -- the Integrations page's read model ------------------------------------------------------------------------

@dataclass
class Overview:
    tokens: list[ServiceToken]
    endpoints: list[tuple[IntegrationEndpoint, int]]  # (endpoint, deliveries pending)
    deliveries: list[Any]  # recent deliveries with their event's tenant and the endpoint's URL


def overview(limit: int = 50) -> Overview:
    """Tokens, endpoints with their backlog, and the latest deliveries (pending ones first)."""
    tokens = list(db.session.scalars(select(ServiceToken).order_by(ServiceToken.revoked_at.is_not(None),
                                                                   ServiceToken.id.desc())))
    pending = dict(db.session.execute(
        select(IntegrationDelivery.endpoint_id, func.count())
        .where(IntegrationDelivery.status == DeliveryStatus.PENDING).group_by(IntegrationDelivery.endpoint_id)).all())
    endpoints = [(ep, pending.get(ep.id, 0)) for ep in
                 db.session.scalars(select(IntegrationEndpoint).order_by(IntegrationEndpoint.id))]
    deliveries = db.session.execute(
        select(IntegrationDelivery.id, IntegrationDelivery.event_id, IntegrationDelivery.status,
               IntegrationDelivery.attempts, IntegrationDelivery.next_attempt_at, IntegrationDelivery.last_attempt_at,
               IntegrationDelivery.last_status_code, IntegrationDelivery.last_error, IntegrationDelivery.delivered_at,
               IntegrationDelivery.created_at, EntitlementEvent.tenant_id, IntegrationEndpoint.url)
        .join(EntitlementEvent, EntitlementEvent.id == IntegrationDelivery.event_id)
        .join(IntegrationEndpoint, IntegrationEndpoint.id == IntegrationDelivery.endpoint_id)
        .order_by((IntegrationDelivery.status == DeliveryStatus.PENDING).desc(), IntegrationDelivery.id.desc())
        .limit(limit).execution_options(skip_tenant_scope=True)).all()
    return Overview(tokens=tokens, endpoints=endpoints, deliveries=deliveries)
