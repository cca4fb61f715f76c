"""The entitlements API for other services: its query arguments and its documents."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.services.entitlements import MAX_PAGE


class EntitlementsQuerySchema(Schema):
    """Query of GET /api/entitlements (unknown arguments are refused with 422)."""

    tenant_id = fields.Integer(strict=False, validate=validate.Range(min=1, max=2**63 - 1),
                               metadata={"description": "One tenant's document; without it, every tenant, paginated."})
    cursor = fields.String(validate=validate.Length(min=1, max=200),
                           metadata={"description": "`next_cursor` of the previous page."})
    changed_since = fields.AwareDateTime(metadata={"description": (
        "Only tenants whose entitlements changed at or after this instant (ISO 8601 with a zone, e.g. "
        "2026-06-15T02:00:00Z).")})
    limit = fields.Integer(strict=False, validate=validate.Range(min=1, max=MAX_PAGE), load_default=100,
                           metadata={"description": f"Tenants per page (1–{MAX_PAGE}, default 100)."})

    @validates_schema
    def _one_or_many(self, data, **_kwargs):
        if "tenant_id" in data and ({"cursor", "changed_since"} & data.keys()):
            raise ValidationError("Pass tenant_id alone, or the list arguments without it.", "tenant_id")


class EntitlementsDocumentSchema(Schema):
    tenant_id = fields.Integer(required=True)
    telephony = fields.Boolean(required=True)
    sms_outbound = fields.Boolean(required=True)
    admin_access = fields.String(required=True, validate=validate.OneOf(["full", "billing_only"]))
    dunning_stage = fields.String(required=True,
                                  validate=validate.OneOf(["ok", "reminder", "suspended", "restricted"]))
    updated_at = fields.AwareDateTime(required=True, metadata={"description": "When these entitlements last changed."})


class EntitlementsPageSchema(Schema):
    data = fields.List(fields.Nested(EntitlementsDocumentSchema), required=True)
    has_more = fields.Boolean(required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class EntitlementsEventSchema(Schema):
    """What each push endpoint receives (signed with the ServicePro-Signature header)."""

    id = fields.String(required=True, metadata={"description": "Stable across retries: deduplicate on it."})
    type = fields.String(required=True, validate=validate.OneOf(["entitlements.updated"]))
    created = fields.Integer(required=True, metadata={"description": "Unix seconds."})
    data = fields.Nested(EntitlementsDocumentSchema, required=True)
