"""Dunning: overdue days, the stage ladder and its effects.

`tenants.overdue_days` is derived, never incremented: the days between the billing-zone date of the due date of the
tenant's oldest open invoice and `as_of`, 0 when nothing is open. `stage_for` (pure) maps those days to a stage;
`run_pass` re-derives every tenant at once (set-based SQL) and applies stage changes only where the stage changes;
`reevaluate_tenant` does the same for one tenant right after a payment or a void. Applying a change records a
dunning_events row and queues the one email that tells the tenant where they now stand; the stage's service effects
are not stored separately — entitlements (app/services/entitlements.py) and access (app/access.py) read
tenants.dunning_stage — so they take effect, and are lifted, in the same commit.

Exemptions (a payment arrangement, tenants.dunning_exempt_until ≥ as_of) hold the tenant at `ok`: they are never
escalated, and a tenant already in dunning is de-escalated to `ok` (full service) for the length of the arrangement.
When it ends, the next pass puts them straight on the stage their real overdue days call for, with one email.
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from flask import Flask, current_app
from sqlalchemy import func, select, text, update

from app.extensions import db
from app.models import DunningEvent, DunningStage, Invoice, InvoiceStatus, Tenant, owed
from app.services.clock import billing_tz, local_day, utcnow
from app.services.notifications import (among, bulk_insert, format_money, outbox_row, queue_rows,
                                        recipients_for, render_email)

log = logging.getLogger(__name__)

RANK = {DunningStage.OK: 0, DunningStage.REMINDER: 1, DunningStage.SUSPENDED: 2, DunningStage.RESTRICTED: 3}
# One key for "a dunning pass is running": the pass holds it exclusively, reevaluate_tenant shares it, so a
# payment's re-evaluation never interleaves with a pass that read the invoice as still open.
_PASS_LOCK_KEY = 0x5D0_0D0E
_CHUNK = 5000  # ids per IN (...) list on SQLite (PostgreSQL gets one array parameter)


# -- policy (pure) -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    reminder: int
    suspend: int
    restrict: int


def thresholds() -> Thresholds:
    """Read the ladder from config now (so a change takes effect on the next pass); ValueError if inconsistent."""
    cfg = current_app.config
    th = Thresholds(int(cfg.get("DUNNING_REMINDER_DAYS", 14)), int(cfg.get("DUNNING_SUSPEND_DAYS", 30)),
                    int(cfg.get("DUNNING_RESTRICT_DAYS", 45)))
    if not 1 <= th.reminder <= th.suspend <= th.restrict:
        raise ValueError("dunning thresholds must satisfy 1 <= DUNNING_REMINDER_DAYS <= DUNNING_SUSPEND_DAYS <= "
                         f"DUNNING_RESTRICT_DAYS, got {th.reminder}/{th.suspend}/{th.restrict}")
    return th


def stage_for(overdue_days: int, *, exempt: bool, reminder_days: int, suspend_days: int,
              restrict_days: int) -> DunningStage:
    """Map a tenant's overdue days and exemption to the dunning stage it should be on."""
    if exempt or overdue_days < reminder_days:
        return DunningStage.OK
    if overdue_days >= restrict_days:
        return DunningStage.RESTRICTED
    if overdue_days >= suspend_days:
        return DunningStage.SUSPENDED
    return DunningStage.REMINDER


def overdue_days_between(due_at: datetime | None, as_of: date, tz: ZoneInfo | None = None) -> int:
    """Days from the billing-zone date of `due_at` to `as_of` (0 when not yet due or no due date)."""
    if due_at is None:
        return 0
    return max(0, (as_of - local_day(due_at, tz)).days)


def is_exempt(exempt_until: date | None, as_of: date) -> bool:
    """Whether a payment arrangement covers `as_of` (the until-date itself included)."""
    return exempt_until is not None and exempt_until >= as_of


# -- the nightly pass ----------------------------------------------------------------------------------------

@dataclass
class PassResult:
    as_of: date
    evaluated: int = 0
    changes: Counter = field(default_factory=Counter)  # to-stage → number of tenants moved there
    emails_queued: int = 0

    @property
    def changed(self) -> int:
        return sum(self.changes.values())


