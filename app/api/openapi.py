"""The OpenAPI document of the JSON API, generated from the marshmallow schemas (apispec)."""
from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields

from app.access import PUBLIC, access
from app.schemas.billing import BillingCustomerQuerySchema, BillingCustomerSchema
from app.schemas.usage import EntitlementsSchema, UsageEventSchema, UsageIngestResultSchema

bp = Blueprint("openapi", __name__)


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    fields_ = fields.Dict(data_key="fields", required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class UsageBatchInSchema(Schema):
    events = fields.List(fields.Nested(UsageEventSchema), required=True)


def _errors(*codes: int) -> dict:
    text = {400: "Malformed request", 401: "Missing or invalid credentials", 403: "Not allowed",
            404: "Not found", 409: "An event id was already recorded with different data",
            413: "Body larger than 1 MiB", 415: "Not JSON", 422: "Invalid fields",
            429: "Rate limited: wait the seconds in the Retry-After header"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": "Error"}}} for c in codes}


def build_spec() -> dict:
    """Build the OpenAPI 3 document for the JSON API."""
    spec = APISpec(title="ServicePro Billing API", version="1.0.0", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Usage ingestion, entitlements and billing status. Errors always have "
                                        "the shape {\"error\": {\"code\", \"message\", \"fields\"}}."})
    spec.components.security_scheme("apiKey", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("session", {"type": "apiKey", "in": "cookie", "name": "session"})
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("UsageBatch", schema=UsageBatchInSchema)
    spec.components.schema("UsageIngestResult", schema=UsageIngestResultSchema)
    spec.components.schema("Entitlements", schema=EntitlementsSchema)
    spec.components.schema("BillingCustomer", schema=BillingCustomerSchema)

    spec.path(path="/api/usage/events", operations={"post": {
        "operationId": "recordUsageEvents",
        "summary": "Record up to 1,000 usage events; idempotent by the client's event id.",
        "description": (
            "The batch is stored whole or not at all. Refused with 422 (a field error on each event's "
            "`occurred_at`): events more than USAGE_MAX_CLOCK_SKEW_SECONDS (300) in the future, before the "
            "previous billing month (or the month the account was opened), or in a month already invoiced. "
            "An id already recorded with the same metric, quantity and instant is a duplicate (counted, not "
            "stored again); with other data it is a conflict (409, code `event_id_conflict`, a field error on "
            "that event's `id`). Bodies over 1 MiB get 413; each API key may send USAGE_RATE_LIMIT requests "
            "(600 per minute) before 429 with Retry-After."),
        "security": [{"apiKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": "UsageBatch"}}},
        "responses": {"201": {"description": "Stored", "content": {"application/json": {"schema": "UsageIngestResult"}}},
                      "200": {"description": "All duplicates",
                              "content": {"application/json": {"schema": "UsageIngestResult"}}},
                      **_errors(400, 401, 409, 413, 415, 422, 429)},
    }})
    spec.path(path="/api/tenants/{tenant_id}/entitlements", operations={"get": {
        "operationId": "getEntitlements",
        "summary": "What the tenant may use right now.",
        "security": [{"apiKey": []}, {"session": []}],
        "parameters": [{"name": "tenant_id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 1}}],
        "responses": {"200": {"description": "Entitlements",
                              "content": {"application/json": {"schema": "Entitlements"}}},
                      **_errors(401, 404)},
    }})
    spec.path(path="/api/admin/billing/customer", operations={"get": {
        "operationId": "getBillingCustomer",
        "summary": "Billing status of the caller's tenant (root admins pass tenant_id).",
        "security": [{"session": []}],
        "parameters": [{"in": "query", "schema": BillingCustomerQuerySchema}],
        "responses": {"200": {"description": "Billing status",
                              "content": {"application/json": {"schema": "BillingCustomer"}}},
                      **_errors(401, 403, 404, 422)},
    }})
    from app.api.entitlements import add_to_spec as add_entitlements  # GET /api/entitlements (issue 16)

    add_entitlements(spec)
    return spec.to_dict()


@bp.route("/api/openapi.json")
@access(PUBLIC)
def openapi_json():
    spec = current_app.extensions.get("openapi_spec")
    if spec is None:
        spec = current_app.extensions["openapi_spec"] = build_spec()
    return jsonify(spec)
