"""Root admin controls: exemption, retry now, mark paid out of band, void — each audit-logged with a reason."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import AuditLog, Invoice
from app.services.admin_actions import (ActionError, exempt_tenant, mark_paid_out_of_band, retry_payment_now,
                                        void_invoice)
from app.services.dunning import run_pass
from tests.factories import at, make_invoice, make_root, make_tenant, stripe_backed_invoice
from tests.support.stored import outbox, stage_of

ISSUE = date(2026, 3, 2)


def day(n: int):
    return at(ISSUE + timedelta(days=n), 12)


def audits() -> list[AuditLog]:
    return list(db.session.scalars(select(AuditLog).order_by(AuditLog.id)))


def test_mark_paid_out_of_band_pays_in_stripe_and_restores_the_tenant(app, plans, emulator):
    root = make_root()
    tenant, inv = stripe_backed_invoice(ISSUE)
    run_pass((ISSUE + timedelta(days=46)))
    assert stage_of(tenant.id)[0] == "restricted"
    result = mark_paid_out_of_band(inv.id, root, "  cheque 1042 received  ", now=day(46))
    assert result.stage == "ok" and stage_of(tenant.id) == ("ok", 0)
    inv = db.session.get(Invoice, inv.id)
    assert (inv.status, inv.paid_out_of_band, inv.amount_paid, inv.paid_at) == ("paid", True, 4900, day(46))
    assert gateway.retrieve_invoice(inv.stripe_invoice_id).status == "paid"
    [entry] = audits()
    assert (entry.actor_user_id, entry.tenant_id, entry.action, entry.reason) == (
        root.id, tenant.id, "invoice_paid_out_of_band", "cheque 1042 received")
    assert entry.details["invoice_id"] == inv.id and entry.details["status_before"] == "open"
    assert [m.kind for m in outbox(tenant.id)][-1] == "dunning_restored"
    with pytest.raises(ActionError, match="already paid"):
        mark_paid_out_of_band(inv.id, root, "again", now=day(46))


def test_void_invoice_voids_in_stripe_and_restores_the_tenant(app, plans, emulator):
    root = make_root()
    tenant, inv = stripe_backed_invoice(ISSUE)
    run_pass(ISSUE + timedelta(days=31))
    assert stage_of(tenant.id)[0] == "suspended"
    result = void_invoice(inv.id, root.id, "billed twice by mistake", now=day(31))
    assert result.stage == "ok" and stage_of(tenant.id) == ("ok", 0)
    assert db.session.get(Invoice, inv.id).status == "void"
    assert gateway.retrieve_invoice(inv.stripe_invoice_id).status == "void"
    assert audits()[-1].action == "invoice_void" and audits()[-1].reason == "billed twice by mistake"
    restored = outbox(tenant.id)[-1]
    assert restored.kind == "dunning_restored" and "cancelled" in restored.body_text
    with pytest.raises(ActionError, match="already void"):
        void_invoice(inv.id, root, "again", now=day(31))


def test_void_of_a_local_only_invoice_needs_no_stripe(app, plans):
    root = make_root()
    tenant = make_tenant()
    inv = make_invoice(tenant, ISSUE)
    run_pass(ISSUE + timedelta(days=20))
    void_invoice(inv.id, root, "test invoice", now=day(20))
    assert stage_of(tenant.id) == ("ok", 0)


def test_paid_invoice_cannot_be_voided(app, plans):
    root = make_root()
    inv = make_invoice(make_tenant(), ISSUE, status="paid")
    with pytest.raises(ActionError, match="refund"):
        void_invoice(inv.id, root, "oops", now=day(1))
    assert audits() == []


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_every_action_requires_a_reason(app, plans, reason):
    root = make_root()
    tenant = make_tenant()
    inv = make_invoice(tenant, ISSUE)
    for call in (lambda: exempt_tenant(tenant.id, ISSUE + timedelta(days=30), root, reason, now=day(0)),
                 lambda: retry_payment_now(inv.id, root, reason),
                 lambda: mark_paid_out_of_band(inv.id, root, reason, now=day(0)),
                 lambda: void_invoice(inv.id, root, reason, now=day(0))):
        with pytest.raises(ActionError, match="reason is required"):
            call()
    assert audits() == [] and db.session.get(Invoice, inv.id).status == "open"


def test_only_root_admins_may_act(app, plans):
    tenant = make_tenant()
    inv = make_invoice(tenant, ISSUE)
    admin = tenant.users[0]
    with pytest.raises(PermissionError):
        void_invoice(inv.id, admin, "I would rather not pay", now=day(0))
    assert db.session.get(Invoice, inv.id).status == "open"


def test_exemption_holds_the_tenant_at_ok_until_the_date(app, plans):
    root = make_root()
    tenant = make_tenant()
    make_invoice(tenant, ISSUE)
    run_pass(ISSUE + timedelta(days=33))
    assert stage_of(tenant.id)[0] == "suspended"
    until = ISSUE + timedelta(days=60)
    result = exempt_tenant(tenant.id, until, root, "pays in two instalments", now=day(33))
    assert result.stage == "ok" and stage_of(tenant.id) == ("ok", 33)
    entry = audits()[-1]
    assert (entry.action, entry.reason, entry.details["until"], entry.details["stage_before"]) == (
        "dunning_exempt", "pays in two instalments", until.isoformat(), "suspended")
    assert outbox(tenant.id)[-1].kind == "dunning_arrangement"
    for n in range(34, 61):
        run_pass(ISSUE + timedelta(days=n))
    assert stage_of(tenant.id) == ("ok", 60)
    run_pass(ISSUE + timedelta(days=61))  # the arrangement ended unpaid: straight back to where it stands
    assert stage_of(tenant.id) == ("restricted", 61)
    assert [m.kind for m in outbox(tenant.id)] == ["dunning_suspended", "dunning_arrangement",
                                                   "dunning_restricted"]


def test_exemption_can_be_ended_early_and_not_set_in_the_past(app, plans):
    root = make_root()
    tenant = make_tenant()
    make_invoice(tenant, ISSUE)
    exempt_tenant(tenant.id, ISSUE + timedelta(days=90), root, "arrangement", now=day(20))
    assert stage_of(tenant.id) == ("ok", 20)
    result = exempt_tenant(tenant.id, None, root, "broke the arrangement", now=day(20))
    assert result.stage == "reminder" and stage_of(tenant.id) == ("reminder", 20)
    assert audits()[-1].action == "dunning_exempt_ended"
    with pytest.raises(ActionError, match="today or later"):
        exempt_tenant(tenant.id, ISSUE, root, "backdated", now=day(20))


def test_retry_payment_now_queues_one_charge_job(app, plans):
    from rq.job import Job

    from app.extensions import rq

    root = make_root()
    inv = make_invoice(make_tenant(), ISSUE)
    first = retry_payment_now(inv.id, root, "customer says the card works now")
    second = retry_payment_now(inv.id, root, "impatient")
    assert first.detail == second.detail == f"charge-{inv.id}-manual"
    assert rq.queue("billing").job_ids == [first.detail]
    job = Job.fetch(first.detail, connection=rq.connection)
    assert job.func_name == "app.jobs.charge_invoice" and job.args == (inv.id, "manual")
    assert [a.action for a in audits()] == ["payment_retry", "payment_retry"]


def test_retry_payment_now_inline_charges_and_restores(app, plans, emulator):
    root = make_root()
    tenant, inv = stripe_backed_invoice(ISSUE, card="pm_card_visa")
    run_pass(ISSUE + timedelta(days=31))
    assert stage_of(tenant.id)[0] == "suspended"
    result = retry_payment_now(inv.id, root, "card replaced", inline=True, now=day(31))
    assert result.detail == "succeeded"
    assert db.session.get(Invoice, inv.id).status == "paid"
    assert stage_of(tenant.id) == ("ok", 0)


def test_retry_of_a_paid_invoice_is_refused(app, plans):
    root = make_root()
    inv = make_invoice(make_tenant(), ISSUE, status="paid")
    with pytest.raises(ActionError, match="not open"):
        retry_payment_now(inv.id, root, "why not")