@dataclass(frozen=True)
class Change:
    tenant_id: int
    from_stage: DunningStage
    to_stage: DunningStage
    overdue_days: int
    exempt_until: date | None = None


def run_pass(as_of: date | None = None, *, now: datetime | None = None) -> PassResult:
    """Re-derive every tenant's overdue days as of a billing-zone date and apply the stage changes; commits."""
    now = now or utcnow()
    tz = billing_tz()
    as_of = as_of or local_day(now, tz)
    th = thresholds()
    _lock_pass(exclusive=True)
    _refresh_all_overdue_days(as_of, tz)
    # The policy is applied once per distinct set of facts, not once per tenant: 100,000 tenants share a few
    # hundred (overdue days, stage, exemption) combinations, and only the combinations that move are written.
    groups = db.session.execute(
        select(Tenant.overdue_days, Tenant.dunning_stage, Tenant.dunning_exempt_until, func.count())
        .group_by(Tenant.overdue_days, Tenant.dunning_stage, Tenant.dunning_exempt_until)
        .execution_options(skip_tenant_scope=True)
    ).all()
    result = PassResult(as_of=as_of, evaluated=sum(n for *_, n in groups))
    moves = []
    for days, stage, exempt_until, _n in groups:
        target = stage_for(days, exempt=is_exempt(exempt_until, as_of), reminder_days=th.reminder,
                           suspend_days=th.suspend, restrict_days=th.restrict)
        if target != stage:
            moves.append((days, stage, exempt_until, target.value))
    applied = _move_groups(moves, now)
    result.emails_queued = record_changes(applied, as_of=as_of, now=now, th=th, tz=tz)
    result.changes.update(c.to_stage.value for c in applied)
    db.session.commit()
    log.info("dunning pass as of %s: %s tenants, changes %s, %s emails queued", as_of, result.evaluated,
             dict(result.changes), result.emails_queued)
    return result


def _lock_pass(*, exclusive: bool) -> None:
    if db.engine.dialect.name != "postgresql":
        return  # SQLite (development) serializes writers anyway
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    db.session.execute(text(f"SELECT {fn}(:k)"), {"k": _PASS_LOCK_KEY})


# What the benchmark compares the pass with: one SELECT computing every tenant's overdue days.
OVERDUE_DAYS_SQL = """
SELECT t.id, COALESCE(GREATEST(0, CAST(:as_of AS date) - CAST(o.oldest AT TIME ZONE :tz AS date)), 0) AS days
FROM tenants AS t
LEFT JOIN (SELECT tenant_id, MIN(due_at) AS oldest
           FROM invoices WHERE status = 'open' AND due_at IS NOT NULL
           GROUP BY tenant_id) AS o ON o.tenant_id = t.id
"""

# The same days, written only where they differ: tenants with an open invoice, then the rest back to 0.
_PG_SET_DAYS = text("""
UPDATE tenants AS t SET overdue_days = o.days
FROM (SELECT tenant_id,
             GREATEST(0, CAST(:as_of AS date) - CAST(MIN(due_at) AT TIME ZONE :tz AS date)) AS days
      FROM invoices WHERE status = 'open' AND due_at IS NOT NULL
      GROUP BY tenant_id) AS o
WHERE t.id = o.tenant_id AND t.overdue_days <> o.days
""")
_PG_CLEAR_DAYS = text("""
UPDATE tenants AS t SET overdue_days = 0
WHERE t.overdue_days <> 0
  AND NOT EXISTS (SELECT 1 FROM invoices AS i
                  WHERE i.tenant_id = t.id AND i.status = 'open' AND i.due_at IS NOT NULL)
""")
# Compare-and-set per (days, stage, exemption) group, in one statement.
_PG_MOVE = text("""
UPDATE tenants AS t SET dunning_stage = m.to_stage, dunning_stage_since = :now
FROM jsonb_to_recordset(CAST(:moves AS jsonb))
     AS m(days integer, from_stage text, exempt_until date, to_stage text)
WHERE t.overdue_days = m.days AND t.dunning_stage = m.from_stage
  AND t.dunning_exempt_until IS NOT DISTINCT FROM m.exempt_until
RETURNING t.id, m.from_stage, m.to_stage, t.overdue_days, t.dunning_exempt_until
""")


