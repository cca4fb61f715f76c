"""The JSON API: usage ingestion, entitlements, billing status."""
from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask_login import current_user

from app.access import API, TENANT, access
from app.api.auth import api_key_tenant
from app.errors import ApiError
from app.extensions import csrf, db
from app.models import Tenant
from app.schemas.usage import EntitlementsSchema, UsageIngestResultSchema, load_batch
from app.services.entitlements import entitlements_for
from app.services.usage import known_metrics, record_events

bp = Blueprint("api", __name__, url_prefix="/api")


def _json_body():
    if not request.is_json:
        raise ApiError(415, "Send a JSON body with Content-Type: application/json.")
    payload = request.get_json(silent=True)
    if payload is None:
        raise ApiError(400, "The body is not valid JSON.", "invalid_json")
    return payload


@bp.route("/usage/events", methods=["POST"])
@access(API)
@csrf.exempt
def usage_events():
    tenant = api_key_tenant()
    events = load_batch(_json_body(), known_metrics())
    result = record_events(tenant, events)
    status = 201 if result.accepted else 200
    return jsonify(UsageIngestResultSchema().dump(result)), status


@bp.route("/tenants/<int:tenant_id>/entitlements")
@access(API)
def entitlements(tenant_id: int):
    if current_user.is_authenticated and current_user.is_root:
        tenant = db.session.get(Tenant, tenant_id)
    else:
        key_tenant = api_key_tenant()
        tenant = key_tenant if key_tenant.id == tenant_id else None
    if tenant is None:
        raise ApiError(404, "No such tenant.")
    return jsonify(EntitlementsSchema().dump(entitlements_for(tenant).as_dict()))


@bp.route("/admin/billing/customer")
@access(TENANT, billing_ok=True)
def billing_customer():
    """The billing status of the caller's tenant (root admins pass ?tenant_id=)."""
    from app.schemas.billing import BillingCustomerQuerySchema, BillingCustomerSchema
    from app.services.invoicing import billing_status

    args = BillingCustomerQuerySchema().load(request.args.to_dict())
    wanted = args.get("tenant_id")
    if current_user.is_root:
        if wanted is None:
            raise ApiError(422, "Root admins must say which tenant.", "validation_error",
                           {"tenant_id": ["Missing data for required field."]})
        tenant = db.session.get(Tenant, wanted)
    else:
        tenant = db.session.get(Tenant, current_user.tenant_id)
        if wanted is not None and wanted != current_user.tenant_id:
            tenant = None
    if tenant is None:
        raise ApiError(404, "No such tenant.")
    return jsonify(BillingCustomerSchema().dump(billing_status(tenant)))
