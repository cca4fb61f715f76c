"""Usage ingestion and the daily rollups billing is built on."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from flask import current_app
from sqlalchemy import and_, delete, exists, func, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, OperationalError

from app.extensions import db
from app.models import Invoice, InvoiceStatus, PlanPrice, Tenant, UsageEvent, UsageRollupDaily, utcnow
from app.services.clock import billing_tz, day_start_utc, local_day, month_bounds, previous_month

log = logging.getLogger(__name__)

CORE_METRICS = ("voice_minutes", "sms_outbound", "sms_inbound")
# Far beyond any real event (a billion minutes or messages), and small enough that a day's or month's sum of a
# tenant's events stays far inside a 64-bit integer: overflowing it would take billions of rows.
MAX_EVENT_QUANTITY = 10**9


def known_metrics() -> set[str]:
    """Metrics we accept: the core three plus any a plan prices."""
    return set(CORE_METRICS) | set(db.session.scalars(select(PlanPrice.metric).distinct()))


def _insert(table):
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass
class IngestResult:
    accepted: int
    duplicates: int


class UsageRejected(Exception):
    """A batch refused whole; `fields` maps an event's index in the batch to its field errors."""

    def __init__(self, message: str, fields: dict[str, dict[str, list[str]]]):
        super().__init__(message)
        self.message, self.fields = message, fields


class UnbillableEvents(UsageRejected):
    """Events dated where they could never be billed: in the future, too long ago, or in an invoiced month."""


class EventIdConflict(UsageRejected):
    """Event ids already recorded with a different metric, quantity or time."""


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def unbillable_events(tenant: Tenant, events: list[dict], now: datetime) -> dict[str, dict[str, list[str]]]:
    """Field errors for the events of a batch that no invoice could ever count, keyed by index."""
    tz = billing_tz()
    skew = int(current_app.config.get("USAGE_MAX_CLOCK_SKEW_SECONDS", 300))
    latest = now + timedelta(seconds=skew)
    # Older months are never invoiced again (the monthly run bills only the previous month), and months
    # before the tenant existed are never invoiced at all.
    open_since = date(*previous_month(local_day(now, tz)), 1)
    opened = local_day(tenant.created_at, tz).replace(day=1)
    earliest_day = max(open_since, opened)
    reason = "the start of the previous billing month" if earliest_day == open_since else (
        "the start of the month this account was opened")
    earliest = day_start_utc(earliest_day, tz)

    errors: dict[int, str] = {}
    days: dict[int, date] = {}
    for index, event in enumerate(events):
        at = event["occurred_at"]
        if at > latest:
            errors[index] = (f"{_iso(at)} is in the future: more than {skew} seconds after the server's clock "
                             f"({_iso(now)}).")
        elif at < earliest:
            errors[index] = f"{_iso(at)} is before {earliest_day}, {reason}; usage that old can no longer be billed."
        else:
            days[index] = local_day(at, tz)
    if days:
        invoiced = db.session.execute(
            select(Invoice.period_start, Invoice.period_end).where(
                Invoice.tenant_id == tenant.id, Invoice.status != InvoiceStatus.VOID.value,
                Invoice.period_end >= min(days.values()), Invoice.period_start <= max(days.values()))
        ).all()
        for index, day in days.items():
            for first, last in invoiced:
                if first <= day <= last:
                    errors[index] = (f"{_iso(events[index]['occurred_at'])} falls on {day} ({tz.key}), so it "
                                     f"is in {first:%Y-%m}, which has already been invoiced.")
                    break
    return {str(i): {"occurred_at": [errors[i]]} for i in sorted(errors)}


def ingest(tenant: Tenant, events: list[dict], now: datetime | None = None) -> IngestResult:
    """Record a validated batch from the API: refuse unbillable dates, store, roll up days the nightly run has passed.

    Raises UnbillableEvents or EventIdConflict; nothing of the batch is stored then.
    """
    now = now or utcnow()
    errors = unbillable_events(tenant, events, now)
    if errors:
        raise UnbillableEvents("Some events are dated where they can never be billed.", errors)
    result, accepted = _store(tenant, events, now, refuse_conflicts=True)
    # The nightly rollup rebuilds only yesterday and the day before; an older day (still in an open month)
    # would otherwise never count.
    tz = billing_tz()
    settled = local_day(now, tz) - timedelta(days=1)
    for day in sorted({local_day(e["occurred_at"], tz) for e in accepted}):
        if day < settled:
            rollup_day(day, now=now, tenant_id=tenant.id)
    return result


