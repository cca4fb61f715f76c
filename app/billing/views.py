"""The tenant admin's billing page: plan, usage estimate, invoices, Pay now, Update Payment Method, printable invoice.

Root admins may look at a tenant's page read-only with ?tenant_id= (without it they land on system billing);
the tenant's own actions (Pay now, Update Payment Method) are for the tenant's admins — root admins use the
audited controls on system billing instead.
"""
from __future__ import annotations

import hmac
import secrets

from flask import (Blueprint, abort, current_app, flash, make_response, redirect, render_template, request, session,
                   url_for)
from flask_login import current_user
from werkzeug.utils import secure_filename

from app.access import TENANT, access
from app.billing import components, queries
from app.billing.components import BalanceDue
from app.extensions import db
from app.fragments import billing_changed, wants_fragment
from app.models import Invoice, InvoiceStatus, Tenant
from app.services import payments
from app.services.invoicing import open_balance
from app.services.pdf import html_to_pdf
from app.services.pricing import METRIC_LABELS

bp = Blueprint("billing", __name__)
bp.add_app_template_filter(components.sentence, "sentence")
bp.add_app_template_global(components.format_unit_price, "unit_price")

_NONCE_KEY = "card_update_nonce"
_BEFORE_KEY = "card_update_before"  # the card and open invoices when the portal was opened (for the message)


@bp.app_template_filter("metric_label")
def metric_label(metric: str | None) -> str:
    """A metric's name for people ("Inbound SMS"), the same on every page (pricing.METRIC_LABELS)."""
    metric = metric or ""
    return METRIC_LABELS.get(metric) or metric.replace("_", " ").capitalize()


ROOT_REFUSAL = "Root admins act on a tenant's billing from System billing, with a reason."


def own_tenant(root_refusal: str = ROOT_REFUSAL) -> Tenant:
    """The signed-in tenant admin's tenant; root admins act through system billing instead (403 `root_refusal`)."""
    if current_user.is_root:
        abort(403, root_refusal)
    tenant = db.session.get(Tenant, current_user.tenant_id)
    if tenant is None:
        abort(404)
    return tenant


def _visible_invoice(invoice_id: int) -> Invoice:
    # Tenant admins' queries are scoped to their tenant (app/tenancy.py): another tenant's id reads as None.
    # populate_existing: always ask the database (through the scope), never trust an identity-map hit.
    invoice = db.session.get(Invoice, invoice_id, populate_existing=True)
    if invoice is None or (invoice.status == InvoiceStatus.DRAFT and not current_user.is_root):
        abort(404)
    return invoice


@bp.route("/admin/billing")
@access(TENANT, billing_ok=True)
def index():
    if current_user.is_root:
        tenant_id = request.args.get("tenant_id", type=int)
        if tenant_id is None:
            return redirect(url_for("system_billing.index"))
        tenant = db.session.get(Tenant, tenant_id)
        if tenant is None:
            abort(404)
        read_only = True
    else:
        tenant = own_tenant()
        read_only = False
        nonce = request.args.get("card_updated")
        if nonce is not None:
            # Back from the Customer Portal: charge the open invoices once, then drop the marker from the URL
            # (the nonce is single-use, so a reload or a forged link never charges again). Compared as bytes
            # (compare_digest raises on non-ASCII text) and consumed only when it matches, so a mangled link
            # neither fails nor cancels the pending card update.
            expected = session.get(_NONCE_KEY)
            if expected and hmac.compare_digest(nonce.encode(), expected.encode()):
                session.pop(_NONCE_KEY, None)
                message = components.card_update_message(
                    payments.retry_after_card_update(tenant.id, session.pop(_BEFORE_KEY, None)))
                flash(message.text, message.category)
            return redirect(url_for("billing.index"), 303)
    query = queries.InvoiceQuery.from_args(request.args, tenant.id if read_only else None)
    view = queries.tenant_billing(tenant, query)
    rows = [components.invoice_row(inv, view.as_of, read_only=read_only) for inv in view.invoices.rows]
    older = [components.invoice_row(inv, view.as_of, read_only=read_only) for inv in view.invoices.older_open]
    return render_template("billing/index.html", b=view, tenant=tenant, read_only=read_only,
                           invoice_rows=rows, older_rows=older, balance=BalanceDue(view.balance_due, view.currency))


@bp.route("/admin/billing/payment-method", methods=["POST"])
@access(TENANT, billing_ok=True)
def payment_method():
    tenant = own_tenant()
    nonce = secrets.token_urlsafe(16)
    return_url = current_app.config["APP_BASE_URL"] + url_for("billing.index", card_updated=nonce)
    try:
        portal = payments.payment_portal_url(tenant.id, return_url)
    except Exception:  # noqa: BLE001 - Stripe down or refusing: say so, never a 500
        db.session.rollback()
        current_app.logger.exception("could not open a portal session for tenant %s", tenant.id)
        flash("We could not open the secure payment page just now. Please try again in a minute.", "error")
        return redirect(url_for("billing.index"), 303)
    session[_NONCE_KEY] = nonce
    session[_BEFORE_KEY] = payments.card_update_snapshot(tenant.id)
    if wants_fragment():
        resp = make_response("", 204)
        resp.headers["HX-Redirect"] = portal
        return resp
    return redirect(portal, 303)


@bp.route("/admin/billing/invoices/<int:invoice_id>/pay", methods=["POST"])
@access(TENANT, billing_ok=True)
def pay_invoice(invoice_id: int):
    tenant = own_tenant()
    invoice = _visible_invoice(invoice_id)
    stage_before = tenant.dunning_stage
    outcome = payments.pay_now(invoice.id)
    message = components.pay_now_message(outcome)
    if wants_fragment():
        db.session.refresh(tenant)
        row = components.invoice_row(outcome.invoice or invoice, queries.tenant_billing_as_of(tenant),
                                     result=message)
        return billing_changed(render_template(
            "billing/pay_result.html", invoice_row=row,
            balance=BalanceDue(max(0, open_balance(tenant.id)), tenant.plan_obj.currency, oob=True),
            banner_lifted=stage_before != "ok" and tenant.dunning_stage == "ok"))
    flash(message.text, message.category)
    return redirect(url_for("billing.index"), 303)


@bp.route("/admin/billing/invoices/<int:invoice_id>")
@access(TENANT, billing_ok=True)
def invoice(invoice_id: int):
    invoice = _visible_invoice(invoice_id)
    tenant = db.session.get(Tenant, invoice.tenant_id)
    return render_template("billing/invoice.html", invoice=invoice, tenant=tenant)


@bp.route("/admin/billing/invoices/<int:invoice_id>.pdf")
@access(TENANT, billing_ok=True)
def invoice_pdf(invoice_id: int):
    invoice = _visible_invoice(invoice_id)
    tenant = db.session.get(Tenant, invoice.tenant_id)
    html = render_template("billing/invoice.html", invoice=invoice, tenant=tenant, pdf=True)
    response = make_response(html_to_pdf(html))
    response.mimetype = "application/pdf"
    name = secure_filename(f"invoice-{invoice.number or invoice.id}.pdf")
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    return response
