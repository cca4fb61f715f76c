"""Tenants (root admins create them), the tenant usage dashboard and API keys."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from app.access import TENANT, access
from app.extensions import db
from app.models import ApiKey, Plan, Tenant
from app.services import clock
from app.services.tenants import TenantError, create_tenant, issue_api_key, revoke_api_key
from app.services.usage import CORE_METRICS, daily_series, month_usage

bp = Blueprint("tenants", __name__)


@bp.route("/admin/tenants")
def list_tenants():
    tenants = db.session.scalars(select(Tenant).order_by(Tenant.name)).all()
    return render_template("tenants/list.html", tenants=tenants)


@bp.route("/admin/tenants/new", methods=["GET", "POST"])
def new_tenant():
    plans = db.session.scalars(select(Plan).order_by(Plan.monthly_fee)).all()
    form = request.form.to_dict() if request.method == "POST" else {}
    errors: dict[str, str] = {}
    if request.method == "POST":
        for field, label in (("name", "a name"), ("plan", "a plan"), ("admin_email", "the admin's email"),
                             ("admin_password", "a password")):
            if not (form.get(field) or "").strip():
                errors[field] = f"Enter {label}."
        if not errors:
            try:
                created = create_tenant(form["name"], form["plan"], form["admin_email"], form["admin_password"],
                                        billing_email=form.get("billing_email") or None)
            except TenantError as err:
                errors[err.field] = err.message
            else:
                return render_template("tenants/created.html", tenant=created.tenant, admin=created.admin,
                                       api_key=created.api_key)
        return render_template("tenants/new.html", plans=plans, form=form, errors=errors), 422
    return render_template("tenants/new.html", plans=plans, form=form, errors=errors)


def tenant_for_view() -> Tenant:
    """The signed-in tenant admin's tenant, or the one a root admin picked with ?tenant_id=."""
    if current_user.is_root:
        tenant_id = request.args.get("tenant_id", type=int)
        tenant = db.session.get(Tenant, tenant_id) if tenant_id else None
    else:
        tenant = db.session.get(Tenant, current_user.tenant_id)
    if tenant is None:
        abort(404)
    return tenant


@bp.route("/admin/usage")
@access(TENANT)
def usage():
    tenant = tenant_for_view()
    today = clock.today()
    first, last = clock.month_bounds(today.year, today.month)
    totals = month_usage(tenant.id, today.year, today.month)
    series = daily_series(tenant.id, first, today)
    days = [first + timedelta(days=n) for n in range((today - first).days + 1)]
    metrics = sorted(set(CORE_METRICS) | set(totals))
    peak = {m: max([series.get(m, {}).get(d, 0) for d in days] + [1]) for m in metrics}
    prices = {p.metric: p for p in tenant.plan_obj.prices}
    return render_template("tenants/usage.html", tenant=tenant, totals=totals, series=series, days=days,
                           metrics=metrics, peak=peak, prices=prices, month_start=first, month_end=last)


@bp.route("/admin/api-keys", methods=["GET", "POST"])
@access(TENANT)
def api_keys():
    tenant = tenant_for_view()
    new_key = None
    if request.method == "POST":
        new_key = issue_api_key(tenant, label=(request.form.get("label") or "default")[:120])
        db.session.commit()
        flash("New API key created. Copy it now: it will not be shown again.", "success")
    keys = db.session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.id)).all()
    return render_template("tenants/api_keys.html", tenant=tenant, keys=keys, new_key=new_key)


@bp.route("/admin/api-keys/<int:key_id>/revoke", methods=["POST"])
@access(TENANT)
def revoke_key(key_id: int):
    tenant = tenant_for_view()
    key = revoke_api_key(key_id, tenant_id=tenant.id, actor_user_id=current_user.id)
    if key is None:
        abort(404)  # another tenant's key, or none at all: the same answer
    db.session.commit()
    flash(f"API key {key.prefix}… ({key.label}) is revoked: requests using it are refused from now on.", "success")
    return redirect(url_for("tenants.api_keys", tenant_id=tenant.id if current_user.is_root else None), 303)
