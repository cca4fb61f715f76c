"""Usage ingestion payloads."""
from __future__ import annotations

from datetime import timezone

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from app.services.usage import MAX_EVENT_QUANTITY

MAX_BATCH = 1000
# A full batch of 1,000 events with 128-character ids is about 300 KB; the route reads no more than this.
MAX_BODY_BYTES = 1024 * 1024


class UsageEventSchema(Schema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=128),
                       metadata={"description": "Your unique id for this event: 1-128 printable characters. "
                                                "Re-sending it with the same data is a harmless duplicate; with "
                                                "other data it is refused (409)."})
    metric = fields.String(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_EVENT_QUANTITY))
    occurred_at = fields.AwareDateTime(
        required=True,
        metadata={"description": "ISO 8601 with a zone. At most USAGE_MAX_CLOCK_SKEW_SECONDS (300) ahead of the "
                                 "server's clock, not before the previous billing month (nor the month the "
                                 "account was opened), and not in a month already invoiced."})

    @validates("id")
    def _id_printable(self, value: str, **kwargs) -> None:
        if not value.isprintable():
            raise ValidationError("Use printable characters only (no control characters).")

    @validates("occurred_at")
    def _occurred_at_representable(self, value, **kwargs) -> None:
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            raise ValidationError("This date is out of range.") from None

    @post_load
    def _in_utc(self, data: dict, **kwargs) -> dict:
        data["occurred_at"] = data["occurred_at"].astimezone(timezone.utc)
        return data

    def __init__(self, *args, metrics: set[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = metrics or set()

    @validates_schema
    def _metric_known(self, data, **kwargs):
        if "metric" in data and data["metric"] not in self.metrics:
            raise ValidationError(f"Unknown metric. Use one of: {', '.join(sorted(self.metrics))}.", "metric")


TOO_MANY = f"Send between 1 and {MAX_BATCH} events per batch."


class UsageBatchSchema(Schema):
    events = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=MAX_BATCH, error=TOO_MANY))


class UsageIngestResultSchema(Schema):
    accepted = fields.Integer()
    duplicates = fields.Integer()


class EntitlementsSchema(Schema):
    telephony = fields.Boolean()
    sms_outbound = fields.Boolean()
    admin_access = fields.String(validate=validate.OneOf(["full", "billing_only"]))


def load_batch(payload, metrics: set[str]) -> list[dict]:
    """Validate a whole batch; raise ValidationError with per-event field errors (nothing is stored then)."""
    payload = payload if isinstance(payload, dict) else {"events": payload}
    if isinstance(payload.get("events"), list) and len(payload["events"]) > MAX_BATCH:
        raise ValidationError({"events": [TOO_MANY]})  # before marshmallow walks every item of a huge list
    batch = UsageBatchSchema().load(payload)
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