def record_events(tenant: Tenant, events: list[dict], now: datetime | None = None) -> IngestResult:
    """Store validated usage events for a tenant; events already seen (by client id) are skipped.

    The whole batch is one statement: either every new event is stored or none is.
    """
    return _store(tenant, events, now or utcnow())[0]


def _store(tenant: Tenant, events: list[dict], now: datetime, *,
           refuse_conflicts: bool = False) -> tuple[IngestResult, list[dict]]:
    """Insert the batch; with refuse_conflicts, raise EventIdConflict (storing nothing) for a reused id."""
    tz = billing_tz()
    rows = [
        {
            "tenant_id": tenant.id,
            "client_event_id": e["id"],
            "metric": e["metric"],
            "quantity": e["quantity"],
            "occurred_at": e["occurred_at"],
            "day": e["occurred_at"].astimezone(tz).date(),
            "received_at": now,
        }
        for e in events
    ]
    if not rows:
        return IngestResult(0, 0), []
    table = UsageEvent.__table__
    stmt = _insert(table).on_conflict_do_nothing(
        index_elements=["tenant_id", "client_event_id"]
    ).returning(table.c.client_event_id)
    # Parameters apart from the statement: its SQL is compiled once and cached, not per batch of values.
    new_ids = set(db.session.execute(stmt, rows).scalars())
    seen = [(i, e) for i, e in enumerate(events) if e["id"] not in new_ids]
    conflicts = _conflicts(tenant.id, seen) if seen and refuse_conflicts else {}
    if conflicts:
        db.session.rollback()
        raise EventIdConflict("Some event ids were already recorded with different data.", conflicts)
    db.session.commit()
    accepted = [e for e in events if e["id"] in new_ids]
    return IngestResult(accepted=len(accepted), duplicates=len(rows) - len(accepted)), accepted


def _conflicts(tenant_id: int, seen: list[tuple[int, dict]]) -> dict[str, dict[str, list[str]]]:
    """Field errors for re-sent ids whose stored event differs (like a reused Stripe idempotency key)."""
    e = UsageEvent.__table__
    stored = {row.client_event_id: row for row in db.session.execute(
        select(e.c.client_event_id, e.c.metric, e.c.quantity, e.c.occurred_at)
        .where(e.c.tenant_id == tenant_id, e.c.client_event_id.in_([ev["id"] for _, ev in seen]))
    )}
    errors = {}
    for index, event in seen:
        old = stored.get(event["id"])
        if old is None:
            continue  # deleted between the two statements: nothing to compare with
        if (old.metric, old.quantity, old.occurred_at) != (event["metric"], event["quantity"], event["occurred_at"]):
            message = (f"Event {event['id']!r} was already recorded with metric {old.metric}, quantity "
                       f"{old.quantity} and occurred_at {_iso(old.occurred_at)}; an id cannot be reused for "
                       "different data.")
            errors[str(index)] = {"id": [message]}
    return errors


def rollup_day(day: date, now: datetime | None = None, tenant_id: int | None = None) -> int:
    """(Re)build usage_rollups_daily for one day (every tenant's, or one's) from raw events; return rows written.

    Every tenant's day is one set-based upsert. If some tenant's sum does not fit a 64-bit rollup (events
    stored before quantities were bounded), the day is redone in halves of the tenant range until that tenant
    is alone: its rollup is left as it was and logged, and every other tenant's is written.
    """
    now = now or utcnow()
    if tenant_id is not None:
        _lock_tenant_rollups(tenant_id)
        written = _rollup_range(day, now, tenant_id, tenant_id)
    else:
        written = _rollup_range(day, now, None, None)
    db.session.commit()
    return written