def _move_groups(moves: list[tuple[int, str, date | None, str]], now: datetime) -> list[Change]:
    """Move every tenant in each (days, from-stage, exempt-until) group to its new stage; return the moves."""
    if not moves:
        return []
    if db.engine.dialect.name == "postgresql":
        payload = json.dumps([{"days": d, "from_stage": f, "exempt_until": e.isoformat() if e else None,
                               "to_stage": t} for d, f, e, t in moves])
        rows = db.session.execute(_PG_MOVE, {"moves": payload, "now": now}).all()
    else:
        rows = []
        for days, frm, exempt_until, to in moves:
            rows.extend((tid, frm, to, d, e) for tid, d, e in db.session.execute(
                update(Tenant)
                .where(Tenant.overdue_days == days, Tenant.dunning_stage == frm,
                       Tenant.dunning_exempt_until.is_not_distinct_from(exempt_until))
                .values(dunning_stage=to, dunning_stage_since=now)
                .returning(Tenant.id, Tenant.overdue_days, Tenant.dunning_exempt_until)
                .execution_options(synchronize_session=False)))
    return [Change(tid, DunningStage(frm), DunningStage(to), days, exempt_until)
            for tid, frm, to, days, exempt_until in sorted(rows)]


def _refresh_all_overdue_days(as_of: date, tz: ZoneInfo) -> None:
    if db.engine.dialect.name == "postgresql":
        params = {"as_of": as_of, "tz": tz.key}
        db.session.execute(_PG_SET_DAYS, params)
        db.session.execute(_PG_CLEAR_DAYS, params)
        return
    # SQLite has no time zones: take each tenant's oldest open due date, convert in Python, write the differences.
    oldest = dict(db.session.execute(
        select(Invoice.tenant_id, func.min(Invoice.due_at))
        .where(Invoice.status == InvoiceStatus.OPEN, Invoice.due_at.is_not(None))
        .group_by(Invoice.tenant_id).execution_options(skip_tenant_scope=True)
    ).all())
    current = db.session.execute(select(Tenant.id, Tenant.overdue_days)
                                 .execution_options(skip_tenant_scope=True)).all()
    updates = []
    for tenant_id, days in current:
        due = oldest.get(tenant_id)
        if isinstance(due, str):  # min() over a SQLite text column comes back untyped
            due = datetime.fromisoformat(due)
        if due is not None and due.tzinfo is None:
            due = due.replace(tzinfo=ZoneInfo("UTC"))
        fresh = overdue_days_between(due, as_of, tz)
        if fresh != days:
            updates.append({"id": tenant_id, "overdue_days": fresh})
    if updates:
        db.session.execute(update(Tenant), updates)


# -- one tenant, right now -----------------------------------------------------------------------------------

def reevaluate_tenant(tenant_id: int, *, as_of: date | None = None, now: datetime | None = None) -> DunningStage:
    """Re-derive one tenant's overdue days and dunning stage right now (called after any payment); commits.

    The caller's pending changes (the invoice just paid or voided) are committed first: they are the fact this
    re-evaluation reads, and committing releases their row locks before we wait for a running pass.
    """
    now = now or utcnow()
    tz = billing_tz()
    as_of = as_of or local_day(now, tz)
    th = thresholds()
    db.session.commit()
    _lock_pass(exclusive=False)
    tenant = db.session.execute(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update(of=Tenant)
        .execution_options(skip_tenant_scope=True, populate_existing=True)
    ).scalar_one_or_none()
    if tenant is None:
        db.session.rollback()
        raise LookupError(f"tenant {tenant_id} not found")
    oldest = db.session.scalar(
        select(func.min(Invoice.due_at))
        .where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN, Invoice.due_at.is_not(None))
        .execution_options(skip_tenant_scope=True))
    days = overdue_days_between(oldest, as_of, tz)
    if tenant.overdue_days != days:
        tenant.overdue_days = days
        db.session.flush()
    current = DunningStage(tenant.dunning_stage)
    target = stage_for(days, exempt=is_exempt(tenant.dunning_exempt_until, as_of), reminder_days=th.reminder,
                       suspend_days=th.suspend, restrict_days=th.restrict)
    if target != current:
        record_changes(_compare_and_set([Change(tenant_id, current, target, days, tenant.dunning_exempt_until)],
                                        now), as_of=as_of, now=now, th=th, tz=tz)
        db.session.expire(tenant)  # its stage was changed by a Core UPDATE, behind the identity map
    db.session.commit()
    return target


