"""The tenant admin's "Change plan" (issue 17): pick a plan, see this month's prorated fee, confirm.

The change takes effect today (billing zone); the month's fee is shared between the plans by their days in force
(CONTRACT §8.1). Root admins change plans from System billing instead (with a date and a reason).
"""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.access import TENANT, access
from app.extensions import db
from app.models import Tenant
from app.billing.views import own_tenant
from app.services import plans

bp = Blueprint("plan_change", __name__)


def _own_tenant() -> Tenant:
    return own_tenant("Root admins change a tenant's plan from System billing, with a date and a reason.")


def _page(tenant: Tenant, chosen: str | None, *, error: str | None = None, status: int = 200):
    preview = None
    if chosen and error is None:
        try:
            preview = plans.preview(tenant, chosen)
        except plans.PlanChangeError as err:
            error, status = str(err)[:1].upper() + str(err)[1:], 422
    return render_template("billing/plan_change.html", tenant=tenant, choices=plans.plan_choices(),
                           chosen=chosen, preview=preview, error=error), status


@bp.route("/admin/billing/plan")
@access(TENANT, billing_ok=True)
def choose():
    return _page(_own_tenant(), (request.args.get("plan") or "").strip() or None)


@bp.route("/admin/billing/plan", methods=["POST"])
@access(TENANT, billing_ok=True)
def confirm():
    tenant = _own_tenant()
    chosen = (request.form.get("plan") or "").strip()
    try:
        row = plans.change_plan(tenant.id, chosen, actor=current_user._get_current_object(), source="tenant")
    except plans.PlanChangeError as err:
        db.session.rollback()
        return _page(tenant, chosen, error=str(err)[:1].upper() + str(err)[1:], status=422)
    if row is None:
        flash("Plan change cancelled: you stay on your earlier plan.", "success")
    else:
        flash(f"Your plan is now {row.to_plan.title()} (from {row.effective_on.isoformat()}). This month's fee is "
              "shared between the plans by their days.", "success")
    return redirect(url_for("billing.index"), 303)
