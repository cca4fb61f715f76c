"""The root admin's system billing page: every tenant's billing state, force-runs, run-all, root controls, webhooks.

All routes here are root-only (deny by default, see app/access.py). Every form works without JavaScript (POST,
then a 303 back with a flash, or the page re-rendered with the error at 422); with htmx the same endpoints
answer with the component that changed (a force-run status, a tenant row, the run progress bar), each rendered
from its one view model (components.py) by app/fragments.py.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from app import queue
from app.errors import json_error, wants_json
from app.extensions import db
from app.fragments import billing_changed, for_htmx, wants_fragment
from app.models import Invoice, WebhookEvent
from app.services import admin_actions, clock
from app.services.invoicing import Reason, start_billing_run
from app.services.webhooks import processing as webhook_processing
from app.system_billing import components, queries
from app.system_billing.components import RunProgress, TenantRowView
from app.system_billing.queries import TenantQuery, TenantRow

bp = Blueprint("system_billing", __name__)


# -- the month a root admin asks to invoice ------------------------------------------------------------------

def parse_period_input(text: str | None, today: date | None = None) -> str:
    """Validate a YYYY-MM period a root admin asked to invoice; ValueError with a message people can read."""
    text = (text or "").strip()
    try:
        year, month = clock.parse_period(text)
    except ValueError:
        raise ValueError("Enter the month as YYYY-MM, for example 2026-09.") from None
    if len(text) != 7 or year < 2000:
        raise ValueError("Enter the month as YYYY-MM, for example 2026-09.")
    latest = queries.default_period(today)
    period = f"{year:04d}-{month:02d}"
    if period > latest:
        raise ValueError(f"{period} has not ended yet: the latest month you can invoice is {latest}.")
    return period


def _refused(message: str, fragment: Callable[[], str], page: Callable[[], str]):
    """A month that cannot be invoiced, at 422: the error shape for JSON, the component with the message for
    htmx, else the page with it."""
    if wants_json():
        return json_error(422, message, "validation_error", {"period": [message]})
    return (fragment() if wants_fragment() else page()), 422


def _asked_period() -> str | None:
    """The force-run month a table request carries (the page's select, sent along by htmx), if valid."""
    raw = request.args.get("period")
    if not raw:
        return None
    try:
        return parse_period_input(raw)
    except ValueError:
        return None


# -- the page ------------------------------------------------------------------------------------------------

@bp.route("/admin/system-billing")
def index():
    query = TenantQuery.from_args(request.args)
    if wants_fragment("tenant-table"):
        periods = queries.period_choices()
        # The page's month select travels with the request (hx-include on the tenants section): keep it.
        table = components.tenant_table(queries.tenant_page(query), periods, _asked_period() or periods[0])
        resp = make_response(render_template("_partials/system_tenant_table.html", table=table))
        # The address bar gets the view's canonical address (search, filters, sort, page; defaults left out),
        # not the raw form with its empty fields and the month select: a view to bookmark or share.
        resp.headers["HX-Push-Url"] = url_for("system_billing.index", **query.args())
        return resp
    return _index_page(query, queries.period_choices())


def _index_page(query: TenantQuery, periods: list[str], *, refused: tuple[int, str] | None = None,
                typed: str | None = None, run_error: str | None = None) -> str:
    """The whole page; `refused`: the tenant whose force-run month (`typed`) was refused, and why; `run_error`:
    why run-all refused its month."""
    overview = queries.overview(as_of=queries.overdue_as_of(), periods=periods)
    # The month pickers start on the month that has work (the one asked for, when a table refresh says).
    month = _asked_period() or overview.work_period or periods[0]
    table = components.tenant_table(queries.tenant_page(query), periods, typed or month, refused=refused)
    return render_template("system_billing/index.html", overview=overview, table=table,
                           progress=components.run_progress(None, periods, selected=month, error=run_error),
                           webhook_events=queries.failed_webhook_events(), stages=queries.STAGES,
                           flags=queries.FLAGS, per_page_choices=queries.PER_PAGE_CHOICES)


def _back_to_index():
    """Where a no-JS form goes back to: the system billing page it came from (query kept), else its first page."""
    ref = request.referrer or ""
    parts = urlsplit(ref)
    if parts.path == url_for("system_billing.index") and parts.netloc == request.host:
        return redirect(url_for("system_billing.index") + (f"?{parts.query}" if parts.query else ""), 303)
    return redirect(url_for("system_billing.index"), 303)


def _row_or_404(tenant_id: int) -> TenantRow:
    row = queries.tenant_row(tenant_id)
    if row is None:
        abort(404)
    return row


# -- force-run one tenant ------------------------------------------------------------------------------------

def _in_table() -> bool:
    """Whether the force-run component lives in the tenants table (one month select for all rows)."""
    return (request.values.get("in_table") or "") == "1"


def _panel_html(panel: components.ForceRunPanel) -> str:
    return render_template("_partials/force_run.html", panel=panel)


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/force-run", methods=["POST"])
def force_run(tenant_id: int):
    row = _row_or_404(tenant_id)
    periods, in_table = queries.period_choices(), _in_table()
    raw = request.form.get("period", "")
    try:
        period = parse_period_input(raw)
    except ValueError as err:
        message = str(err)
        panel = components.force_run_panel(row, None, periods, selected=raw, in_table=in_table, error=message)
        # Without JS the page comes back: the system page with the message on the tenant's row, or its own page.
        page = ((lambda: _index_page(TenantQuery.from_args(request.args), periods, refused=(tenant_id, message),
                                     typed=raw))
                if in_table else (lambda: _tenant_html(tenant_id, periods, errors={"force_run": message})))
        return _refused(message, lambda: _panel_html(panel), page)
    try:
        queue.enqueue_invoice(tenant_id, period, queue.FORCE_RUN)
        panel = components.force_run_panel(row, queries.force_run(tenant_id, period), periods, in_table=in_table,
                                           focus=True)  # the pressed button is gone: focus its status
    except Exception:  # noqa: BLE001 - Redis unavailable: tell the admin, never a 500
        current_app.logger.exception("could not queue the invoice job of tenant %s", tenant_id)
        panel = components.unqueued_panel(row, period, periods, in_table=in_table, focus=True)
    if wants_fragment():
        return _panel_html(panel)
    if panel.state == "failed":
        flash(f"{row.name}: {panel.message}", "error")
    else:
        flash(f"Invoice run for {row.name} ({period}) queued; reload in a moment to see the result.", "info")
    if not in_table:
        return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)
    return _back_to_index()


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/force-run/status")
def force_run_status(tenant_id: int):
    row = _row_or_404(tenant_id)
    periods, in_table = queries.period_choices(), _in_table()
    raw = request.args.get("period") or periods[0]
    try:
        period = parse_period_input(raw)
    except ValueError as err:
        panel = components.force_run_panel(row, None, periods, selected=raw, in_table=in_table, error=str(err))
        return _refused(str(err), lambda: _panel_html(panel), lambda: _panel_html(panel))
    run = queries.force_run(tenant_id, period)
    # The page for people without JS has the component's own form (never the table's).
    panel = components.force_run_panel(row, run, periods, in_table=in_table and wants_fragment())
    if panel.in_table and panel.done:
        # The job is over: replace the whole row, so it shows the new invoice and balance at once; the poll that
        # first sees it over tells the page, so the summary cards and the table follow without a reload.
        fresh = queries.tenant_row(tenant_id) or row
        view = TenantRowView(fresh, components.force_run_panel(fresh, run, periods, in_table=True))
        resp = billing_changed(render_template("_partials/system_tenant_row.html", tenant_row=view))
        resp.headers["HX-Retarget"] = f"#tenant-row-{tenant_id}"
        resp.headers["HX-Reswap"] = "outerHTML"
        return resp
    return for_htmx("system_billing/force_run.html", "_partials/force_run.html", panel=panel, changed=panel.done)


