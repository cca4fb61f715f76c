"""Plan changes (CONTRACT §8.1): record one, preview its prorated fee, keep `tenants.plan` the plan in force today.

A change takes effect at the start of its `effective_on` (billing zone); the history in `plan_changes` is what
pricing reads, so a month's fee is prorated by the days each plan was in force. A change may not reach back into
a month that is already invoiced (any live invoice whose period ends on or after its day): that invoice's lines
were computed without it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select, update

from app.extensions import db
from app.models import AuditLog, Invoice, InvoiceStatus, Plan, PlanChange, Tenant, User
from app.services import clock, notifications, pricing
from app.services.clock import utcnow

log = logging.getLogger(__name__)


class PlanChangeError(ValueError):
    """A plan change that cannot be made as asked (the message is safe to show)."""


@dataclass(frozen=True)
class Preview:
    """The fee lines of the month a change takes effect in, without and with it (minor units)."""

    tenant: Tenant
    from_plan: Plan
    to_plan: Plan
    effective_on: date
    month_start: date
    month_end: date
    before: list[pricing.LineDraft]
    after: list[pricing.LineDraft]

    @property
    def before_total(self) -> int:
        return pricing.total(self.before)

    @property
    def after_total(self) -> int:
        return pricing.total(self.after)

    @property
    def difference(self) -> int:
        return self.after_total - self.before_total

    @property
    def currency(self) -> str:
        return self.to_plan.currency


def history(tenant_id: int) -> list[PlanChange]:
    """A tenant's plan changes, newest first."""
    return list(db.session.scalars(select(PlanChange).where(PlanChange.tenant_id == tenant_id)
                                   .order_by(PlanChange.effective_on.desc(), PlanChange.id.desc())))


def plan_choices() -> list[Plan]:
    """Every plan, cheapest first."""
    return list(db.session.scalars(select(Plan).order_by(Plan.monthly_fee, Plan.code)))


def _changes(tenant_id: int) -> list[pricing.Change]:
    return pricing.plan_history([tenant_id]).get(tenant_id, [])


def _plan(code: str) -> Plan:
    plan = db.session.scalar(select(Plan).where(Plan.code == (code or "").strip()))
    if plan is None:
        raise PlanChangeError(f"there is no plan {code!r}")
    return plan


def _invoiced_through(tenant_id: int, day: date) -> Invoice | None:
    """The latest live invoice of the tenant whose period ends on or after `day` (drafts included), if any."""
    return db.session.scalar(select(Invoice).where(
        Invoice.tenant_id == tenant_id, Invoice.status != InvoiceStatus.VOID, Invoice.period_end >= day)
        .order_by(Invoice.period_end.desc()).limit(1))


def _check(tenant: Tenant, to_plan: Plan, effective_on: date, changes: list[pricing.Change]) -> str:
    """Validate a change; return the plan it changes from (the plan in force the day before)."""
    invoiced = _invoiced_through(tenant.id, effective_on)
    if invoiced is not None:
        earliest = invoiced.period_end + timedelta(days=1)
        raise PlanChangeError(
            f"{invoiced.period_start:%B %Y} is already invoiced ({invoiced.number or f'invoice #{invoiced.id}'}): "
            f"a plan change can take effect on {earliest.isoformat()} at the earliest")
    later = [c for c in changes if c.effective_on > effective_on]
    if later:
        raise PlanChangeError(f"a change to {later[0].to_plan} is already recorded for "
                              f"{later[0].effective_on.isoformat()}; a new change must take effect after it")
    earlier = [c for c in changes if c.effective_on < effective_on]
    from_code = pricing.plan_on(effective_on - timedelta(days=1), earlier, tenant.plan) if earlier else (
        changes[0].from_plan if changes else tenant.plan)
    current = _plan(from_code)
    if to_plan.currency != current.currency:
        raise PlanChangeError(f"{to_plan.name} is billed in {to_plan.currency.upper()}, the tenant in "
                              f"{current.currency.upper()}: a plan change cannot change the currency")
    return from_code


