"""Monthly invoices: generation, Stripe finalization and charging — exactly once however often it runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest
from rq import SimpleWorker
from sqlalchemy import func, select

from app import queue, stripe_gateway
from app.extensions import db, rq
from app.models import Invoice, InvoiceLine, InvoiceStatus, Tenant
from app.services import invoicing
from app.services.usage import record_events
from tests.billing_support import add_usage, attempts_of, charges_for, invoices_of, stripe_invoices
from tests.factories import make_tenant, tenant_with_card, utc
from tests.support.concurrency import run_concurrently

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)  # created well before October



def work_billing_queue() -> None:
    SimpleWorker([rq.queue("billing")], connection=rq.connection).work(burst=True)


# -- the happy path ----------------------------------------------------------------------------------------

def test_a_tenant_is_invoiced_and_charged_for_last_month(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 3), voice_minutes=700, sms_outbound=100)
    add_usage(tenant.id, date(2026, 11, 1), voice_minutes=9000)  # November: not on October's invoice

    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)

    assert outcome.result == "invoiced" and outcome.payment == "succeeded", outcome
    [inv] = invoices_of(tenant.id)
    assert (inv.status, inv.amount_due, inv.amount_paid) == (InvoiceStatus.PAID, 2900 + 300, 3200)
    assert (inv.period_start, inv.period_end) == (date(2026, 10, 1), date(2026, 10, 31))
    assert inv.number == "SP-2026-10-000001"
    assert inv.issued_at == NOW and inv.due_at == NOW and inv.paid_at is not None
    assert inv.hosted_invoice_url and inv.stripe_invoice_id
    assert [(ln.metric, ln.quantity, ln.amount) for ln in inv.lines] == [
        (None, 1, 2900), ("sms_outbound", 0, 0), ("voice_minutes", 200, 300)]
    [remote] = stripe_invoices(emulator, tenant.stripe_customer_id)
    assert remote["status"] == "paid" and remote["amount_paid"] == 3200
    assert remote["metadata"]["invoice_id"] == str(inv.id) and remote["metadata"]["number"] == inv.number
    assert len(remote["lines"]["data"]) == 3
    assert [c["amount"] for c in charges_for(emulator, tenant.stripe_customer_id)] == [3200]
    assert [a.status for a in attempts_of(inv.id)] == ["succeeded"]
    assert attempts_of(inv.id)[0].idempotency_key == f"pay-attempt-{attempts_of(inv.id)[0].id}"


def test_invoice_due_days_config_sets_due_at(app, plans, emulator):
    app.config["INVOICE_DUE_DAYS"] = 14
    tenant = tenant_with_card(created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert inv.due_at == NOW + timedelta(days=14)


def test_rerun_is_idempotent_and_makes_no_stripe_calls(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    first = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    calls = len(emulator.requests())
    again = [invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW + timedelta(hours=h)) for h in (1, 2)]
    assert first.result == "invoiced"
    assert [o.result for o in again] == ["skipped", "skipped"]
    assert all(o.reason == "already done" and o.invoice_id == first.invoice_id for o in again)
    assert len(invoices_of(tenant.id)) == 1
    assert len(emulator.requests()) == calls
    assert len(charges_for(emulator, tenant.stripe_customer_id)) == 1


def test_generate_invoice_returns_the_existing_one(app, plans):
    tenant = make_tenant(created_at=EARLY)
    a = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    b = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    assert a.id == b.id and a.status == InvoiceStatus.DRAFT and a.number is None
    assert db.session.scalar(select(func.count()).select_from(InvoiceLine)) == 1


def test_database_refuses_a_second_live_invoice_for_a_period(app, plans):
    from sqlalchemy.exc import IntegrityError

    tenant = make_tenant(created_at=EARLY)
    invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    db.session.add(Invoice(tenant_id=tenant.id, period_start=date(2026, 10, 1), period_end=date(2026, 10, 31),
                           amount_due=1, currency="usd", status="open"))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_a_voided_invoice_lets_the_period_be_invoiced_again(app, plans):
    tenant = make_tenant(created_at=EARLY)
    first = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    first.status = InvoiceStatus.VOID
    db.session.commit()
    second = invoicing.generate_invoice(tenant.id, 2026, 10, now=NOW)
    assert second.id != first.id and second.status == InvoiceStatus.DRAFT


def test_numbers_are_gapless_per_month_and_readable(app, plans, emulator):
    tenants = [tenant_with_card(created_at=EARLY) for _ in range(3)]
    for t in tenants:
        invoicing.invoice_and_charge(t.id, "2026-10", now=NOW)
    invoicing.invoice_and_charge(tenants[0].id, "2026-09", now=NOW - timedelta(days=31))
    numbers = sorted(db.session.scalars(select(Invoice.number)))
    assert numbers == ["SP-2026-09-000001", "SP-2026-10-000001", "SP-2026-10-000002", "SP-2026-10-000003"]


# -- who gets billed -------------------------------------------------------------------------------------

def test_tenant_created_mid_month_is_billed_the_plan_fee(app, plans, emulator):
    tenant = tenant_with_card(created_at=utc(2026, 10, 15, 12))
    add_usage(tenant.id, date(2026, 10, 20), sms_outbound=600)
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert outcome.result == "invoiced" and inv.status == InvoiceStatus.PAID
    assert inv.amount_due == 2900 + 125  # full plan fee (no proration) + 100 billable SMS x 0.0125


def test_tenant_created_after_the_month_is_not_billed_for_it(app, plans, emulator):
    tenant = tenant_with_card(created_at=utc(2026, 11, 1, 0, 0))
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    assert outcome.result == "skipped" and "after the period" in outcome.reason
    assert invoices_of(tenant.id) == []
    assert invoicing.billable_tenant_ids(2026, 10) == []


def test_no_usage_tenant_gets_only_the_plan_fee(app, plans, emulator):
    tenant = tenant_with_card(plan="pro", created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert [(ln.metric, ln.amount) for ln in inv.lines] == [(None, 9900)]
    assert inv.amount_due == 9900 and inv.status == InvoiceStatus.PAID


def test_tenant_without_a_stripe_customer_gets_one_first(app, plans, emulator):
    tenant = make_tenant(created_at=EARLY)
    assert tenant.stripe_customer_id is None
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    db.session.refresh(tenant)
    assert tenant.stripe_customer_id
    [remote] = stripe_invoices(emulator, tenant.stripe_customer_id)
    [inv] = invoices_of(tenant.id)
    assert remote["id"] == inv.stripe_invoice_id
    # No card yet: the invoice is open with the reason kept, and the tenant is not flagged as a billing error.
    assert outcome.result == "invoiced" and outcome.payment == "failed"
    assert inv.status == InvoiceStatus.OPEN and inv.last_payment_error
    assert tenant.billing_error is None


def test_zero_amount_invoice_is_paid_at_finalization_without_a_charge(app, plans, emulator):
    from app.models import Plan

    db.session.add(Plan(code="free", name="Free", currency="usd", monthly_fee=0))
    db.session.commit()
    tenant = tenant_with_card(plan="free", created_at=EARLY)
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert outcome.result == "invoiced" and inv.status == InvoiceStatus.PAID and inv.amount_due == 0
    assert attempts_of(inv.id) == [] and charges_for(emulator, tenant.stripe_customer_id) == []


# -- concurrency -----------------------------------------------------------------------------------------

def test_ten_concurrent_force_runs_make_one_invoice_and_one_charge(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 9), voice_minutes=1234)
    emulator.set_faults(latency_ms=30)  # widen the race window
    tenant_id = tenant.id
    outcomes = run_concurrently(lambda _: invoicing.invoice_and_charge(tenant_id, "2026-10", trigger="manual"), 10,
                                app=app)
    assert sorted(o.result for o in outcomes).count("invoiced") == 1
    assert all(o.result in ("invoiced", "skipped") for o in outcomes)
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.PAID
    assert len(stripe_invoices(emulator, tenant.stripe_customer_id)) == 1
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == 1
    assert len(attempts_of(inv.id)) == 1
    db.session.refresh(tenant)
    assert tenant.billing_error is None


def test_ten_force_run_jobs_on_rq_make_one_invoice_and_one_charge(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    for n in range(10):  # ten distinct jobs (ids of their own), all for the same tenant and month
        queue.enqueue_unique("billing", queue.INVOICE_TENANT, tenant.id, "2026-10", "manual",
                             job_id=f"invoice-{tenant.id}-2026-10-force-{n}")
    work_billing_queue()
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.PAID
    assert len(stripe_invoices(emulator, tenant.stripe_customer_id)) == 1
    assert len(charges_for(emulator, tenant.stripe_customer_id)) == 1


# -- crashes ---------------------------------------------------------------------------------------------

class Crash(BaseException):
    """A process dying mid-step: not an Exception, so nothing in the service catches it."""


def crash_after(monkeypatch, name: str, nth: int = 1):
    """Make the gateway call `name` really happen, then die right after its nth call."""
    real = getattr(stripe_gateway, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == nth:
            raise Crash(f"killed after {name}")
        return result

    monkeypatch.setattr(stripe_gateway, name, wrapper)


@pytest.mark.parametrize("step, nth", [
    ("create_customer", 1),
    ("create_invoice", 1),  # Stripe made the draft; we never stored its id
    ("add_invoice_item", 1),  # first item made
    ("add_invoice_item", 3),  # every item made, not finalized
    ("finalize_invoice", 1),  # finalized in Stripe; we never recorded it open
    ("pay_invoice", 1),  # charged in Stripe; the attempt row is still pending
])
def test_a_run_killed_at_any_step_is_completed_by_the_next_without_duplicates(app, plans, emulator, monkeypatch,
                                                                              step, nth):
    tenant = make_tenant(created_at=EARLY) if step == "create_customer" else tenant_with_card(created_at=EARLY)
    tenant_id = tenant.id
    add_usage(tenant_id, date(2026, 10, 2), voice_minutes=900, sms_outbound=800)
    crash_after(monkeypatch, step, nth)
    with pytest.raises(Crash):
        invoicing.invoice_and_charge(tenant_id, "2026-10", now=NOW)
    db.session.rollback()
    db.session.remove()  # a new process: nothing survives but the database and Stripe
    monkeypatch.undo()

    outcome = invoicing.invoice_and_charge(tenant_id, "2026-10", now=NOW + timedelta(minutes=5))
    tenant = db.session.get(Tenant, tenant_id)
    [inv] = invoices_of(tenant_id)
    [remote] = stripe_invoices(emulator, tenant.stripe_customer_id)
    assert remote["id"] == inv.stripe_invoice_id and len(remote["lines"]["data"]) == 3
    assert inv.amount_due == remote["amount_due"] == 2900 + 600 + 375
    assert inv.number == "SP-2026-10-000001"
    if step == "create_customer":  # Stripe made the customer; we never stored it. Still one customer.
        assert len(emulator.stripe_client().v1.customers.list(params={"limit": 100}).data) == 1
        assert outcome.payment == "failed" and inv.status == InvoiceStatus.OPEN  # it has no card yet
        return
    assert outcome.result == "invoiced", outcome
    assert inv.status == InvoiceStatus.PAID and inv.amount_paid == inv.amount_due == remote["amount_paid"]
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == 1
    assert all(a.status != "pending" for a in attempts_of(inv.id))


def kill_with_children(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        children = []
    for child in children:
        os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_worker_mid_run_is_completed_by_the_next_run(app, plans, emulator, database_url, redis_url):
    tenant = tenant_with_card(created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 2), voice_minutes=900, sms_outbound=800, sms_inbound=2000)
    queue.enqueue_invoice(tenant.id, "2026-10", "manual")
    emulator.set_faults(latency_ms=400)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, STRIPE_API_BASE=emulator.url,
               STRIPE_SECRET_KEY=emulator.api_key, STRIPE_RATE_LIMIT_PER_S="0", BILLING_TIMEZONE="UTC")
    worker = subprocess.Popen([sys.executable, "worker.py", "billing", "--burst"], cwd=root, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            made = [r for r in emulator.requests() if r["method"] == "POST" and "invoiceitems" in r["path"]]
            if made:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached Stripe")
        kill_with_children(worker.pid)  # the worker and its work horse (RQ puts it in its own session)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    emulator.clear_faults()
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.DRAFT and inv.stripe_invoice_id  # it died half-way

    deadline = time.monotonic() + 20  # the dead worker's advisory lock goes with its connection
    while True:
        outcome = invoicing.invoice_and_charge(tenant.id, "2026-10")
        if outcome.result == "invoiced" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcome.result == "invoiced", outcome
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.PAID
    [remote] = stripe_invoices(emulator, tenant.stripe_customer_id)
    assert len(remote["lines"]["data"]) == 4 and remote["amount_paid"] == inv.amount_due
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == 1


# -- failures stay with their tenant -----------------------------------------------------------------------

def test_one_failing_tenant_does_not_stop_the_others_and_is_flagged(app, plans, emulator):
    good = [tenant_with_card(created_at=EARLY) for _ in range(3)]
    broken = make_tenant(created_at=EARLY, stripe_customer_id="cus_deleted_in_stripe")
    assert invoicing.run_monthly_tick(date(2026, 11, 1), now=NOW) == 4
    work_billing_queue()
    for t in good:
        [inv] = invoices_of(t.id)
        assert inv.status == InvoiceStatus.PAID
    db.session.refresh(broken)
    assert broken.billing_error and "2026-10" in broken.billing_error and broken.billing_error_at
    assert invoices_of(broken.id) == []  # Stripe refused the draft: it is dropped, no number was used

    # Fixed (the customer re-created): the next tick picks exactly that tenant up and clears the flag.
    broken.stripe_customer_id = None
    db.session.commit()
    assert invoicing.run_monthly_tick(date(2026, 11, 2), now=NOW + timedelta(days=1)) == 1
    work_billing_queue()
    db.session.refresh(broken)
    assert broken.billing_error is None
    assert [i.status for i in invoices_of(broken.id)] == ["open"]  # no card on file yet: open, declined


# -- the monthly tick ------------------------------------------------------------------------------------

def test_monthly_tick_rebuilds_yesterday_fans_out_and_is_harmless_when_repeated(app, plans, emulator):
    a = tenant_with_card(created_at=EARLY)
    b = tenant_with_card(plan="pro", created_at=utc(2026, 10, 31, 23))
    tomorrow_s = tenant_with_card(created_at=utc(2026, 11, 1, 0, 5))  # November's: not billed for October
    record_events(a, [{"id": "late", "metric": "voice_minutes", "quantity": 800,
                       "occurred_at": utc(2026, 10, 31, 23, 59)}])  # raw only: the tick must roll it up

    assert invoicing.run_monthly_tick(date(2026, 11, 1), now=NOW) == 2
    assert invoicing.run_monthly_tick(date(2026, 11, 1), now=NOW) == 2  # doubled tick: same job ids, no dupes
    assert {j.id for j in rq.queue("billing").jobs} == {f"invoice-{a.id}-2026-10", f"invoice-{b.id}-2026-10"}
    work_billing_queue()

    [inv_a] = invoices_of(a.id)
    assert inv_a.status == InvoiceStatus.PAID and inv_a.amount_due == 2900 + 450
    assert [i.status for i in invoices_of(b.id)] == ["paid"]
    assert invoices_of(tomorrow_s.id) == []
    # The scheduler was down on the 1st: a later tick finds nothing missing, so it enqueues nothing.
    assert invoicing.run_monthly_tick(date(2026, 11, 3), now=NOW + timedelta(days=2)) == 0
    assert len(charges_for(emulator, a.stripe_customer_id)) == 1


def test_a_missed_first_of_the_month_is_caught_up_later(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    assert invoicing.run_monthly_tick(date(2026, 11, 4), now=NOW + timedelta(days=3)) == 1
    work_billing_queue()
    assert [i.status for i in invoices_of(tenant.id)] == ["paid"]


def test_billing_run_counts_progress_as_jobs_finish(app, plans, emulator):
    tenants = [tenant_with_card(created_at=EARLY) for _ in range(2)]
    broken = make_tenant(created_at=EARLY, stripe_customer_id="cus_missing")
    invoicing.invoice_and_charge(tenants[0].id, "2026-10")  # already done before the run
    run = invoicing.start_billing_run("2026-10", now=NOW)
    assert (run.total, run.done, run.failed, run.finished_at) == (3, 0, 0, None)
    work_billing_queue()
    db.session.refresh(run)
    assert (run.done, run.failed) == (2, 1) and run.finished_at is not None
    assert db.session.get(Tenant, broken.id).billing_error


def test_billing_run_with_no_tenants_is_finished_at_once(app, plans):
    run = invoicing.start_billing_run("2026-10", now=NOW)
    assert run.total == 0 and run.finished_at == NOW


# -- the CLI ---------------------------------------------------------------------------------------------

def test_cli_run_invoices_summarises_and_is_idempotent(app, plans, emulator):
    ok = tenant_with_card(created_at=EARLY)
    declined = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    runner = app.test_cli_runner()

    first = runner.invoke(args=["billing", "run-invoices", "--period", "2026-10"])
    assert first.exit_code == 0, first.output
    assert "invoiced 2 (paid 1, payment declined 1), skipped 0, failed 0" in first.output
    assert f"tenant {declined.id}: invoice open, payment failed: Your card was declined." in first.output

    again = runner.invoke(args=["billing", "run-invoices", "--period", "2026-10", "--tenant", str(ok.id)])
    assert again.exit_code == 0 and "invoiced 0, skipped 1 (already invoiced 1), failed 0" in again.output
    assert len(charges_for(emulator, ok.stripe_customer_id)) == 1


def test_cli_default_period_is_the_month_before_as_of(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    result = app.test_cli_runner().invoke(args=["billing", "run-invoices", "--as-of", "2026-10-05"])
    assert result.exit_code == 0 and "2026-09: invoiced 1" in result.output
    assert [(i.period_start, i.status) for i in invoices_of(tenant.id)] == [(date(2026, 9, 1), "paid")]


def test_cli_exit_code_is_1_when_a_tenant_failed(app, plans, emulator):
    tenant_with_card(created_at=EARLY)
    broken = make_tenant(created_at=EARLY, stripe_customer_id="cus_missing")
    result = app.test_cli_runner().invoke(args=["billing", "run-invoices", "--period", "2026-10"])
    assert result.exit_code == 1
    assert "invoiced 1 (paid 1), skipped 0, failed 1 (no Stripe customer 1)" in result.output
    assert f"tenant {broken.id}: FAILED" in result.output and "cus_missing" in result.output


@pytest.mark.parametrize("args, message", [
    (["--period", "2026-13"], "--period"),
    (["--period", "October"], "YYYY-MM"),
    (["--as-of", "yesterday"], "--as-of"),
    (["--tenant", "999999", "--period", "2026-10"], "no tenant"),
])
def test_cli_rejects_bad_input_clearly(app, plans, args, message):
    result = app.test_cli_runner().invoke(args=["billing", "run-invoices", *args])
    assert result.exit_code == 2 and message in result.output
