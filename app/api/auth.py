"""API-key authentication for the JSON API."""
from __future__ import annotations

from flask import g, request

from app.errors import ApiError
from app.services.tenants import use_api_key


def api_key_tenant(required: bool = True):
    """The tenant whose API key is in `Authorization: Bearer <key>` (or X-API-Key); 401 when missing/bad."""
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("X-API-Key", "")
    if not key:
        if required:
            raise ApiError(401, "Send your API key as 'Authorization: Bearer <key>'.", "unauthorized")
        return None
    use = use_api_key(key)  # revoked keys are refused here at once; records last_used_at
    if use is None:
        raise ApiError(401, "That API key is not valid.", "invalid_api_key")
    g.api_tenant_id, g.api_key_id = use.tenant.id, use.key_id
    return use.tenant
