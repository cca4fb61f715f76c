"""The root admin's system billing page: every tenant's billing state, force-runs, run-all, root controls, webhooks.

All routes here are root-only (deny by default, see app/access.py). Every form works without JavaScript (POST,
then a 303 back with a flash, or the page re-rendered with the error at 422); with htmx the same endpoints
answer with the component that changed (a force-run status, a tenant row, the run progress bar).
"""
from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from app.errors import json_error, wants_json
from app.extensions import db, htmx
from app.models import Invoice
from app.services import billing_views
from app.services.billing_views import TenantQuery

bp = Blueprint("system_billing", __name__)


def _changed(resp):
    """Tell the page that billing figures changed: its live regions (data-live) refresh from a fresh render."""
    resp = make_response(resp)
    resp.headers["HX-Trigger"] = billing_views.BILLING_CHANGED
    return resp


def _table_context(query: TenantQuery) -> dict[str, Any]:
    """The tenants table: a page of rows and each row's latest force-run (shown again after a reload)."""
    page = billing_views.tenant_page(query)
    return dict(page=page, force_runs=billing_views.last_force_runs([r.id for r in page.rows]),
                periods=billing_views.period_choices(), sorts=billing_views.SORTS, flags=billing_views.FLAGS,
                force_errors={})


def _index_context(query: TenantQuery, **extra: Any) -> dict[str, Any]:
    as_of = billing_views.overdue_as_of()
    overview = billing_views.overview(as_of=as_of)
    # The month pickers start on the month that has work (the one asked for, when a table refresh says).
    month = _asked_period() or overview.work_period or billing_views.default_period()
    context = _table_context(query)
    context.update(overview=overview, **_run_context(None),
                   webhook_events=billing_views.failed_webhook_events(), default_period=month,
                   stages=billing_views.STAGES, per_page_choices=billing_views.PER_PAGE_CHOICES, run_error=None)
    context.update(extra)
    return context


def _asked_period() -> str | None:
    """The force-run month a table request carries (the page's select, sent along by htmx), if valid."""
    raw = request.args.get("period")
    if not raw:
        return None
    try:
        return billing_views.parse_period_input(raw)
    except ValueError:
        return None


@bp.route("/admin/system-billing")
def index():
    query = TenantQuery.from_args(request.args)
    if htmx and htmx.target == "tenant-table" and not htmx.history_restore_request:
        # The page's month select travels with the request (hx-include on the tenants section): keep it.
        resp = make_response(render_template("_partials/system_tenant_table.html", **_table_context(query),
                                             default_period=_asked_period() or billing_views.default_period()))
        # The address bar gets the view's canonical address (search, filters, sort, page; defaults left out),
        # not the raw form with its empty fields and the month select: a view to bookmark or share.
        resp.headers["HX-Push-Url"] = url_for("system_billing.index", **query.args())
        return resp
    return render_template("system_billing/index.html", **_index_context(query))


def _back_to_index():
    """Where a no-JS form goes back to: the system billing page it came from (query kept), else its first page."""
    ref = request.referrer or ""
    parts = urlsplit(ref)
    if parts.path == url_for("system_billing.index") and parts.netloc == request.host:
        return redirect(url_for("system_billing.index") + (f"?{parts.query}" if parts.query else ""), 303)
    return redirect(url_for("system_billing.index"), 303)


def _row_or_404(tenant_id: int):
    row = billing_views.tenant_row(tenant_id)
    if row is None:
        abort(404)
    return row


# -- force-run one tenant ------------------------------------------------------------------------------------

def _in_table() -> bool:
    """Whether the force-run component lives in the tenants table (one month select for all rows)."""
    return (request.values.get("in_table") or "") == "1"