def preview(tenant: Tenant, to_code: str, effective_on: date | None = None, *,
            now: datetime | None = None) -> Preview:
    """The fee lines of the change's month without and with the change (raises PlanChangeError if refused)."""
    now = now or utcnow()
    effective_on = effective_on or clock.today(now)
    to_plan = _plan(to_code)
    changes = _changes(tenant.id)
    from_code = _check(tenant, to_plan, effective_on, changes)
    if from_code == to_plan.code and not any(c.effective_on == effective_on for c in changes):
        raise PlanChangeError(f"the tenant is already on {to_plan.name} from {effective_on.isoformat()}")
    first, last = clock.month_bounds(effective_on.year, effective_on.month)
    kept = [c for c in changes if c.effective_on != effective_on]
    with_it = kept + ([pricing.Change(effective_on, from_code, to_plan.code)] if from_code != to_plan.code else [])
    plans = {p.code: p for p in plan_choices()}

    def fees(hist: list[pricing.Change]) -> list[pricing.LineDraft]:
        spans = pricing.plan_spans(hist, tenant.plan, first, last)
        return pricing.fee_lines([(plans[s.plan], s) for s in spans], first, last)

    return Preview(tenant=tenant, from_plan=plans[from_code], to_plan=to_plan, effective_on=effective_on,
                   month_start=first, month_end=last, before=fees(changes), after=fees(with_it))


def change_plan(tenant_id: int, to_code: str, effective_on: date | None = None, *, actor: User | None = None,
                source: str = "root", reason: str | None = None, now: datetime | None = None) -> PlanChange | None:
    """Record a plan change (default: from today); commits. Returns the change, or None when it cancelled one.

    A second change on the same day replaces the first (back to the earlier plan: the change is removed).
    """
    now = now or utcnow()
    effective_on = effective_on or clock.today(now)
    # The tenant row lock serializes changes of one tenant (and their "later change" checks).
    tenant = db.session.execute(select(Tenant).where(Tenant.id == tenant_id).with_for_update(of=Tenant)
                                .execution_options(populate_existing=True)).scalar_one_or_none()
    if tenant is None:
        raise PlanChangeError(f"tenant {tenant_id} not found")
    to_plan = _plan(to_code)
    changes = _changes(tenant_id)
    from_code = _check(tenant, to_plan, effective_on, changes)
    same_day = db.session.scalar(select(PlanChange).where(PlanChange.tenant_id == tenant_id,
                                                          PlanChange.effective_on == effective_on))
    if from_code == to_plan.code and same_day is None:
        raise PlanChangeError(f"{tenant.name} is already on {to_plan.name} from {effective_on.isoformat()}")
    row: PlanChange | None
    if same_day is not None and from_code == to_plan.code:
        db.session.delete(same_day)
        row = None
    elif same_day is not None:
        same_day.to_plan, same_day.actor_user_id, same_day.source, same_day.created_at = (
            to_plan.code, actor.id if actor else None, source, now)
        row = same_day
    else:
        row = PlanChange(tenant_id=tenant_id, from_plan=from_code, to_plan=to_plan.code, effective_on=effective_on,
                         created_at=now, actor_user_id=actor.id if actor else None, source=source)
        db.session.add(row)
    db.session.flush()
    db.session.add(AuditLog(actor_user_id=actor.id if actor else None, tenant_id=tenant_id, action="plan_change",
                            reason=(reason or "").strip()[:2000] or None, created_at=now,
                            details={"from_plan": from_code, "to_plan": to_plan.code, "source": source,
                                     "effective_on": effective_on.isoformat(), "cancelled": row is None}))
    sync_current_plans(clock.today(now), tenant_ids=[tenant_id])
    _queue_email(tenant, from_code, to_plan, effective_on, row, now)
    db.session.commit()
    return row


def _queue_email(tenant: Tenant, from_code: str, to_plan: Plan, effective_on: date, row: PlanChange | None,
                 now: datetime) -> None:
    try:
        with db.session.begin_nested():
            notifications.queue_email(
                tenant, "plan_changed", f"plan_changed:tenant:{tenant.id}:{effective_on.isoformat()}:"
                                        f"{row.to_plan if row else 'cancelled'}:{int(now.timestamp())}",
                "plan_changed", now=now, from_plan=_plan(from_code), to_plan=to_plan, effective_on=effective_on,
                cancelled=row is None)
    except Exception:  # noqa: BLE001 - a mail problem must not undo the change it announces
        log.exception("could not queue the plan_changed email of tenant %s", tenant.id)


def sync_current_plans(today: date, *, tenant_ids: list[int] | None = None) -> int:
    """Set `tenants.plan` to the plan in force today for tenants with a plan history; return how many moved.

    Idempotent (a daily reconciler): a change dated in the future moves the tenant on its day.
    """
    hist = pricing.plan_history(tenant_ids)
    moved = 0
    for tenant_id, changes in hist.items():
        current = pricing.plan_on(today, changes, changes[0].from_plan)
        moved += db.session.execute(update(Tenant).where(Tenant.id == tenant_id, Tenant.plan != current)
                                    .values(plan=current).execution_options(synchronize_session="fetch")
                                    ).rowcount or 0
    return moved
