"""Root controls over money that moves after the invoice (issue 17): plan changes and credit notes.

The forms live on the tenant page (partials `_partials/plan_change.html` and `_partials/credit_notes.html`,
which read `tenant_money(tenant_id)`); a refused action re-renders that page with the message at 422, a done one
redirects back (303) with a flash. Root-only, like everything under /admin/system-billing (app/access.py).
"""
from __future__ import annotations

import secrets
from datetime import date
from decimal import Decimal, InvalidOperation

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask_login import current_user

from app.errors import json_error, wants_json
from app.extensions import db
from app.models import Invoice, Tenant
from app.services import credits, plans
from app.services.pricing import currency_exponent

bp = Blueprint("money", __name__)


@bp.app_template_global("tenant_money")
def tenant_money(tenant_id: int) -> credits.TenantMoney:
    """The tenant page's read model for plan changes, credit notes and the credit balance."""
    return credits.tenant_money(tenant_id)


@bp.app_template_global("new_request_key")
def new_request_key() -> str:
    """A one-time key for a money form: submitting the same form twice issues one credit note."""
    return secrets.token_urlsafe(18)


def _refused(tenant_id: int, key: str, message: str, field: str):
    from app.system_billing.views import _tenant_page

    message = message[:1].upper() + message[1:]
    if wants_json():
        return json_error(422, message, "validation_error", {field: [message]})
    return _tenant_page(tenant_id, errors={key: message}, form=request.form.to_dict(), status=422)


@bp.route("/admin/system-billing/tenants/<int:tenant_id>/plan-change", methods=["POST"])
def change_plan(tenant_id: int):
    if db.session.get(Tenant, tenant_id) is None:
        abort(404)
    raw = (request.form.get("effective") or "").strip()
    try:
        effective = date.fromisoformat(raw) if raw else None
    except ValueError:
        return _refused(tenant_id, "plan_change", "enter the date as YYYY-MM-DD (or leave it empty for today)",
                        "effective")
    try:
        row = plans.change_plan(tenant_id, request.form.get("plan", ""), effective,
                                actor=current_user._get_current_object(), source="root",
                                reason=request.form.get("reason"))
    except plans.PlanChangeError as err:
        db.session.rollback()
        return _refused(tenant_id, "plan_change", str(err), "plan")
    if row is None:
        flash("Plan change cancelled: the tenant stays on its earlier plan.", "success")
    else:
        flash(f"Plan change recorded: {row.from_plan} → {row.to_plan} from {row.effective_on.isoformat()}.",
              "success")
    return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)


def parse_amount(text: str, currency: str) -> int:
    """A form's amount in major units ("12.50") as minor units; ValueError in words when it is not one."""
    exp = currency_exponent(currency)
    try:
        value = Decimal((text or "").strip().replace(",", "").lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"enter the amount as a number, e.g. 12.50 ({currency.upper()})") from None
    if not value.is_finite() or value <= 0:
        raise ValueError("the amount must be more than 0")
    minor = value.scaleb(exp)
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency.upper()} amounts have at most {exp} decimals")
    return int(minor)


@bp.route("/admin/system-billing/invoices/<int:invoice_id>/credit-note", methods=["POST"])
def credit_note(invoice_id: int):
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        abort(404)
    tenant_id, key = invoice.tenant_id, f"credit-{invoice_id}"
    try:
        amount = parse_amount(request.form.get("amount", ""), invoice.currency)
    except ValueError as err:
        return _refused(tenant_id, key, str(err), "amount")
    try:
        note = credits.issue_credit_note(invoice_id, amount, request.form.get("kind", ""),
                                         request.form.get("reason", ""), actor=current_user._get_current_object(),
                                         request_key=request.form.get("request_key") or None)
    except credits.CreditError as err:
        db.session.rollback()
        return _refused(tenant_id, key, str(err), err.field)
    flash(credits.describe(note), "success" if note.status == "issued" else "info")
    return redirect(url_for("system_billing.tenant", tenant_id=tenant_id), 303)
