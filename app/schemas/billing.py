"""The billing status API: its query arguments and its output."""
from __future__ import annotations

from marshmallow import Schema, fields, validate


class BillingCustomerQuerySchema(Schema):
    """Query of GET /api/admin/billing/customer (unknown arguments are refused with 422)."""

    tenant_id = fields.Integer(strict=False, validate=validate.Range(min=1, max=2**63 - 1))


class PlanPriceOutSchema(Schema):
    metric = fields.String()
    included = fields.Integer()
    # Major units as a string, e.g. "0.012500".
    unit_price = fields.Decimal(as_string=True, metadata={"type": "string", "format": "decimal"})


class PlanOutSchema(Schema):
    code = fields.String()
    name = fields.String()
    monthly_fee = fields.Integer()  # minor units
    currency = fields.String()
    prices = fields.List(fields.Nested(PlanPriceOutSchema))


class TenantOutSchema(Schema):
    id = fields.Integer()
    name = fields.String()


class InvoiceSummarySchema(Schema):
    id = fields.Integer()
    number = fields.String(allow_none=True)
    period_start = fields.Date()
    period_end = fields.Date()
    amount_due = fields.Integer()
    amount_paid = fields.Integer()
    # Issue 17: Σ of its credit notes, and what is still owed after payments, credits and account credit applied.
    amount_credited = fields.Integer()
    amount_remaining = fields.Integer()
    currency = fields.String()
    status = fields.String()
    hosted_invoice_url = fields.String(allow_none=True)
    due_at = fields.AwareDateTime(allow_none=True)
    paid_at = fields.AwareDateTime(allow_none=True)


class BillingCustomerSchema(Schema):
    """Output of GET /api/admin/billing/customer; money in minor units of `currency`."""

    tenant = fields.Nested(TenantOutSchema)
    plan = fields.Nested(PlanOutSchema)
    stripe_customer_id = fields.Function(lambda s: s.tenant.stripe_customer_id)
    balance_due = fields.Integer()
    credit_balance = fields.Integer()  # issue 17: account credit used by the next invoices before the card
    currency = fields.String()
    overdue_days = fields.Function(lambda s: s.tenant.overdue_days)
    dunning_stage = fields.Function(lambda s: s.tenant.dunning_stage)
    next_invoice_date = fields.Date()
    invoices = fields.List(fields.Nested(InvoiceSummarySchema))