# -- run all tenants -----------------------------------------------------------------------------------------

def _run_answer(progress: RunProgress, status: int = 200):
    """The run-all component (the page of the run without JS).

    Polls send the number of tenants finished they last showed (`seen`): when it moved, the answer tells the
    page (HX-Trigger), so the cards and the table follow the run as it goes.
    """
    seen = request.args.get("seen", type=int)
    moved = progress.run is not None and seen is not None and seen != progress.finished
    return for_htmx("system_billing/run.html", "_partials/billing_run.html", status=status, changed=moved,
                    progress=progress)


@bp.route("/admin/system-billing/runs", methods=["POST"])
def start_run():
    periods = queries.period_choices()
    raw = request.form.get("period", "")
    try:
        period = parse_period_input(raw)
    except ValueError as err:
        message = str(err)
        return _refused(message, lambda: render_template("_partials/billing_run.html", progress=(
            components.run_progress(None, periods, selected=raw, error=message))),
            lambda: _index_page(TenantQuery.from_args(request.args), periods, run_error=message))
    try:
        run = start_billing_run(period, started_by=current_user.id)
    except Exception:  # noqa: BLE001 - Redis or database trouble: a message, never a 500
        db.session.rollback()
        current_app.logger.exception("could not start a billing run for %s", period)
        message = "Could not start the run (queue unavailable). Nothing was started; try again."
        if wants_fragment():
            return _run_answer(components.run_progress(None, periods, selected=period, error=message), 422)
        flash(message, "error")
        return _back_to_index()
    if wants_fragment():
        return _run_answer(components.run_progress(run.id, periods, selected=period))
    _run, summary = queries.run_with_summary(run.id)
    later = summary.count(Reason.CREATED_AFTER_PERIOD)
    flash(f"Billing run #{run.id} for {period} started: {run.total} tenants queued"
          + (f" ({later} created after {period}, not billed for it)." if later else "."), "success")
    return _back_to_index()


