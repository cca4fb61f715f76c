"""Dunning: the pure policy, derived overdue days, the nightly pass, reevaluate_tenant and the CLI."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import DunningEvent, DunningStage, Invoice, InvoiceStatus, Tenant
from app.services.dunning import overdue_days_between, reevaluate_tenant, run_pass, stage_for
from tests.factories import at, make_invoice, make_tenant
from tests.support.stored import outbox, stage_of

LADDER = {"reminder_days": 14, "suspend_days": 30, "restrict_days": 45}


# -- the pure policy ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("days,stage", [
    (0, "ok"), (13, "ok"), (14, "reminder"), (29, "reminder"), (30, "suspended"), (44, "suspended"),
    (45, "restricted"), (400, "restricted"),
])
def test_stage_for_maps_days_to_the_ladder(days, stage):
    assert stage_for(days, exempt=False, **LADDER) == DunningStage(stage)


def test_stage_for_exempt_tenant_is_held_at_ok_whatever_the_days():
    assert {stage_for(d, exempt=True, **LADDER) for d in (0, 14, 30, 45, 99)} == {DunningStage.OK}


def test_stage_for_follows_the_thresholds_given():
    assert stage_for(7, exempt=False, reminder_days=7, suspend_days=10, restrict_days=20) == "reminder"
    assert stage_for(10, exempt=False, reminder_days=7, suspend_days=10, restrict_days=20) == "suspended"
    # Equal thresholds skip a stage rather than inventing an order.
    assert stage_for(10, exempt=False, reminder_days=10, suspend_days=10, restrict_days=10) == "restricted"


def test_overdue_days_count_billing_zone_dates():
    due = datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)  # still Feb 28 in Los Angeles
    utc = ZoneInfo("UTC")
    assert overdue_days_between(due, date(2026, 3, 15), utc) == 14
    assert overdue_days_between(due, date(2026, 3, 15), ZoneInfo("America/Los_Angeles")) == 15
    assert overdue_days_between(due, date(2026, 2, 20), utc) == 0  # not yet due
    assert overdue_days_between(None, date(2026, 3, 15), utc) == 0


# -- the pass ---------------------------------------------------------------------------------------------------

def test_pass_derives_overdue_days_from_oldest_open_invoice(app, plans):
    clean, late, later, paid_only = make_tenant(), make_tenant(), make_tenant(), make_tenant()
    make_invoice(late, date(2026, 3, 1))
    make_invoice(later, date(2026, 2, 1))
    make_invoice(later, date(2026, 3, 1))
    make_invoice(paid_only, date(2026, 1, 1), status=InvoiceStatus.PAID)
    make_invoice(paid_only, date(2026, 2, 1), status=InvoiceStatus.VOID)
    result = run_pass(date(2026, 3, 10))
    assert result.evaluated == 4
    assert stage_of(clean.id) == ("ok", 0)
    assert stage_of(late.id) == ("ok", 9)
    assert stage_of(later.id) == ("suspended", 37)  # Feb 1 → Mar 10, counted from the older invoice
    assert stage_of(paid_only.id) == ("ok", 0)
    assert result.changes == {"suspended": 1}


def test_overdue_days_are_derived_not_incremented(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    for day in (date(2026, 3, 20), date(2026, 3, 20), date(2026, 3, 5), date(2026, 3, 21)):
        run_pass(day)
    # Doubled and out-of-order nights give the same answer as one pass on the last night.
    assert stage_of(tenant.id)[1] == 20
    tenant = db.session.get(Tenant, tenant.id)
    tenant.overdue_days = 999  # a corrupted value is repaired, not built upon
    db.session.commit()
    run_pass(date(2026, 3, 21))
    assert stage_of(tenant.id)[1] == 20


def test_running_the_pass_twice_changes_nothing(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    first = run_pass(date(2026, 4, 2))
    events = db.session.scalar(select(func.count()).select_from(DunningEvent))
    mails = len(outbox())
    since = db.session.get(Tenant, tenant.id).dunning_stage_since
    second = run_pass(date(2026, 4, 2))
    assert first.changes == {"suspended": 1} and second.changed == 0 and second.emails_queued == 0
    assert db.session.scalar(select(func.count()).select_from(DunningEvent)) == events == 1
    assert len(outbox()) == mails == 1
    assert db.session.get(Tenant, tenant.id).dunning_stage_since == since


def test_stage_change_records_a_dunning_event(app, plans):
    tenant = make_tenant()
    inv = make_invoice(tenant, date(2026, 3, 1))
    run_pass(date(2026, 3, 15), now=at(date(2026, 3, 15), 2))
    event = db.session.scalars(select(DunningEvent)).one()
    assert (event.tenant_id, event.from_stage, event.to_stage, event.invoice_id, event.overdue_days,
            event.as_of) == (tenant.id, "ok", "reminder", inv.id, 14, date(2026, 3, 15))
    assert "14 days overdue" in event.reason
    assert db.session.get(Tenant, tenant.id).dunning_stage_since == at(date(2026, 3, 15), 2)


def test_skipped_nights_catch_up_with_one_email(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    run_pass(date(2026, 3, 25))  # day 24: reminder
    # The pass did not run for 21 days; day 45 lands straight on restricted.
    result = run_pass(date(2026, 4, 15))
    assert stage_of(tenant.id) == ("restricted", 45)
    assert result.changes == {"restricted": 1} and result.emails_queued == 1
    kinds = [m.kind for m in outbox(tenant.id)]
    assert kinds == ["dunning_reminder", "dunning_restricted"]
    mail = outbox(tenant.id)[-1]
    assert "straight to" in mail.body_text and "calls and outbound SMS are suspended" in mail.body_text
    event = db.session.scalars(select(DunningEvent).order_by(DunningEvent.id.desc())).first()
    assert (event.from_stage, event.to_stage) == ("reminder", "restricted")


def test_threshold_change_takes_effect_on_the_next_pass(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    run_pass(date(2026, 3, 11))
    assert stage_of(tenant.id) == ("ok", 10)
    app.config.update(DUNNING_REMINDER_DAYS=7, DUNNING_SUSPEND_DAYS=10, DUNNING_RESTRICT_DAYS=20)
    run_pass(date(2026, 3, 11))
    assert stage_of(tenant.id) == ("suspended", 10)
    app.config.update(DUNNING_REMINDER_DAYS=14, DUNNING_SUSPEND_DAYS=30, DUNNING_RESTRICT_DAYS=45)
    run_pass(date(2026, 3, 11))
    # Raising the thresholds de-escalates too, but there is no payment to thank anyone for.
    assert stage_of(tenant.id) == ("ok", 10)
    assert [m.kind for m in outbox(tenant.id)] == ["dunning_suspended"]


def test_inconsistent_thresholds_are_refused(app, plans):
    app.config.update(DUNNING_REMINDER_DAYS=30, DUNNING_SUSPEND_DAYS=14)
    with pytest.raises(ValueError, match="DUNNING_REMINDER_DAYS"):
        run_pass(date(2026, 3, 11))


def test_exempt_tenant_is_not_escalated_until_the_arrangement_ends(app, plans):
    tenant = make_tenant(dunning_exempt_until=date(2026, 4, 10))
    make_invoice(tenant, date(2026, 3, 1))
    for day in range(0, 41):
        run_pass(date(2026, 3, 1) + timedelta(days=day))
    assert stage_of(tenant.id) == ("ok", 40)  # overdue days still tracked, no stage
    assert outbox(tenant.id) == []
    run_pass(date(2026, 4, 11))  # the day after the arrangement: straight to where the tenant stands
    assert stage_of(tenant.id) == ("suspended", 41)
    assert [m.kind for m in outbox(tenant.id)] == ["dunning_suspended"]


def test_exemption_de_escalates_a_tenant_already_in_dunning(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    run_pass(date(2026, 4, 20))
    assert stage_of(tenant.id)[0] == "restricted"
    tenant = db.session.get(Tenant, tenant.id)
    tenant.dunning_exempt_until = date(2026, 5, 1)
    db.session.commit()
    result = run_pass(date(2026, 4, 21))
    assert result.changes == {"ok": 1} and stage_of(tenant.id)[0] == "ok"
    mail = outbox(tenant.id)[-1]
    assert mail.kind == "dunning_arrangement" and "2026-05-01" in mail.subject


def test_partially_paid_history_counts_from_oldest_unpaid_invoice(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 1, 1), status=InvoiceStatus.PAID)
    make_invoice(tenant, date(2026, 2, 1), amount=4900, amount_paid=1000)  # partly paid, still open
    make_invoice(tenant, date(2026, 3, 1), status=InvoiceStatus.PAID)
    run_pass(date(2026, 3, 10))
    assert stage_of(tenant.id) == ("suspended", 37)  # from Feb 1, not from the paid Jan 1 or the newer Mar 1
    mail = outbox(tenant.id)[0]
    assert "$39.00" in mail.body_text  # what is still owed, not the invoice total


def test_billing_timezone_defines_the_day_boundary(app, plans):
    app.config["BILLING_TIMEZONE"] = "America/Los_Angeles"
    tenant = make_tenant()
    # 03:00 UTC on Mar 1 is still Feb 28 in Los Angeles: the invoice was due on Feb 28 there.
    make_invoice(tenant, datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc))
    run_pass(date(2026, 3, 13))
    assert stage_of(tenant.id) == ("ok", 13)
    run_pass(date(2026, 3, 14))
    assert stage_of(tenant.id) == ("reminder", 14)
    # The default as_of is "today" in the billing zone: 06:00 UTC on Mar 15 is still Mar 14 in Los Angeles.
    run_pass(now=datetime(2026, 3, 15, 6, 0, tzinfo=timezone.utc))
    assert stage_of(tenant.id) == ("reminder", 14)
    assert reevaluate_tenant(tenant.id, now=datetime(2026, 3, 15, 9, 0, tzinfo=timezone.utc)) == "reminder"
    assert stage_of(tenant.id) == ("reminder", 15)


def test_reevaluate_tenant_restores_after_the_last_overdue_invoice_is_paid(app, plans):
    tenant = make_tenant()
    older = make_invoice(tenant, date(2026, 2, 1))
    newer = make_invoice(tenant, date(2026, 3, 1))
    run_pass(date(2026, 3, 20))
    assert stage_of(tenant.id) == ("restricted", 47)
    older = db.session.get(Invoice, older.id)
    older.status, older.amount_paid = InvoiceStatus.PAID, older.amount_due
    db.session.commit()
    # Paying the older invoice leaves the newer one 19 days overdue: back to reminder, not ok.
    assert reevaluate_tenant(tenant.id, as_of=date(2026, 3, 20)) == "reminder"
    assert stage_of(tenant.id) == ("reminder", 19)
    newer = db.session.get(Invoice, newer.id)
    newer.status, newer.amount_paid = InvoiceStatus.PAID, newer.amount_due
    assert reevaluate_tenant(tenant.id, as_of=date(2026, 3, 20)) == "ok"  # commits the caller's change too
    assert stage_of(tenant.id) == ("ok", 0)
    assert db.session.get(Invoice, newer.id).status == "paid"
    kinds = [m.kind for m in outbox(tenant.id)]
    assert kinds == ["dunning_restricted", "dunning_reminder", "dunning_restored"]
    reminder = outbox(tenant.id)[1].body_text
    assert "Thank you for your payment" in reminder and "full access again" in reminder
    assert "19 days overdue" in reminder
    assert reevaluate_tenant(tenant.id, as_of=date(2026, 3, 20)) == "ok"
    assert [m.kind for m in outbox(tenant.id)] == kinds  # cheap and safe to call again: nothing new


def test_reevaluate_unknown_tenant_raises(app, plans):
    with pytest.raises(LookupError):
        reevaluate_tenant(987654, as_of=date(2026, 3, 20))


def test_pass_only_touches_tenants_whose_stage_changes(app, plans):
    steady = make_tenant()
    make_invoice(steady, date(2026, 3, 1))
    run_pass(date(2026, 3, 16))
    moving = make_tenant()
    make_invoice(moving, date(2026, 3, 2))
    before = db.session.get(Tenant, steady.id).dunning_stage_since
    result = run_pass(date(2026, 3, 16))
    assert result.changes == {"reminder": 1}
    assert db.session.get(Tenant, steady.id).dunning_stage_since == before
    assert [e.tenant_id for e in db.session.scalars(select(DunningEvent).order_by(DunningEvent.id))] == [
        steady.id, moving.id]


# -- the CLI ----------------------------------------------------------------------------------------------------

def test_cli_runs_the_pass_and_prints_a_summary(app, plans):
    tenant = make_tenant()
    make_invoice(tenant, date(2026, 3, 1))
    runner = app.test_cli_runner()
    out = runner.invoke(args=["billing", "dunning", "--as-of", "2026-04-01"])
    assert out.exit_code == 0, out.output
    assert "as of 2026-04-01: 1 tenants evaluated, 1 stage changes, 1 emails queued" in out.output
    assert "-> suspended: 1" in out.output
    again = runner.invoke(args=["billing", "dunning", "--as-of", "2026-04-01"])
    assert "0 stage changes, 0 emails queued" in again.output
    assert stage_of(tenant.id) == ("suspended", 31)


def test_cli_rejects_a_bad_date(app, plans):
    out = app.test_cli_runner().invoke(args=["billing", "dunning", "--as-of", "2026-13-01"])
    assert out.exit_code == 2 and "YYYY-MM-DD" in out.output


def test_cli_defaults_to_today(app, plans):
    out = app.test_cli_runner().invoke(args=["billing", "dunning"])
    assert out.exit_code == 0, out.output
    assert "0 tenants evaluated" in out.output


def test_the_pass_works_on_the_embedded_sqlite_database(tmp_path, redis_url):
    """`make run` uses SQLite: no AT TIME ZONE there, so the pass converts due dates in Python."""
    from flask_migrate import upgrade

    from app import create_app
    from app.services.seed import seed_plans
    from tests.support.config import base_config

    app = create_app(base_config(f"sqlite:///{tmp_path / 'dev.db'}", redis_url,
                                 BILLING_TIMEZONE="America/Los_Angeles"))
    with app.app_context():
        upgrade()
        seed_plans()
        late, paid = make_tenant(), make_tenant()
        make_invoice(late, datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc))  # Feb 28 in Los Angeles
        make_invoice(late, date(2026, 4, 1))
        make_invoice(paid, date(2026, 3, 1), status=InvoiceStatus.PAID)
        first = run_pass(date(2026, 4, 14))
        assert stage_of(late.id) == ("restricted", 45) and stage_of(paid.id) == ("ok", 0)
        assert first.changes == {"restricted": 1} and first.emails_queued == 1
        assert run_pass(date(2026, 4, 14)).changed == 0
        inv = db.session.scalars(select(Invoice).where(Invoice.tenant_id == late.id).order_by(Invoice.id)).first()
        inv.status = InvoiceStatus.PAID
        assert reevaluate_tenant(late.id, as_of=date(2026, 4, 14)) == "ok"  # the Apr 1 invoice: 13 days
        assert stage_of(late.id) == ("ok", 13)
        db.session.remove()
        db.engine.dispose()
