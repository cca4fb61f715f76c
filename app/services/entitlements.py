"""What a tenant may use right now — the one place telephony, SMS and the admin UI ask — and noticing when it changes.

A tenant's entitlements are a pure function of `tenants.status` and `tenants.dunning_stage`. Other services read
them as a document (`document`: the three entitlements, the stage and `updated_at`) and are told when it changes.

How a change is noticed without the code that makes it (dunning, payments, admin actions) knowing about it:
`tenants.entitlements_state` holds "<status>:<dunning_stage>" as services were last told, and a partial index holds
exactly the tenants whose current values differ (`ENTITLEMENTS_STALE`). Session hooks note that a transaction may
have changed a tenant — an ORM flush of a tenant's status or stage, or any UPDATE statement on `tenants`, Core or
text (the nightly pass moves stages with a raw `UPDATE tenants … FROM jsonb_to_recordset`) — and just before that
transaction commits, `publish_changes` reads the stale tenants through the index, stamps `entitlements_updated_at`
where the document changed, and writes the outbox rows (app/services/integrations.py). So an event is exactly as
durable as the change it announces: both commit or neither does. Anything changed behind the ORM's back (psql, a
bulk load) is picked up by the periodic sweep, which runs the same check.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from flask import Flask
from sqlalchemy import bindparam, event, inspect, select, text, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from app.extensions import db
from app.models import DunningStage, Tenant, TenantStatus
from app.models.tenancy import ENTITLEMENTS_STALE
from app.services.clock import utcnow
from app.services.integrations import WAKE, active_endpoint_ids, record_events, wake_deliverer
from app.services.notifications import among

log = logging.getLogger(__name__)

_CHECK = "entitlements_check"  # session.info: this transaction may have changed a tenant's entitlements
_INTERNAL = "entitlements_internal"  # execution option on our own statements (they never re-trigger a check)
_TENANT_UPDATE = re.compile(r"\bUPDATE\s+tenants\b", re.IGNORECASE)
_CHUNK = 5000  # ids per IN (...) on SQLite
MAX_PAGE = 1000


@dataclass(frozen=True)
class Entitlements:
    telephony: bool
    sms_outbound: bool
    admin_access: str  # "full" | "billing_only"

    def as_dict(self) -> dict:
        return asdict(self)


def entitlements_from(status: str, stage: str) -> Entitlements:
    """Compute entitlements from a tenant's status and dunning stage."""
    if status != TenantStatus.ACTIVE:
        return Entitlements(telephony=False, sms_outbound=False, admin_access="billing_only")
    suspended = stage in (DunningStage.SUSPENDED, DunningStage.RESTRICTED)
    return Entitlements(
        telephony=not suspended,
        sms_outbound=not suspended,
        admin_access="billing_only" if stage == DunningStage.RESTRICTED else "full",
    )


def entitlements_for(tenant: Tenant) -> Entitlements:
    """Compute a tenant's entitlements from its status and dunning stage."""
    return entitlements_from(tenant.status, tenant.dunning_stage)


# -- the document other services read ---------------------------------------------------------------------

def iso(moment: datetime) -> str:
    """An instant as ISO 8601 in UTC with a Z (safe to paste into a query string, unlike +00:00)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=64)
def _visible(status: str, stage: str) -> tuple[tuple[str, Any], ...]:
    """What a service sees of a status and stage (a handful of combinations, computed once each)."""
    return (*entitlements_from(status, stage).as_dict().items(), ("dunning_stage", str(stage)))


def document(tenant_id: int, status: str, stage: str, updated_at: datetime) -> dict[str, Any]:
    """The entitlements document of one tenant, as the API answers and push events carry it."""
    return {"tenant_id": tenant_id, **dict(_visible(status, stage)), "updated_at": iso(updated_at)}


def encode(payload: Any) -> bytes:
    """Compact JSON with sorted keys: the same document always gives the same bytes (and ETag)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def etag_of(body: bytes) -> str:
    """A strong ETag (unquoted) for a response body."""
    return hashlib.sha256(body).hexdigest()[:32]


_COLUMNS = (Tenant.id, Tenant.status, Tenant.dunning_stage, Tenant.entitlements_updated_at)


@functools.cache
def _one_tenant():
    # Built once: the hot path of services' polling (a Core statement skips the ORM's per-call work).
    t = Tenant.__table__
    return select(t.c.id, t.c.status, t.c.dunning_stage, t.c.entitlements_updated_at).where(
        t.c.id == bindparam("tenant_id"))


