"""GET /api/entitlements: what tenants may use, for other services (telephony, SMS) holding a service token."""
from __future__ import annotations

import re

from flask import Blueprint, Response, request

from app.access import API, access
from app.errors import ApiError
from app.schemas.entitlements import (EntitlementsDocumentSchema, EntitlementsEventSchema, EntitlementsPageSchema,
                                      EntitlementsQuerySchema)
from app.services.entitlements import BadCursor, encode, etag_of, read_one, read_page
from app.services.integrations import SIGNATURE_HEADER, TokenUse, is_tenant_api_key, use_token

bp = Blueprint("entitlements_api", __name__, url_prefix="/api")

SCOPE = "entitlements:read"
_QUERY = EntitlementsQuerySchema()  # built once: schemas are reusable, and services poll this route a lot
# "+00:00" typed into a URL arrives as " 00:00" (a query string's + is a space): read it as meant.
_SPACED_OFFSET = re.compile(r" (\d\d:?\d\d)$")


def service_token(scope: str) -> TokenUse:
    """The service token in `Authorization: Bearer <token>` holding `scope`; 401 or 403 in the error shape."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not token:
        raise ApiError(401, "Send a service token as 'Authorization: Bearer <token>'.", "unauthorized")
    use = use_token(token)
    if use is None:
        if is_tenant_api_key(token):
            raise ApiError(403, "A tenant API key cannot read entitlements here: use a service token "
                                "(a root admin issues one on /admin/integrations).", "service_token_required")
        raise ApiError(401, "That service token is not valid (unknown or revoked).", "invalid_token")
    if scope not in use.scopes:
        raise ApiError(403, f"This service token lacks the {scope} scope.", "insufficient_scope")
    return use


def _cacheable(payload) -> Response:
    """200 with an ETag, or 304 when the caller already holds this version (If-None-Match)."""
    body = encode(payload)
    tag = etag_of(body)
    if request.if_none_match.contains_weak(tag):
        resp = Response(status=304)
    else:
        resp = Response(body, status=200, mimetype="application/json")
    resp.set_etag(tag)
    # Callers may keep it, but must ask again (cheaply, with If-None-Match) before relying on it.
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@bp.route("/entitlements")
@access(API)
def entitlements():
    """One tenant's entitlements (?tenant_id=), or every tenant's, paginated by last change."""
    service_token(SCOPE)
    args = request.args.to_dict()
    if "changed_since" in args:
        args["changed_since"] = _SPACED_OFFSET.sub(r"+\1", args["changed_since"])
    query = _QUERY.load(args)  # ValidationError → 422 with field errors
    if "tenant_id" in query:
        doc = read_one(query["tenant_id"])
        if doc is None:
            raise ApiError(404, "No such tenant.")
        return _cacheable(doc)
    try:
        page = read_page(limit=query["limit"], cursor=query.get("cursor"), changed_since=query.get("changed_since"))
    except BadCursor:
        raise ApiError(422, "The request has invalid fields.", "validation_error",
                       {"cursor": ["Not a cursor this API handed out; start again without it."]}) from None
    return _cacheable(page.as_dict())


def add_to_spec(spec) -> None:
    """Describe GET /api/entitlements and the push event in the OpenAPI document (app/api/openapi.py)."""
    spec.components.security_scheme("serviceToken", {
        "type": "http", "scheme": "bearer",
        "description": "A service token (sp_svc_…) with the entitlements:read scope; tenant API keys get 403."})
    spec.components.schema("EntitlementsDocument", schema=EntitlementsDocumentSchema)
    spec.components.schema("EntitlementsPage", schema=EntitlementsPageSchema)
    spec.components.schema("EntitlementsEvent", schema=EntitlementsEventSchema)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    errors = {str(code): {"description": text, "content": error}
              for code, text in ((401, "No service token, or an unknown or revoked one"),
                                 (403, "A tenant API key, or a token without the entitlements:read scope"),
                                 (404, "No such tenant"), (422, "Invalid query arguments"))}
    etag = {"ETag": {"description": "Send it back as If-None-Match to get 304 while nothing changed.",
                     "schema": {"type": "string"}}}
    spec.path(path="/api/entitlements", operations={"get": {
        "operationId": "getServiceEntitlements",
        "summary": "Entitlements for other services: one tenant (tenant_id) or every tenant, paginated.",
        "description": (
            "With `tenant_id`: that tenant's document. Without: every tenant, ordered by when their entitlements "
            "last changed (`updated_at`, then `tenant_id`), `limit` per page; follow `next_cursor` while "
            "`has_more`. `changed_since` keeps only tenants changed at or after an instant. Every answer has an "
            "ETag; send it back as If-None-Match and an unchanged answer is 304 with no body. Changes are also "
            f"pushed to registered endpoints as `entitlements.updated` events signed with the {SIGNATURE_HEADER} "
            "header (schema EntitlementsEvent)."),
        "security": [{"serviceToken": []}],
        "parameters": [{"in": "query", "schema": EntitlementsQuerySchema},
                       {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "One tenant's document, or a page of them", "headers": etag,
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/EntitlementsDocument"},
                        {"$ref": "#/components/schemas/EntitlementsPage"}]}}}},
            "304": {"description": "Not modified since the ETag sent in If-None-Match", "headers": etag},
            **errors},
    }})