def _rollup_range(day: date, now: datetime, low: int | None, high: int | None) -> int:
    """Rebuild the day for tenants low..high (None: unbounded), bisecting around sums that overflow."""
    try:
        with db.session.begin_nested():
            return _rebuild(day, now, low, high)
    except (DataError, OperationalError) as err:
        if not _overflowed(err):
            raise
    e = UsageEvent.__table__
    ids = list(db.session.scalars(_between(select(e.c.tenant_id).where(e.c.day == day), e.c.tenant_id, low, high)
                                  .distinct().order_by(e.c.tenant_id)))
    if len(ids) <= 1:
        log.error("usage rollup of %s skipped for tenant %s: its quantities sum beyond a 64-bit integer",
                  day, ids[0] if ids else low)
        return 0
    middle = len(ids) // 2
    return (_rollup_range(day, now, ids[0], ids[middle - 1])
            + _rollup_range(day, now, ids[middle], ids[-1]))


def _between(stmt, column, low: int | None, high: int | None):
    if low is not None:
        stmt = stmt.where(column >= low)
    if high is not None:
        stmt = stmt.where(column <= high)
    return stmt


def _rebuild(day: date, now: datetime, low: int | None, high: int | None) -> int:
    e = UsageEvent.__table__
    r = UsageRollupDaily.__table__
    agg = _between(
        select(e.c.tenant_id, e.c.day, e.c.metric, func.sum(e.c.quantity).label("quantity"),
               literal(now, r.c.updated_at.type).label("updated_at"))
        .where(e.c.day == day),
        e.c.tenant_id, low, high,
    ).group_by(e.c.tenant_id, e.c.day, e.c.metric)
    ins = _insert(r).from_select(["tenant_id", "day", "metric", "quantity", "updated_at"], agg)
    ins = ins.on_conflict_do_update(
        index_elements=["tenant_id", "day", "metric"],
        set_={"quantity": ins.excluded.quantity, "updated_at": ins.excluded.updated_at},
    )
    result = db.session.execute(ins)
    # Rollups whose events no longer exist (never, today) would otherwise linger after a rebuild.
    db.session.execute(_between(
        delete(r).where(r.c.day == day).where(
            ~exists().where(and_(e.c.tenant_id == r.c.tenant_id, e.c.day == r.c.day, e.c.metric == r.c.metric))),
        r.c.tenant_id, low, high,
    ))
    return max(result.rowcount or 0, 0)


def _overflowed(err: DataError | OperationalError) -> bool:
    # PostgreSQL: "bigint out of range" (SQLSTATE 22003); SQLite: sum() raises "integer overflow".
    return getattr(err.orig, "sqlstate", None) == "22003" or "integer overflow" in str(err.orig)


def _lock_tenant_rollups(tenant_id: int) -> None:
    # Two ingestions rebuilding one tenant's day at once could otherwise let the older snapshot write last.
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                           {"k": f"usage-rollup-{tenant_id}"})


def month_usage(tenant_id: int, year: int, month: int) -> dict[str, int]:
    """Total quantity per metric for a tenant over a calendar month (from rollups)."""
    first, last = month_bounds(year, month)
    rows = db.session.execute(
        select(UsageRollupDaily.metric, func.sum(UsageRollupDaily.quantity))
        .where(UsageRollupDaily.tenant_id == tenant_id, UsageRollupDaily.day.between(first, last))
        .group_by(UsageRollupDaily.metric)
    )
    return {metric: int(total) for metric, total in rows}


def daily_series(tenant_id: int, first: date, last: date) -> dict[str, dict[date, int]]:
    """Per-metric daily quantities for a chart."""
    series: dict[str, dict[date, int]] = {}
    rows = db.session.execute(
        select(UsageRollupDaily.metric, UsageRollupDaily.day, UsageRollupDaily.quantity)
        .where(UsageRollupDaily.tenant_id == tenant_id, UsageRollupDaily.day.between(first, last))
    )
    for metric, day, qty in rows:
        series.setdefault(metric, {})[day] = int(qty)
    return series
