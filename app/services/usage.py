"""Usage ingestion and the daily rollups billing is built on."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, delete, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db
from app.models import PlanPrice, Tenant, UsageEvent, UsageRollupDaily, utcnow
from app.services.clock import billing_tz, month_bounds

CORE_METRICS = ("voice_minutes", "sms_outbound", "sms_inbound")


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


def record_events(tenant: Tenant, events: list[dict], now: datetime | None = None) -> IngestResult:
    """Store validated usage events for a tenant; events already seen (by client id) are skipped.

    The whole batch is one statement: either every new event is stored or none is.
    """
    now = now or utcnow()
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
        return IngestResult(0, 0)
    table = UsageEvent.__table__
    stmt = _insert(table).values(rows).on_conflict_do_nothing(
        index_elements=["tenant_id", "client_event_id"]
    ).returning(table.c.id)
    accepted = len(db.session.execute(stmt).all())
    db.session.commit()
    return IngestResult(accepted=accepted, duplicates=len(rows) - accepted)


def rollup_day(day: date, now: datetime | None = None) -> int:
    """(Re)build usage_rollups_daily for one day from raw events in one set-based upsert; return rows written."""
    now = now or utcnow()
    e = UsageEvent.__table__
    r = UsageRollupDaily.__table__
    agg = (
        select(e.c.tenant_id, e.c.day, e.c.metric, func.sum(e.c.quantity).label("quantity"),
               literal(now, r.c.updated_at.type).label("updated_at"))
        .where(e.c.day == day)
        .group_by(e.c.tenant_id, e.c.day, e.c.metric)
    )
    ins = _insert(r).from_select(["tenant_id", "day", "metric", "quantity", "updated_at"], agg)
    ins = ins.on_conflict_do_update(
        index_elements=["tenant_id", "day", "metric"],
        set_={"quantity": ins.excluded.quantity, "updated_at": ins.excluded.updated_at},
    )
    result = db.session.execute(ins)
    # Rollups whose events no longer exist (never, today) would otherwise linger after a rebuild.
    db.session.execute(
        delete(r).where(r.c.day == day).where(
            ~exists().where(and_(e.c.tenant_id == r.c.tenant_id, e.c.day == r.c.day, e.c.metric == r.c.metric))
        )
    )
    db.session.commit()
    return max(result.rowcount or 0, 0)


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