# -- applying changes ------------------------------------------------------------------------------------------

@dataclass
class _OpenInvoices:
    oldest: Any = None  # a row with id, number, due_at of the oldest open invoice
    balances: dict[str, int] = field(default_factory=dict)  # currency → minor units still owed

    def amount(self) -> str:
        return " + ".join(format_money(v, cur) for cur, v in sorted(self.balances.items())) or format_money(0, "usd")


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    if db.engine.dialect.name == "postgresql":
        yield ids  # one array parameter, whatever its length (see notifications.among)
        return
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def _compare_and_set(changes: list[Change], now: datetime) -> list[Change]:
    """Move tenants still on their from-stage to their new stage; return the changes that applied."""
    moved: set[int] = set()
    by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
    for c in changes:
        by_pair[(c.from_stage.value, c.to_stage.value)].append(c.tenant_id)
    for (frm, to), ids in by_pair.items():
        for chunk in _chunks(ids):
            moved.update(db.session.execute(
                update(Tenant)
                .where(among(Tenant.id, chunk), Tenant.dunning_stage == frm)
                .values(dunning_stage=to, dunning_stage_since=now)
                .returning(Tenant.id)
                .execution_options(synchronize_session=False)
            ).scalars())
    return [c for c in changes if c.tenant_id in moved]


def record_changes(applied: list[Change], *, as_of: date, now: datetime, th: Thresholds, tz: ZoneInfo) -> int:
    """Record a dunning event and queue the one email announcing each applied change; return emails queued.

    Set-based for the nightly pass: a handful of queries whatever the number of tenants that moved.
    """
    if not applied:
        return 0
    ids = [c.tenant_id for c in applied]
    tenants = _load_tenants(ids)
    open_invoices = _open_invoices(ids)
    # Moves down the ladder say why: the invoice named by the tenant's latest move into dunning (now paid,
    # voided or written off), which is what brought it down.
    last_invoice = _last_dunned_invoice([c.tenant_id for c in applied if RANK[c.to_stage] < RANK[c.from_stage]])
    recipients = recipients_for(tenants.values())

    events: list[dict[str, Any]] = []
    mails: list[dict[str, Any]] = []
    for c in applied:
        tenant = tenants[c.tenant_id]
        info = open_invoices.get(c.tenant_id) or _OpenInvoices()
        exempt = is_exempt(c.exempt_until, as_of)
        if c.to_stage == DunningStage.OK:
            invoice = last_invoice.get(c.tenant_id)
            reason = (f"payment arrangement until {c.exempt_until.isoformat()}" if exempt
                      else _restored_reason(invoice, c.overdue_days))
        else:
            invoice = info.oldest
            reason = f"{c.overdue_days} days overdue (thresholds {th.reminder}/{th.suspend}/{th.restrict})"
        events.append({"tenant_id": c.tenant_id, "from_stage": c.from_stage.value, "to_stage": c.to_stage.value,
                       "reason": reason[:255], "invoice_id": invoice.id if invoice else None,
                       "overdue_days": c.overdue_days, "as_of": as_of, "created_at": now})
        mail = _stage_email(c, tenant, invoice, info, exempt=exempt, as_of=as_of, th=th, tz=tz,
                            settled_by=settled_by(last_invoice.get(c.tenant_id)))
        if mail is None:
            continue
        to = recipients.get(c.tenant_id)
        if not to:
            log.warning("tenant %s has no billing email and no admins: %s email not queued", tenant.id, c.to_stage)
            continue
        kind, key, rendered = mail
        mails.append(outbox_row(c.tenant_id, kind, key, to, rendered, now))
    bulk_insert(DunningEvent.__table__, events)
    return queue_rows(mails)


