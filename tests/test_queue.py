"""The one module that owns RQ: a business key makes one job, however often it is asked for, and reads back."""
from __future__ import annotations

from app import queue
from app.extensions import rq
from app.services import clock, invoicing
from tests.factories import LONG_AGO, make_invoice, make_tenant, tenant_with_card, utc
from tests.support.queues import run_jobs



def last_month() -> str:
    return invoicing.period_key(*clock.previous_month(clock.today()))


def test_a_months_invoice_job_is_queued_once_and_reads_back_with_its_outcome(app, plans, emulator):
    tenant = tenant_with_card(created_at=LONG_AGO)
    period = last_month()
    first = queue.enqueue_invoice(tenant.id, period, "force_run")
    # The monthly tick (or a second click) asking for the same tenant and month finds the queued job.
    assert queue.enqueue_invoice(tenant.id, period, "scheduled") == first == f"invoice-{tenant.id}-{period}"
    assert rq.queue("billing").job_ids == [first]
    assert queue.job_state(first).active
    run_jobs(("billing",))
    state = queue.job_state(first)
    assert state.status == "finished" and not state.active
    assert (state.result.result, state.result.payment) == ("invoiced", "succeeded")
    # Finished: asking again queues it anew (the job itself finds the invoice already done).
    assert queue.enqueue_invoice(tenant.id, period, "manual") == first
    assert queue.job_state(first).status == "queued"


def test_a_billing_runs_jobs_are_its_own(app, plans):
    tenant = make_tenant(created_at=LONG_AGO)
    scheduled = queue.enqueue_invoice(tenant.id, "2026-10", "scheduled")
    run = queue.enqueue_invoice(tenant.id, "2026-10", "manual", run_id=7)
    assert run == f"invoice-{tenant.id}-2026-10-run-7" != scheduled
    assert rq.queue("billing").job_ids == [scheduled, run]


def test_a_persons_retry_is_not_swallowed_by_a_queued_stuck_rows_charge(app, plans):
    invoice = make_invoice(make_tenant(), utc(2026, 3, 2))
    swept = queue.enqueue_charge(invoice.id, "sweeper")
    assert queue.enqueue_charge(invoice.id, "sweeper") == swept  # the sweeper's next pass: still one job
    manual = queue.enqueue_charge(invoice.id, "manual")
    assert (swept, manual) == (f"charge-{invoice.id}", f"charge-{invoice.id}-manual")
    assert rq.queue("billing").job_ids == [swept, manual]


def test_states_of_jobs_rq_no_longer_knows_are_none(app):
    assert queue.job_state("invoice-1-1999-01") is None
    known = queue.enqueue_outbox_flush()
    assert [s and s.id for s in queue.job_states(["nope", known, "nope-2"])] == [None, known, None]
    assert queue.job_states([]) == []


def test_a_tenants_latest_force_run_reads_back_whatever_month_it_was_for(app, plans):
    forced, scheduled = make_tenant(created_at=LONG_AGO), make_tenant(created_at=LONG_AGO)
    queue.enqueue_invoice(forced.id, "2026-08", queue.FORCE_RUN)
    queue.enqueue_invoice(scheduled.id, "2026-08", "scheduled")  # the monthly tick is no force-run
    latest = queue.latest_force_runs([forced.id, scheduled.id])
    assert list(latest) == [forced.id]
    period, state = latest[forced.id]
    assert (period, state.id, state.status) == ("2026-08", f"invoice-{forced.id}-2026-08", "queued")
    assert queue.latest_force_runs([]) == {}
