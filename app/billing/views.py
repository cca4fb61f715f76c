"""The tenant admin's billing page."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user

from app.access import TENANT, access
from app.extensions import db
from app.models import Tenant

bp = Blueprint("billing", __name__)


@bp.route("/admin/billing")
@access(TENANT, billing_ok=True)
def index():
    tenant = db.session.get(Tenant, current_user.tenant_id) if not current_user.is_root else None
    return render_template("billing/index.html", tenant=tenant)