def _force_run_fragment(row, fr, *, error: str | None = None, period: str | None = None, status: int = 200,
                        focus: bool = False):
    html = render_template("_partials/force_run.html", row=row, fr=fr, error=error, shared_form=_in_table(),
                           focus=focus, periods=billing_views.period_choices(),
                           selected=period or (fr.period if fr else billing_views.default_period()))
    return html, status


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/force-run", methods=["POST"])
def force_run(tenant_id: int):
    row = _row_or_404(tenant_id)
    raw = request.form.get("period", "")
    try:
        period = billing_views.parse_period_input(raw)
    except ValueError as err:
        message = str(err)
        if wants_json():
            return json_error(422, message, "validation_error", {"period": [message]})
        if htmx:
            return _force_run_fragment(row, None, error=message, period=raw, status=422)
        if not _in_table():
            return _tenant_page(tenant_id, errors={"force_run": message}, status=422)
        query = TenantQuery.from_args(request.args)
        return render_template("system_billing/index.html",
                               **_index_context(query, force_errors={tenant_id: (raw, message)},
                                                force_month=raw)), 422
    try:
        fr = billing_views.enqueue_force_run(tenant_id, period)
    except Exception:  # noqa: BLE001 - Redis unavailable: tell the admin, never a 500
        from flask import current_app

        current_app.logger.exception("could not queue the invoice job of tenant %s", tenant_id)
        fr = billing_views.ForceRun(tenant_id, period, "failed", "Could not queue the job (is Redis up?).", "bad")
    if htmx:
        return _force_run_fragment(row, fr, focus=True)  # the pressed button is gone: focus its status
    if fr.state == "failed":
        flash(f"{row.name}: {fr.message}", "error")
    else:
        flash(f"Invoice run for {row.name} ({period}) queued; reload in a moment to see the result.", "info")
    if not _in_table():
        return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)
    return _back_to_index()


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/force-run/status")
def force_run_status(tenant_id: int):
    row = _row_or_404(tenant_id)
    raw = request.args.get("period") or billing_views.default_period()
    try:
        period = billing_views.parse_period_input(raw)
    except ValueError as err:
        if wants_json():
            return json_error(422, str(err), "validation_error", {"period": [str(err)]})
        return _force_run_fragment(row, None, error=str(err), period=raw, status=422)
    fr = billing_views.force_run_status(tenant_id, period)
    # The poll that first sees the job over tells the page (it polls only while the job is queued or running),
    # so the summary cards, the table and the tenant's figures follow without a reload.
    if htmx and fr.done and _in_table():
        # The job is over: replace the whole row, so it shows the new invoice and balance at once.
        fresh = billing_views.tenant_row(tenant_id) or row
        resp = _changed(render_template("_partials/system_tenant_row.html", row=fresh, fr=fr,
                                        periods=billing_views.period_choices(), selected=period,
                                        force_errors={}))
        resp.headers["HX-Retarget"] = f"#tenant-row-{tenant_id}"
        resp.headers["HX-Reswap"] = "outerHTML"
        return resp
    if htmx:
        html, status = _force_run_fragment(row, fr)
        return (_changed(html), status) if fr.done else (html, status)
    return render_template("system_billing/force_run.html", row=row, fr=fr,
                           periods=billing_views.period_choices(), selected=period)


# -- run all tenants -----------------------------------------------------------------------------------------

def _run_context(run_id: int | None) -> dict[str, Any]:
    """A run (the latest when no id), its counts by reason and its one-line result naming unsettled tenants."""
    run, summary = billing_views.run_with_summary(run_id)
    headline = billing_views.run_headline(summary, billing_views.run_problems(run, summary)) if run else []
    return dict(run=run, summary=summary, headline=headline)


def _run_fragment(run_id: int | None, *, error: str | None = None, selected: str | None = None,
                  status: int = 200):
    """The run-all component: the run (latest when no id), its counts by reason, and the form when idle.

    Polls send the number of tenants finished they last showed (`seen`): when it moved, the answer tells the
    page (HX-Trigger), so the cards and the table follow the run as it goes.
    """
    ctx = _run_context(run_id)
    run = ctx["run"]
    html = render_template("_partials/billing_run.html", **ctx, run_error=error, periods=billing_views.period_choices(),
                           selected=selected or (run.period if run else None))
    seen = request.args.get("seen", type=int)
    if run is not None and seen is not None and seen != run.done + run.failed:
        return _changed(html), status
    return html, status