def read_one(tenant_id: int) -> dict[str, Any] | None:
    """One tenant's document, or None when there is no such tenant."""
    row = db.session.connection().execute(_one_tenant(), {"tenant_id": tenant_id}).first()
    return document(*row) if row else None


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(updated_at: datetime, tenant_id: int) -> str:
    raw = json.dumps([iso(updated_at), tenant_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(updated_at, tenant_id) of the last row of the previous page; BadCursor when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, tenant_id = json.loads(raw)
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None or not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
            raise ValueError
        return moment, tenant_id
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise BadCursor("invalid cursor") from None


def read_page(*, limit: int = 100, cursor: str | None = None, changed_since: datetime | None = None) -> Page:
    """Every tenant's document in a stable order (last change, then id), one page; BadCursor on a bad cursor."""
    limit = max(1, min(limit, MAX_PAGE))
    query = select(*_COLUMNS).order_by(Tenant.entitlements_updated_at, Tenant.id).limit(limit + 1)
    if changed_since is not None:
        query = query.where(Tenant.entitlements_updated_at >= changed_since)
    if cursor:
        after = decode_cursor(cursor)
        query = query.where(tuple_(Tenant.entitlements_updated_at, Tenant.id) > tuple_(*after))
    rows = db.session.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return Page(data=[document(*r) for r in rows], has_more=more,
                next_cursor=encode_cursor(last.entitlements_updated_at, last.id) if more and last else None)


# -- noticing changes ------------------------------------------------------------------------------------------

def state_key(status: str, stage: str) -> str:
    """What `tenants.entitlements_state` holds for a status and stage."""
    return f"{status}:{stage}"


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    if db.engine.dialect.name == "postgresql":
        yield ids
        return
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def publish_changes(now: datetime | None = None, *, session: Session | None = None) -> int:
    """Stamp and announce every tenant whose entitlements changed since last told; return how many changed.

    Runs inside the caller's transaction (does not commit): the stamp and the outbox rows commit with the change.
    """
    session = session or db.session
    now = now or utcnow()
    query = (select(Tenant.id, Tenant.status, Tenant.dunning_stage, Tenant.entitlements_state)
             .where(text(ENTITLEMENTS_STALE)).order_by(Tenant.id)
             .execution_options(skip_tenant_scope=True, **{_INTERNAL: True}))
    if db.engine.dialect.name == "postgresql":
        # Rows another transaction holds are being changed by it, and it announces them when it commits.
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    if not rows:
        return 0
    changed, unchanged = [], []
    for tenant_id, status, stage, told in rows:
        old_status, _, old_stage = told.partition(":")
        if _visible(old_status, old_stage) == _visible(status, stage):
            unchanged.append(tenant_id)  # e.g. a restricted tenant disabled: nothing a service can see changed
        else:
            changed.append(tenant_id)
    told_now = {"entitlements_state": Tenant.status + ":" + Tenant.dunning_stage}
    for ids, values in ((changed, {**told_now, "entitlements_updated_at": now}), (unchanged, told_now)):
        for chunk in _chunks(ids):
            session.execute(update(Tenant).where(among(Tenant.id, chunk)).values(**values)
                            .execution_options(synchronize_session=False, **{_INTERNAL: True}))
    endpoint_ids = active_endpoint_ids(session) if changed else []
    if endpoint_ids:
        by_id = {r.id: r for r in rows}
        docs = [document(i, by_id[i].status, by_id[i].dunning_stage, now) for i in changed]
        record_events(docs, endpoint_ids, now=now, session=session)
    if changed:
        log.info("entitlements changed for %s tenants (%s endpoints told)", len(changed), len(endpoint_ids))
    return len(changed)


def _note_statement(state) -> None:
    """do_orm_execute: any UPDATE of tenants (ORM, Core or text) may change entitlements."""
    if state.execution_options.get(_INTERNAL):
        return
    statement = state.statement
    if state.is_update:
        if getattr(statement, "table", None) is not None and getattr(statement.table, "name", None) == "tenants":
            state.session.info[_CHECK] = True
    elif isinstance(statement, TextClause) and _TENANT_UPDATE.search(statement.text):
        state.session.info[_CHECK] = True


def _baseline_new_tenants(session: Session, _context, _instances) -> None:
    """before_flush: a new tenant starts as announced (creating a tenant is not a change of its entitlements)."""
    for obj in session.new:
        if isinstance(obj, Tenant):
            obj.entitlements_state = state_key(obj.status or TenantStatus.ACTIVE, obj.dunning_stage or DunningStage.OK)


def _note_flush(session: Session, _context) -> None:
    """after_flush: a tenant's status or dunning stage changed through the ORM."""
    if session.info.get(_CHECK):
        return
    for obj in session.dirty:
        if isinstance(obj, Tenant):
            attrs = inspect(obj).attrs
            if attrs.status.history.has_changes() or attrs.dunning_stage.history.has_changes():
                session.info[_CHECK] = True
                return


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # the outermost commit announces
    session.flush()  # ORM changes not yet flushed are part of this commit: let _note_flush see them
    if session.info.pop(_CHECK, False):
        publish_changes(session=session)


def _after_commit(session: Session) -> None:
    if not session.in_nested_transaction() and session.info.pop(WAKE, False):
        wake_deliverer()


def _after_transaction_end(session: Session, transaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CHECK, None)
        session.info.pop(WAKE, None)


_LISTENERS = (("do_orm_execute", _note_statement), ("before_flush", _baseline_new_tenants),
              ("after_flush", _note_flush), ("before_commit", _before_commit), ("after_commit", _after_commit),
              ("after_transaction_end", _after_transaction_end))


def init_app(app: Flask) -> None:
    """Listen to every session for changes of a tenant's entitlements (once per process)."""
    for name, fn in _LISTENERS:
        if not event.contains(Session, name, fn):
            event.listen(Session, name, fn)
