"""What each HTMX component of the system billing pages takes: one small view model, and the words it shows.

A component is one partial with a stable id, included by its page and returned alone by the endpoints that
change it (app/fragments.py decides which). Each partial reads one name — `panel` (a tenant's force-run),
`tenant_row` (a row of the tenants table), `table` (the table with its month select) or `progress` (run all)
— built here from the read models in queries.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import queue
from app.models import BillingRun, InvoiceStatus
from app.services.invoicing import REASON_LABELS, Reason, RunSummary
from app.system_billing import queries
from app.system_billing.queries import ForceRun, HeadlinePart, TenantPage, TenantRow

# -- a tenant's force-run ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ForceRunPanel:
    """`_partials/force_run.html`: a tenant's latest force-run (polling while it waits or runs) and its form."""

    tenant_id: int
    tenant_name: str
    periods: list[str]  # the months its own select offers (the tenant's page and the no-JS status page)
    selected: str  # the month selected there
    period: str | None = None  # the month of the run shown; None when there is none
    state: str = "idle"  # idle, queued, started, deferred, scheduled, finished, failed
    message: str = ""
    tone: str = "info"  # info, ok, bad — the badge colour
    in_table: bool = False  # in the tenants table: its button submits the table's one month select
    error: str | None = None  # why the month asked for was refused
    focus: bool = False  # the pressed button is gone: focus moves to the status line

    @property
    def polling(self) -> bool:
        return self.state in queue.ACTIVE

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")


def force_run_panel(row: TenantRow, run: ForceRun | None, periods: list[str], *, selected: str | None = None,
                    in_table: bool = False, error: str | None = None, focus: bool = False) -> ForceRunPanel:
    """The force-run component of a tenant's row or page (the month selected defaults to the run's, else the
    newest offered)."""
    state, message, tone = _force_run_state(run) if run else ("idle", "", "info")
    return ForceRunPanel(row.id, row.name, periods, selected or (run.period if run else periods[0]),
                         run.period if run else None, state, message, tone, in_table, error, focus)


def unqueued_panel(row: TenantRow, period: str, periods: list[str], *, in_table: bool, focus: bool = False
                   ) -> ForceRunPanel:
    """The force-run component when the job could not even be queued (Redis down)."""
    return ForceRunPanel(row.id, row.name, periods, period, period, "failed",
                         "Could not queue the job (is Redis up?).", "bad", in_table, focus=focus)


def _force_run_state(run: ForceRun) -> tuple[str, str, str]:
    if run.status == "idle":
        return "idle", "", "info"
    if run.status in queue.ACTIVE:
        return run.status, "Running…" if run.status == "started" else "Queued, waiting for a worker…", "info"
    if run.status == "finished":
        return ("finished", *describe_outcome(run.outcome))
    return "failed", f"The job {run.status}: see the worker log.", "bad"


def describe_outcome(outcome: Any) -> tuple[str, str]:
    """A sentence and a tone for an InvoiceOutcome (the invoice job's result)."""
    if outcome is None:
        return "Finished.", "info"
    result = str(getattr(outcome, "result", ""))
    payment = getattr(outcome, "payment", None)
    status = getattr(outcome, "invoice_status", None)
    reason = getattr(outcome, "reason", None)
    code = getattr(outcome, "code", None)  # absent from results of jobs queued before reasons existed
    if result == "failed":
        if code == Reason.STRIPE_UNREACHABLE:
            return "Stripe is not reachable: nothing was invoiced or charged; the next run retries.", "bad"
        label = REASON_LABELS.get(code) if code not in (None, Reason.ERROR) else None
        return f"Invoicing failed{f' ({label})' if label else ''}: {reason or 'unknown error'}", "bad"
    if payment == "succeeded" or (payment is None and status == InvoiceStatus.PAID.value and result == "invoiced"):
        return "Invoiced and paid.", "ok"
    if payment == "failed":
        return f"Invoiced; payment failed: {reason or 'declined'}", "bad"
    if payment == "action_required":
        return f"Invoiced; the customer must authenticate the payment: {reason or ''}".rstrip(": "), "bad"
    if payment == "error":
        return f"Invoiced; the charge could not be made now and will be retried ({reason or 'Stripe error'}).", \
            "bad"
    if result == "skipped":
        if code == Reason.CREATED_AFTER_PERIOD:
            period = getattr(outcome, "period", "")
            return f"Nothing to do: the tenant was created after {period}, so it is not billed for it.", "info"
        if code in (Reason.CHARGE_RETRY, Reason.STRIPE_REFUSED):
            return f"Not charged now: {reason}", "bad"
        shown = f" (invoice {status})" if status else ""
        why = REASON_LABELS.get(code) or reason or "already done"
        return f"Nothing to do: {why}{shown}.", "ok" if status == "paid" else "info"
    return f"Invoiced{f' ({status})' if status else ''}.", "ok" if status == "paid" else "info"


# -- the tenants table -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantRowView:
    """`_partials/system_tenant_row.html`: one tenant's billing state and its force-run."""

    row: TenantRow
    force_run: ForceRunPanel


@dataclass(frozen=True)
class TenantTable:
    """`_partials/system_tenant_table.html`: a page of tenants and the month every row's Force-run invoices."""

    page: TenantPage
    rows: list[TenantRowView]
    periods: list[str]
    month: str  # selected in the table's one month select

    @property
    def sort_label(self) -> str:
        return queries.SORTS[self.page.query.sort]


def tenant_table(page: TenantPage, periods: list[str], month: str, *,
                 refused: tuple[int, str] | None = None) -> TenantTable:
    """The table for a page of rows, each with its latest force-run (`refused`: a tenant's refused month and
    why, shown on its row)."""
    runs = queries.latest_force_runs([r.id for r in page.rows])
    rows = [TenantRowView(r, force_run_panel(r, runs.get(r.id), periods, in_table=True,
                                             error=refused[1] if refused and refused[0] == r.id else None))
            for r in page.rows]
    return TenantTable(page, rows, periods, month)


# -- run all tenants ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunProgress:
    """`_partials/billing_run.html`: a run's progress and result by reason, and the form while none runs."""

    run: BillingRun | None
    summary: RunSummary
    headline: list[HeadlinePart]
    periods: list[str]
    selected: str | None = None  # the month the form offers first
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished_at

    @property
    def finished(self) -> int:
        """Tenants done or failed so far (each poll sends it back as `seen`)."""
        return self.run.done + self.run.failed if self.run else 0

    @property
    def percent(self) -> float:
        return 100 * self.finished / self.run.total if self.run and self.run.total else 100


def run_progress(run_id: int | None, periods: list[str], *, selected: str | None = None,
                 error: str | None = None) -> RunProgress:
    """A run (the latest when no id), its counts by reason and its one-line result naming unsettled tenants."""
    run, summary = queries.run_with_summary(run_id)
    headline = queries.run_headline(summary, queries.run_problems(run, summary)) if run else []
    return RunProgress(run, summary, headline, periods, selected or (run.period if run else None), error)