@bp.route("/admin/system-billing/runs", methods=["POST"])
def start_run():
    from app.services.invoicing import Reason, start_billing_run

    raw = request.form.get("period", "")
    try:
        period = billing_views.parse_period_input(raw)
    except ValueError as err:
        message = str(err)
        if wants_json():
            return json_error(422, message, "validation_error", {"period": [message]})
        if htmx:
            return _run_fragment(None, error=message, selected=raw, status=422)
        return render_template("system_billing/index.html",
                               **_index_context(TenantQuery.from_args(request.args), run_error=message)), 422
    try:
        run = start_billing_run(period, started_by=current_user.id)
    except Exception:  # noqa: BLE001 - Redis or database trouble: a message, never a 500
        db.session.rollback()
        from flask import current_app

        current_app.logger.exception("could not start a billing run for %s", period)
        message = "Could not start the run (queue unavailable). Nothing was started; try again."
        if htmx:
            return _run_fragment(None, error=message, selected=period, status=422)
        flash(message, "error")
        return _back_to_index()
    if htmx:
        return _run_fragment(run.id, selected=period)
    _run, summary = billing_views.run_with_summary(run.id)
    later = summary.count(Reason.CREATED_AFTER_PERIOD)
    flash(f"Billing run #{run.id} for {period} started: {run.total} tenants queued"
          + (f" ({later} created after {period}, not billed for it)." if later else "."), "success")
    return _back_to_index()


@bp.route("/admin/system-billing/runs/<int:run_id>")
def run_progress(run_id: int):
    ctx = _run_context(run_id)
    if ctx["run"] is None:
        abort(404)
    if htmx:
        return _run_fragment(run_id)
    return render_template("system_billing/run.html", **ctx, periods=billing_views.period_choices(),
                           selected=ctx["run"].period)


# -- one tenant: details and root controls -------------------------------------------------------------------

def _tenant_page(tenant_id: int, *, errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
                 status: int = 200):
    detail = billing_views.tenant_detail(tenant_id)
    if detail is None:
        abort(404)
    # The tenant's latest force-run, if RQ still knows it (queued, running or finished); else the month with work.
    fr = billing_views.last_force_run(tenant_id)
    month = fr.period if fr else billing_views.tenant_work_period(detail.tenant, detail.invoices)
    return render_template("system_billing/tenant.html", d=detail, row=detail.row, fr=fr, errors=errors or {},
                           form=form or {}, periods=billing_views.period_choices(),
                           selected=month, force_errors={}), status


@bp.route("/admin/system-billing/tenants/<int:tenant_id>")
def tenant(tenant_id: int):
    return _tenant_page(tenant_id)


def _action_failed(tenant_id: int, key: str, message: str):
    if wants_json():
        return json_error(422, message, "validation_error", {"reason": [message]} if "reason" in message else {})
    return _tenant_page(tenant_id, errors={key: message}, form=request.form.to_dict(), status=422)


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/exempt", methods=["POST"])
def exempt(tenant_id: int):
    from app.services.admin_actions import ActionError, exempt_tenant

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
        result = exempt_tenant(tenant_id, until, current_user._get_current_object(), request.form.get("reason", ""))
    except ActionError as err:
        return _action_failed(tenant_id, "exempt", _capital(str(err)))
    flash(f"Exempt from dunning until {until.isoformat()}; stage now {result.stage}." if until
          else f"Payment arrangement ended; stage now {result.stage}.", "success")
    return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)


_INVOICE_ACTIONS = {
    "retry": ("retry_payment_now", "Payment retry {detail} for invoice {label}."),
    "mark-paid": ("mark_paid_out_of_band", "Invoice {label} marked paid out of band; stage now {stage}."),
    "void": ("void_invoice", "Invoice {label} voided; stage now {stage}."),
}


def _invoice_action(invoice_id: int, action: str):
    from app.services import admin_actions

    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        abort(404)
    tenant_id, label = invoice.tenant_id, invoice.number or f"#{invoice.id}"
    fn_name, template = _INVOICE_ACTIONS[action]
    try:
        result = getattr(admin_actions, fn_name)(invoice_id, current_user._get_current_object(),
                                                 request.form.get("reason", ""))
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
    try:
        from app.services import webhooks
    except ImportError:
        abort(503, "Webhook processing is not installed yet.")
    from app.models import WebhookEvent

    event = db.session.get(WebhookEvent, event_id)
    if event is None:
        abort(404)
    label = event.stripe_event_id
    try:
        outcome = webhooks.replay_event(event_id, current_user.id)
    except Exception as err:  # noqa: BLE001 - being processed, gone, or Redis down: a message, never a 500
        db.session.rollback()
        if wants_json():
            return json_error(422, str(err))
        flash(f"Could not replay {label}: {err}", "error")
        return _back_to_index()
    flash(f"Webhook {label} replayed: {outcome}.", "success" if outcome != "failed" else "error")
    return _back_to_index()
