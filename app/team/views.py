"""The tenant's team: its admins, invitations to new ones, and where billing emails go (CONTRACT §8.6)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import queue
from app.access import TENANT, access
from app.extensions import db
from app.models import Tenant, utcnow
from app.tenants.views import tenant_for_view
from app.services.accounts import (INVITATION_TTL, FormError, cancel_invitation, change_billing_email, invite_admin,
                                   resend_invitation, team_of)

bp = Blueprint("team", __name__)


def _back(tenant: Tenant):
    return redirect(url_for("team.index", tenant_id=tenant.id if current_user.is_root else None), 303)


def _page(tenant: Tenant, *, errors: dict[str, str] | None = None, form: dict | None = None, status: int = 200):
    now = utcnow()
    return render_template("team/index.html", tenant=tenant, team=team_of(tenant.id, now=now), errors=errors or {},
                           form=form or {}, invitation_days=INVITATION_TTL.days,
                           for_tenant=tenant.id if current_user.is_root else None), status


# Reachable when restricted (billing_ok): bringing in a colleague who can pay, or fixing where the
# billing emails go, is part of settling the account.
@bp.route("/admin/team")
@access(TENANT, billing_ok=True)
def index():
    return _page(tenant_for_view())


@bp.route("/admin/team/invite", methods=["POST"])
@access(TENANT, billing_ok=True)
def invite():
    tenant = tenant_for_view()
    try:
        row = invite_admin(tenant, request.form.get("email", ""), inviter=current_user._get_current_object())
    except FormError as err:
        db.session.rollback()
        return _page(tenant, errors=err.errors, form=request.form.to_dict(), status=422)
    db.session.commit()
    flash(f"Invitation sent to {row.email}. The link works for {INVITATION_TTL.days} days.", "success")
    return _back(tenant)


@bp.route("/admin/team/invitations/<int:invitation_id>/resend", methods=["POST"])
@access(TENANT, billing_ok=True)
def resend(invitation_id: int):
    tenant = tenant_for_view()
    try:
        row = resend_invitation(tenant, invitation_id, inviter=current_user._get_current_object())
    except FormError as err:
        db.session.rollback()
        flash(err.errors["email"], "error")
        return _back(tenant)
    if row is None:
        abort(404)  # another tenant's invitation, an accepted or cancelled one, or none at all: the same answer
    db.session.commit()
    flash(f"A new invitation link was sent to {row.email}; the previous link no longer works.", "success")
    return _back(tenant)


@bp.route("/admin/team/invitations/<int:invitation_id>/cancel", methods=["POST"])
@access(TENANT, billing_ok=True)
def cancel(invitation_id: int):
    tenant = tenant_for_view()
    row = cancel_invitation(tenant, invitation_id, actor=current_user._get_current_object())
    if row is None:
        abort(404)
    db.session.commit()
    flash(f"The invitation to {row.email} is cancelled: its link no longer works.", "success")
    return _back(tenant)


@bp.route("/admin/team/billing-email", methods=["POST"])
@access(TENANT, billing_ok=True)
def billing_email():
    tenant = tenant_for_view()
    try:
        changed = change_billing_email(tenant, request.form.get("billing_email", ""), actor_user_id=current_user.id)
    except FormError as err:
        db.session.rollback()
        return _page(tenant, errors=err.errors, form=request.form.to_dict(), status=422)
    db.session.commit()
    if not changed:
        flash(f"Billing emails already go to {tenant.billing_email}.", "info")
    elif not tenant.stripe_customer_id or queue.enqueue_customer_email(tenant.id):
        flash(f"Billing emails now go to {tenant.billing_email}.", "success")
    else:
        flash(f"Billing emails now go to {tenant.billing_email}. Stripe's receipts could not be redirected just "
              "now: save the address again in a few minutes.", "error")
    return _back(tenant)