def _load_tenants(ids: list[int]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for chunk in _chunks(ids):
        for row in db.session.execute(select(Tenant.id, Tenant.name, Tenant.billing_email)
                                      .where(among(Tenant.id, chunk)).execution_options(skip_tenant_scope=True)):
            out[row.id] = row
    return out


def _open_invoices(ids: list[int]) -> dict[int, _OpenInvoices]:
    out: dict[int, _OpenInvoices] = defaultdict(_OpenInvoices)
    for chunk in _chunks(ids):
        rows = db.session.execute(
            select(Invoice.tenant_id, Invoice.id, Invoice.number, Invoice.due_at, Invoice.currency,
                   owed(Invoice).label("owed"))
            .where(among(Invoice.tenant_id, chunk), Invoice.status == InvoiceStatus.OPEN)
            .order_by(Invoice.tenant_id, Invoice.due_at.asc().nulls_last(), Invoice.id)
            .execution_options(skip_tenant_scope=True))
        for inv in rows:
            info = out[inv.tenant_id]
            if info.oldest is None and inv.due_at is not None:
                info.oldest = inv
            cur = (inv.currency or "usd").lower()
            info.balances[cur] = info.balances.get(cur, 0) + max(0, int(inv.owed or 0))
    return out


def _last_dunned_invoice(ids: list[int]) -> dict[int, Any]:
    """The invoice named by each tenant's latest move into dunning (the one just paid or voided)."""
    out: dict[int, Any] = {}
    for chunk in _chunks(ids):
        latest = (select(func.max(DunningEvent.id))
                  .where(among(DunningEvent.tenant_id, chunk), DunningEvent.to_stage != DunningStage.OK,
                         DunningEvent.invoice_id.is_not(None))
                  .group_by(DunningEvent.tenant_id))
        rows = db.session.execute(
            select(DunningEvent.tenant_id, Invoice.id, Invoice.number, Invoice.status, Invoice.paid_out_of_band)
            .join(Invoice, Invoice.id == DunningEvent.invoice_id)
            .where(DunningEvent.id.in_(latest)).execution_options(skip_tenant_scope=True)).all()
        out.update({row.tenant_id: row for row in rows})
    return out


def settled_by(invoice: Any) -> str | None:
    """How an invoice stopped being owed — "paid", "voided" or "written_off" (uncollectible) — or None if it is not
    settled. The emails word each differently: only a payment is thanked for."""
    if invoice is None:
        return None
    return {InvoiceStatus.PAID: "paid", InvoiceStatus.VOID: "voided",
            InvoiceStatus.UNCOLLECTIBLE: "written_off"}.get(InvoiceStatus(invoice.status))


def _restored_reason(invoice: Any, overdue_days: int) -> str:
    label = (invoice.number or f"#{invoice.id}") if invoice else None
    if invoice is not None and invoice.status == InvoiceStatus.VOID:
        return f"invoice {label} voided"
    if invoice is not None and invoice.status == InvoiceStatus.UNCOLLECTIBLE:
        return f"invoice {label} written off (uncollectible)"
    if invoice is not None and invoice.status == InvoiceStatus.PAID:
        return f"invoice {label} paid" + (" out of band" if invoice.paid_out_of_band else "")
    if overdue_days:
        return f"{overdue_days} days overdue, below the reminder threshold"
    return "nothing overdue"


def _settled(invoice: Any, overdue_days: int) -> bool:
    """Whether a move to ok comes from the tenant's debt being settled (not from a threshold change)."""
    if invoice is None:
        return overdue_days == 0
    return invoice.status != InvoiceStatus.OPEN


def _stage_email(c: Change, tenant: Any, invoice: Any, info: _OpenInvoices, *, exempt: bool, as_of: date,
                 th: Thresholds, tz: ZoneInfo, settled_by: str | None = None):
    """(kind, dedupe_key, rendered) of the one email announcing this change, or None.

    `settled_by` says how the invoice that brought a tenant down the ladder stopped being owed (see settled_by).
    """
    base = {"tenant": tenant, "from_stage": c.from_stage.value, "to_stage": c.to_stage.value, "as_of": as_of,
            "overdue_days": c.overdue_days, "amount": info.amount() if info.balances else None,
            "settled_by": settled_by}
    inv_part = f"invoice:{invoice.id}" if invoice else f"day:{as_of.isoformat()}"
    if c.to_stage == DunningStage.OK:
        if exempt:
            key = f"arrangement:tenant:{tenant.id}:until:{c.exempt_until.isoformat()}"
            return "dunning_arrangement", key, render_email("dunning_arrangement", exempt_until=c.exempt_until, **base)
        if not _settled(invoice, c.overdue_days):
            return None  # thresholds were raised: service comes back, but nothing was paid to thank them for
        reason = settled_by or "settled"  # "settled": nothing overdue, and no invoice to say why
        label = (invoice.number or f"#{invoice.id}") if invoice else None
        return ("dunning_restored", f"stage:ok:tenant:{tenant.id}:{inv_part}",
                render_email("dunning_restored", reason=reason, invoice_label=label, **base))
    if invoice is None or invoice.due_at is None:
        return None  # cannot happen: a non-ok stage needs an overdue invoice
    due_on = local_day(invoice.due_at, tz)
    ctx = dict(base, invoice=invoice, invoice_label=invoice.number or f"#{invoice.id}", due_on=due_on,
               suspend_on=due_on + timedelta(days=th.suspend), restrict_on=due_on + timedelta(days=th.restrict),
               jumped=RANK[c.to_stage] - RANK[c.from_stage] > 1, improved=RANK[c.to_stage] < RANK[c.from_stage])
    kind = f"dunning_{c.to_stage.value}"
    return kind, f"stage:{c.to_stage.value}:tenant:{tenant.id}:{inv_part}", render_email(kind, **ctx)


# -- the banner ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Banner:
    stage: str
    overdue_days: int
    amount: str
    due_on: date | None
    next_step: str | None
    next_on: date | None


_NEXT = {
    DunningStage.REMINDER: ("calls and outbound SMS will be suspended", "suspend"),
    DunningStage.SUSPENDED: ("admin access will be limited to billing", "restrict"),
}


def banner_for(tenant: Tenant) -> Banner | None:
    """What the overdue banner shows a tenant's admins (None on `ok`): one aggregate query."""
    stage = DunningStage(tenant.dunning_stage)
    if stage == DunningStage.OK:
        return None
    rows = db.session.execute(
        select(Invoice.currency, func.sum(owed(Invoice)), func.min(Invoice.due_at))
        .where(Invoice.tenant_id == tenant.id, Invoice.status == InvoiceStatus.OPEN)
        .group_by(Invoice.currency).execution_options(skip_tenant_scope=True)
    ).all()
    balances = {cur: int(total or 0) for cur, total, _ in rows}
    dues = [due for _, _, due in rows if due is not None]
    due_on = local_day(min(dues)) if dues else None
    info = _OpenInvoices(balances=balances)
    next_step = next_on = None
    if stage in _NEXT and due_on is not None:
        try:
            th = thresholds()
        except ValueError:  # misconfigured ladder: the pass refuses to run; the banner still shows the debt
            th = None
        if th is not None:
            next_step, which = _NEXT[stage]
            next_on = due_on + timedelta(days=getattr(th, which))
    return Banner(stage=stage.value, overdue_days=tenant.overdue_days, amount=info.amount(), due_on=due_on,
                  next_step=next_step, next_on=next_on)


def _banner_context() -> dict[str, Any]:
    from flask_login import current_user

    def dunning_banner() -> Banner | None:
        if not current_user.is_authenticated or current_user.is_root or current_user.tenant is None:
            return None
        return banner_for(current_user.tenant)

    return {"dunning_banner": dunning_banner}


def init_app(app: Flask) -> None:
    """Register the overdue banner's template helper (`dunning_banner()`, computed only when rendered)."""
    if app.extensions.get("dunning_banner"):
        return
    app.extensions["dunning_banner"] = True
    app.context_processor(_banner_context)


__all__ = ["Banner", "Change", "OVERDUE_DAYS_SQL", "PassResult", "Thresholds", "banner_for", "record_changes",
           "init_app", "overdue_days_between", "reevaluate_tenant", "run_pass", "stage_for",
           "thresholds"]
