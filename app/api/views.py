"""The JSON API: usage ingestion, entitlements, billing status."""
from __future__ import annotations

import hashlib
import json

from flask import Blueprint, current_app, jsonify, request
from flask_limiter.util import get_remote_address
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge

from app.access import API, TENANT, access
from app.api.auth import api_key_tenant
from app.errors import ApiError
from app.extensions import csrf, db, limiter
from app.models import Tenant
from app.schemas.usage import MAX_BODY_BYTES, EntitlementsSchema, UsageIngestResultSchema, load_batch
from app.services.entitlements import entitlements_for
from app.services.usage import EventIdConflict, UnbillableEvents, ingest, known_metrics

bp = Blueprint("api", __name__, url_prefix="/api")


def _json_body(max_bytes: int):
    """The request's JSON, read only up to `max_bytes` (413 beyond, before any parsing); 400 when not JSON."""
    if not request.is_json:
        raise ApiError(415, "Send a JSON body with Content-Type: application/json.")
    limit = min(max_bytes, current_app.config.get("MAX_CONTENT_LENGTH") or max_bytes)
    too_large = ApiError(413, f"The body is larger than {_size(limit)}; send fewer events per request.")
    if (request.content_length or 0) > limit:
        raise too_large
    # A chunked body has no length up front: read at most one byte past the limit to know it is too large.
    request.max_content_length = limit + 1
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested brackets
        raise ApiError(400, "The body is not valid JSON.", "invalid_json") from None


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n // 1024} KiB"


def _api_key_bucket() -> str:
    """Rate-limit bucket: the presented API key (hashed), however it is sent; the client address without one."""
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("X-API-Key", "")
    if not key:
        return f"usage-anonymous-{get_remote_address()}"
    return "usage-key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _rate_limited_message() -> str:
    return (f"Too many requests for this API key (limit: {current_app.config['USAGE_RATE_LIMIT']}). "
            "Wait the seconds in the Retry-After header, then send again.")


@bp.route("/usage/events", methods=["POST"])
@access(API)
@limiter.limit(lambda: current_app.config["USAGE_RATE_LIMIT"], key_func=_api_key_bucket,
               error_message=_rate_limited_message)
@csrf.exempt
def usage_events():
    tenant = api_key_tenant()
    events = load_batch(_json_body(MAX_BODY_BYTES), known_metrics())
    try:
        result = ingest(tenant, events)
    except UnbillableEvents as err:
        raise ApiError(422, err.message, "validation_error", {"events": err.fields}) from None
    except EventIdConflict as err:
        raise ApiError(409, err.message, "event_id_conflict", {"events": err.fields}) from None
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
