"""The root admin's system billing page."""
from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import select

from app.extensions import db
from app.models import Tenant

bp = Blueprint("system_billing", __name__)


@bp.route("/admin/system-billing")
def index():
    tenants = db.session.scalars(select(Tenant).order_by(Tenant.name)).all()
    return render_template("system_billing/index.html", tenants=tenants)
