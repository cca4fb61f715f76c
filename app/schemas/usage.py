"""Usage ingestion payloads."""
from __future__ import annotations


from marshmallow import Schema, ValidationError, fields, validate, validates_schema

MAX_BATCH = 1000


class UsageEventSchema(Schema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    metric = fields.String(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=10**12))
    occurred_at = fields.AwareDateTime(required=True)

    def __init__(self, *args, metrics: set[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = metrics or set()

    @validates_schema
    def _metric_known(self, data, **kwargs):
        if "metric" in data and data["metric"] not in self.metrics:
            raise ValidationError(f"Unknown metric. Use one of: {', '.join(sorted(self.metrics))}.", "metric")


class UsageBatchSchema(Schema):
    events = fields.List(fields.Raw(), required=True,
                         validate=validate.Length(min=1, max=MAX_BATCH,
                                                  error=f"Send between 1 and {MAX_BATCH} events per batch."))


class UsageIngestResultSchema(Schema):
    accepted = fields.Integer()
    duplicates = fields.Integer()


class EntitlementsSchema(Schema):
    telephony = fields.Boolean()
    sms_outbound = fields.Boolean()
    admin_access = fields.String(validate=validate.OneOf(["full", "billing_only"]))


def load_batch(payload, metrics: set[str]) -> list[dict]:
    """Validate a whole batch; raise ValidationError with per-event field errors (nothing is stored then)."""
    batch = UsageBatchSchema().load(payload if isinstance(payload, dict) else {"events": payload})
    schema = UsageEventSchema(metrics=metrics)
    events, errors, seen = [], {}, set()
    for index, raw in enumerate(batch["events"]):
        if not isinstance(raw, dict):
            errors[str(index)] = {"_schema": ["Each event must be an object."]}
            continue
        try:
            event = schema.load(raw)
        except ValidationError as err:
            errors[str(index)] = err.messages
            continue
        if event["id"] in seen:
            errors[str(index)] = {"id": ["This id appears twice in the batch."]}
            continue
        seen.add(event["id"])
        events.append(event)
    if errors:
        raise ValidationError({"events": errors})
    return events
