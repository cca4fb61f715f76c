"""Root admin controls over a tenant's billing, each audit-logged with its actor and reason.

exempt_tenant (a payment arrangement), retry_payment_now, mark_paid_out_of_band and void_invoice. Every action
re-derives the tenant's dunning stage at once (dunning.reevaluate_tenant), so a payment or void lifts a suspension
or restriction in the same request.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from app import queue
from app import stripe_gateway as gateway
from app.extensions import db
from app.models import AuditLog, Invoice, InvoiceStatus, Tenant, User
from app.services.clock import local_day, utcnow
from app.services.dunning import reevaluate_tenant
from app.services.payments import charge_invoice
from app.stripe_gateway import GatewayError

log = logging.getLogger(__name__)


class ActionError(ValueError):
    """A root action that cannot be done as asked (message is safe to show the admin)."""


@dataclass(frozen=True)
class ActionResult:
    action: str
    tenant_id: int
    audit_id: int
    stage: str | None = None  # the tenant's dunning stage afterwards
    detail: Any = None  # e.g. the queued job id or the payment attempt status


def _actor_id(actor: User | int) -> int:
    user = actor if isinstance(actor, User) else db.session.get(User, int(actor),
                                                                execution_options={"skip_tenant_scope": True})
    if user is None or not user.is_root:
        raise PermissionError("only a root admin may do this")
    return user.id


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise ActionError("a reason is required")
    return text[:2000]


def _audit(actor_id: int, tenant_id: int, action: str, reason: str, details: dict[str, Any],
           now: datetime) -> AuditLog:
    row = AuditLog(actor_user_id=actor_id, tenant_id=tenant_id, action=action, reason=reason, details=details,
                   created_at=now)
    db.session.add(row)
    db.session.flush()
    return row


def _locked_invoice(invoice_id: int) -> Invoice:
    invoice = db.session.execute(
        select(Invoice).where(Invoice.id == invoice_id).with_for_update(of=Invoice)
        .execution_options(skip_tenant_scope=True, populate_existing=True)).scalar_one_or_none()
    if invoice is None:
        raise ActionError(f"invoice {invoice_id} not found")
    return invoice


def _gateway_call(fn, *args) -> None:
    try:
        fn(*args)
    except GatewayError as err:
        db.session.rollback()
        raise ActionError(f"Stripe refused: {err}") from err


def exempt_tenant(tenant_id: int, until: date | None, actor: User | int, reason: str, *,
                  now: datetime | None = None) -> ActionResult:
    """Exempt a tenant from dunning until a billing-zone date (None ends the arrangement); commits."""
    now = now or utcnow()
    why = _reason(reason)
    actor_id = _actor_id(actor)
    if until is not None and until < local_day(now):
        raise ActionError("the arrangement must end today or later")
    tenant = db.session.execute(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update(of=Tenant)
        .execution_options(skip_tenant_scope=True, populate_existing=True)).scalar_one_or_none()
    if tenant is None:
        raise ActionError(f"tenant {tenant_id} not found")
    before = tenant.dunning_exempt_until
    tenant.dunning_exempt_until = until
    row = _audit(actor_id, tenant_id, "dunning_exempt" if until else "dunning_exempt_ended", why,
                 {"until": until.isoformat() if until else None,
                  "previous_until": before.isoformat() if before else None,
                  "stage_before": tenant.dunning_stage}, now)
    audit_id = row.id
    stage = reevaluate_tenant(tenant_id, now=now)
    return ActionResult("dunning_exempt", tenant_id, audit_id, stage.value)


def retry_payment_now(invoice_id: int, actor: User | int, reason: str, *, inline: bool = False,
                      now: datetime | None = None) -> ActionResult:
    """Charge an open invoice again now (queued on the billing queue, or inline); commits."""
    now = now or utcnow()
    why = _reason(reason)
    actor_id = _actor_id(actor)
    invoice = _locked_invoice(invoice_id)
    if invoice.status != InvoiceStatus.OPEN:
        raise ActionError(f"invoice {invoice.number or invoice.id} is {invoice.status}, not open")
    tenant_id = invoice.tenant_id
    row = _audit(actor_id, tenant_id, "payment_retry", why, {"invoice_id": invoice_id, "inline": inline}, now)
    audit_id = row.id
    db.session.commit()
    if inline:
        attempt = charge_invoice(invoice_id, trigger="manual", now=now)
        detail = getattr(attempt, "status", attempt)
    else:
        detail = queue.enqueue_charge(invoice_id, "manual")
    return ActionResult("payment_retry", tenant_id, audit_id, None, detail)


def mark_paid_out_of_band(invoice_id: int, actor: User | int, reason: str, *,
                          now: datetime | None = None) -> ActionResult:
    """Record an open invoice as paid outside Stripe (and tell Stripe), then restore the tenant; commits."""
    now = now or utcnow()
    why = _reason(reason)
    actor_id = _actor_id(actor)
    invoice = _locked_invoice(invoice_id)
    if invoice.status == InvoiceStatus.PAID:
        raise ActionError(f"invoice {invoice.number or invoice.id} is already paid")
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise ActionError(f"invoice {invoice.number or invoice.id} is {invoice.status}; only open invoices can be "
                          "marked paid")
    if invoice.stripe_invoice_id:
        _gateway_call(gateway.mark_paid_out_of_band, invoice.id, invoice.stripe_invoice_id)
    status_before = invoice.status
    received = invoice.unpaid  # open or written off alike
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = now
    invoice.amount_paid = invoice.amount_paid + received  # what was still owed after credits (issue 17)
    invoice.paid_out_of_band = True
    invoice.next_payment_attempt_at = None
    tenant_id = invoice.tenant_id
    row = _audit(actor_id, tenant_id, "invoice_paid_out_of_band", why,
                 {"invoice_id": invoice.id, "number": invoice.number, "amount": received,
                  "currency": invoice.currency, "status_before": status_before,
                  "stripe_invoice_id": invoice.stripe_invoice_id}, now)
    audit_id = row.id
    stage = reevaluate_tenant(tenant_id, now=now)
    return ActionResult("invoice_paid_out_of_band", tenant_id, audit_id, stage.value)


def void_invoice(invoice_id: int, actor: User | int, reason: str, *, now: datetime | None = None) -> ActionResult:
    """Void an unpaid invoice (in Stripe first), then re-derive the tenant's dunning stage; commits."""
    now = now or utcnow()
    why = _reason(reason)
    actor_id = _actor_id(actor)
    invoice = _locked_invoice(invoice_id)
    if invoice.status == InvoiceStatus.VOID:
        raise ActionError(f"invoice {invoice.number or invoice.id} is already void")
    if invoice.status == InvoiceStatus.PAID:
        raise ActionError(f"invoice {invoice.number or invoice.id} is paid; issue a refund or account credit note "
                          "instead of voiding it")
    if invoice.stripe_invoice_id:
        if invoice.status == InvoiceStatus.DRAFT:
            raise ActionError(f"invoice {invoice.id} is still a Stripe draft; finalize or delete it first")
        _gateway_call(gateway.void_invoice, invoice.id, invoice.stripe_invoice_id)
    status_before = invoice.status
    invoice.status = InvoiceStatus.VOID
    invoice.next_payment_attempt_at = None
    tenant_id = invoice.tenant_id
    row = _audit(actor_id, tenant_id, "invoice_void", why,
                 {"invoice_id": invoice.id, "number": invoice.number, "amount": invoice.amount_due,
                  "currency": invoice.currency, "status_before": status_before,
                  "stripe_invoice_id": invoice.stripe_invoice_id}, now)
    audit_id = row.id
    stage = reevaluate_tenant(tenant_id, now=now)
    return ActionResult("invoice_void", tenant_id, audit_id, stage.value)