@bp.route("/admin/system-billing/runs/<int:run_id>")
def run_progress(run_id: int):
    progress = components.run_progress(run_id, queries.period_choices())
    if progress.run is None:
        abort(404)
    return _run_answer(progress)


# -- one tenant: details and root controls -------------------------------------------------------------------

def _tenant_html(tenant_id: int, periods: list[str], *, errors: dict[str, str] | None = None,
                 form: dict[str, str] | None = None) -> str:
    detail = queries.tenant_detail(tenant_id)
    if detail is None:
        abort(404)
    errors = errors or {}
    # The tenant's latest force-run, if RQ still knows it (queued, running or finished); else the month with work.
    run = queries.latest_force_run(tenant_id)
    month = run.period if run else queries.tenant_work_period(detail.tenant, detail.invoices, periods)
    panel = components.force_run_panel(detail.row, run, periods, selected=month, error=errors.get("force_run"))
    return render_template("system_billing/tenant.html", d=detail, row=detail.row, panel=panel, errors=errors,
                           form=form or {})


def _tenant_page(tenant_id: int, *, errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
                 status: int = 200):
    return _tenant_html(tenant_id, queries.period_choices(), errors=errors, form=form), status


@bp.route("/admin/system-billing/tenants/<int:tenant_id>")
def tenant(tenant_id: int):
    return _tenant_page(tenant_id)


def _action_failed(tenant_id: int, key: str, message: str):
    if wants_json():
        return json_error(422, message, "validation_error", {"reason": [message]} if "reason" in message else {})
    return _tenant_page(tenant_id, errors={key: message}, form=request.form.to_dict(), status=422)


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/exempt", methods=["POST"])
def exempt(tenant_id: int):
    _row_or_404(tenant_id)
    raw = (request.form.get("until") or "").strip()
    until: date | None = None
    if raw:
        try:
            until = date.fromisoformat(raw)
        except ValueError:
            return _action_failed(tenant_id, "exempt", "Enter the end date as YYYY-MM-DD, or leave it empty to end "
                                                       "the arrangement.")
    try:
        result = admin_actions.exempt_tenant(tenant_id, until, current_user._get_current_object(),
                                             request.form.get("reason", ""))
    except admin_actions.ActionError as err:
        return _action_failed(tenant_id, "exempt", _capital(str(err)))
    flash(f"Exempt from dunning until {until.isoformat()}; stage now {result.stage}." if until
          else f"Payment arrangement ended; stage now {result.stage}.", "success")
    return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)


_INVOICE_ACTIONS = {
    "retry": (admin_actions.retry_payment_now, "Payment retry {detail} for invoice {label}."),
    "mark-paid": (admin_actions.mark_paid_out_of_band, "Invoice {label} marked paid out of band; stage now {stage}."),
    "void": (admin_actions.void_invoice, "Invoice {label} voided; stage now {stage}."),
}


def _invoice_action(invoice_id: int, action: str):
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        abort(404)
    tenant_id, label = invoice.tenant_id, invoice.number or f"#{invoice.id}"
    act, template = _INVOICE_ACTIONS[action]
    try:
        result = act(invoice_id, current_user._get_current_object(), request.form.get("reason", ""))
    except admin_actions.ActionError as err:
        db.session.rollback()
        return _action_failed(tenant_id, f"invoice-{invoice_id}", _capital(str(err)))
    detail = result.detail
    detail_text = {"succeeded": "succeeded", "failed": "failed (declined)", "skipped": "skipped"}.get(
        str(detail), f"queued (job {detail})" if detail else "done")
    flash(template.format(label=label, stage=result.stage, detail=detail_text), "success")
    return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)


@bp.route("/admin/system-billing/invoices/<int:invoice_id>/retry", methods=["POST"])
def retry_invoice(invoice_id: int):
    return _invoice_action(invoice_id, "retry")


@bp.route("/admin/system-billing/invoices/<int:invoice_id>/mark-paid", methods=["POST"])
def mark_paid(invoice_id: int):
    return _invoice_action(invoice_id, "mark-paid")


@bp.route("/admin/system-billing/invoices/<int:invoice_id>/void", methods=["POST"])
def void(invoice_id: int):
    return _invoice_action(invoice_id, "void")


def _capital(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]) if text else text


# -- failed webhook events -----------------------------------------------------------------------------------

@bp.route("/admin/system-billing/webhooks/<int:event_id>/replay", methods=["POST"])
def replay_webhook(event_id: int):
    event = db.session.get(WebhookEvent, event_id)
    if event is None:
        abort(404)
    label = event.stripe_event_id
    try:
        outcome = webhook_processing.replay_event(event_id, current_user.id)
    except Exception as err:  # noqa: BLE001 - being processed, gone, or Redis down: a message, never a 500
        db.session.rollback()
        if wants_json():
            return json_error(422, str(err))
        flash(f"Could not replay {label}: {err}", "error")
        return _back_to_index()
    flash(f"Webhook {label} replayed: {outcome}.", "success" if outcome != "failed" else "error")
    return _back_to_index()
