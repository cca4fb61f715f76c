"""invoice.*: re-read the invoice from Stripe and apply its state; a failed or blocked payment tells the tenant."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from app import queue
from app import stripe_gateway as gateway
from app.extensions import db
from app.models import Invoice, InvoiceStatus, Tenant
from app.services import payments
from app.services.payments import InvoiceChange
from app.services.webhooks.events import Incoming, Result, ignored, processed
from app.stripe_objects import customer_of, field_of

#: Stripe's event timestamps are whole seconds from Stripe's clock: only trust a read made clearly after them.
FRESH_MARGIN_S = 5


def invoice_event(ev: Incoming) -> Result:
    """Any invoice event: re-read the invoice from Stripe and apply its current state (then the type's extras)."""
    stripe_id = ev.obj.get("id")
    invoice = find_invoice(ev.obj, lock=True)
    if invoice is None:
        db.session.rollback()
        return ignored(f"no invoice here for Stripe invoice {stripe_id}")
    tenant_id = invoice.tenant_id
    if invoice.status == InvoiceStatus.DRAFT:
        # Draft → open belongs to invoicing (it numbers the invoice and sets issue and due dates): hand it over.
        period = f"{invoice.period_start:%Y-%m}"
        db.session.rollback()
        queue.enqueue_invoice(tenant_id, period, "scheduled")
        return processed("still a draft here: handed to the invoicing job", tenant_id)
    invoice_sid = invoice.stripe_invoice_id or stripe_id
    before = invoice.status
    extra = EXTRAS.get(ev.type)
    if extra is None and _fresh_since(invoice.stripe_synced_at, ev.created):
        # A backlog holds several events per invoice; the state we read after this one was created already
        # includes it, so one re-read serves them all (and spares the shared Stripe request budget).
        current = None
    else:
        read_at = datetime.now(timezone.utc)
        current = gateway.retrieve_invoice(invoice_sid)
        payments.apply_stripe_invoice(invoice, current, now=ev.now)
        _record_stripe_documents(invoice, current)
        invoice.stripe_synced_at = read_at
    note = extra(ev, invoice, current) if extra else None
    db.session.commit()
    if invoice.status != before or invoice.status != InvoiceStatus.OPEN:
        payments.after_invoice_change(invoice, InvoiceChange.STATUS, ev.now, raise_errors=True)
    return processed(note, tenant_id)


def _payment_failed(ev: Incoming, invoice: Invoice, current: Any) -> str | None:
    if invoice.status != InvoiceStatus.OPEN:
        return f"stale: Stripe has the invoice {invoice.status}"
    if not invoice.last_payment_error:  # our own charge's decline message is more precise: keep it
        attempts = field_of(current, "attempt_count", 0)
        invoice.last_payment_error = f"Stripe could not collect the payment (attempt {attempts})."
        invoice.last_payment_error_code = invoice.last_payment_error_code or "payment_failed"
    db.session.commit()
    if invoice.last_payment_error_code == "authentication_required":
        return "authentication required: the hosted-invoice email covers it"
    payments.after_invoice_change(invoice, InvoiceChange.PAYMENT_FAILED, ev.now, raise_errors=True)
    return None


def _action_required(ev: Incoming, invoice: Invoice, current: Any) -> str | None:
    if invoice.status != InvoiceStatus.OPEN:
        return f"stale: Stripe has the invoice {invoice.status}"
    # The event type alone proves nothing: a late or replayed one must not turn a plain decline into
    # "authentication required" (cancelling the retry and emailing the tenant). Stripe's latest attempt decides.
    if not gateway.awaiting_authentication(invoice.stripe_invoice_id or field_of(current, "id")):
        return "stale: Stripe's latest payment attempt on this invoice is not waiting for authentication"
    if not invoice.last_payment_error:
        invoice.last_payment_error = "The bank asks the cardholder to authenticate this payment."
    invoice.last_payment_error_code = "authentication_required"
    # Off-session retries cannot authenticate: the customer pays on the hosted page (or changes card).
    invoice.next_payment_attempt_at = None
    db.session.commit()
    payments.after_invoice_change(invoice, InvoiceChange.ACTION_REQUIRED, ev.now, raise_errors=True)
    return None


#: What an event type does after the invoice's current state was applied (its note for the row, or None).
EXTRAS: dict[str, Callable[[Incoming, Invoice, Any], str | None]] = {
    "invoice.payment_failed": _payment_failed,
    "invoice.payment_action_required": _action_required,
}


def find_invoice(obj: dict, *, lock: bool) -> Invoice | None:
    """Our invoice for a Stripe invoice object: by its Stripe id, else by our metadata (same customer only)."""
    stripe_id = obj.get("id")
    if not isinstance(stripe_id, str):
        return None
    stmt = select(Invoice).where(Invoice.stripe_invoice_id == stripe_id)
    if lock:
        stmt = stmt.with_for_update()
    invoice = db.session.scalar(stmt.execution_options(populate_existing=True))
    if invoice is not None:
        return invoice
    ours = metadata_invoice_id(obj)
    if ours is None:
        return None
    stmt = select(Invoice).where(Invoice.id == ours, Invoice.stripe_invoice_id.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    invoice = db.session.scalar(stmt.execution_options(populate_existing=True))
    if invoice is None:
        return None
    # Metadata ids repeat across environments sharing a Stripe account: the customer must be this tenant's too.
    customer = db.session.scalar(select(Tenant.stripe_customer_id).where(Tenant.id == invoice.tenant_id))
    return invoice if customer and customer == customer_of(obj) else None


def metadata_invoice_id(obj: dict) -> int | None:
    """Our invoice id as written in the Stripe invoice's metadata, or None."""
    ours = str((obj.get("metadata") or {}).get("invoice_id") or "")
    return int(ours) if ours.isdigit() and len(ours) < 19 else None


def _record_stripe_documents(invoice: Invoice, current: Any) -> None:
    """Keep Stripe's own invoice number and PDF link (set when Stripe finalizes it) for the tenant's page."""
    number, pdf = field_of(current, "number"), field_of(current, "invoice_pdf")
    if isinstance(number, str) and number:
        invoice.stripe_number = number[:64]
    if isinstance(pdf, str) and pdf.startswith(("https://", "http://")):
        invoice.invoice_pdf_url = pdf


def _fresh_since(synced_at: datetime | None, created: datetime | None) -> bool:
    """True when we re-read the object from Stripe (and applied it) clearly after the event was created."""
    if synced_at is None or created is None:
        return False
    return synced_at >= created + timedelta(seconds=1 + FRESH_MARGIN_S)


def quick_invoice_events(execute: Callable[..., Any], events: list[Incoming]) -> dict[int, Result]:
    """Invoice events whose handler would change nothing: an invoice we do not have, or one paid and read since.

    Paid wins, so no event moves a paid invoice; once it was read from Stripe after it was paid (amounts,
    number, PDF recorded), a re-read cannot add anything either — the same result the handler gives, without
    a Stripe request (dunning was re-evaluated by whoever recorded the payment).
    """
    inv = Invoice.__table__
    stripe_ids = {sid for sid in (ev.obj.get("id") for ev in events) if isinstance(sid, str)}
    known = {r.stripe_invoice_id: r for r in execute(
        select(inv.c.stripe_invoice_id, inv.c.tenant_id, inv.c.status, inv.c.stripe_synced_at, inv.c.paid_at,
               inv.c.stripe_number, inv.c.invoice_pdf_url).where(inv.c.stripe_invoice_id.in_(stripe_ids)))}
    # An invoice of ours not linked to its Stripe id yet is found by the id in its metadata (the handler checks
    # the customer too): only when there is such an invoice must the handler look.
    ours = {metadata_invoice_id(ev.obj) for ev in events
            if not (isinstance(ev.obj.get("id"), str) and ev.obj["id"] in known)} - {None}
    unlinked = set(execute(select(inv.c.id).where(inv.c.id.in_(ours), inv.c.stripe_invoice_id.is_(None)))
                   .scalars()) if ours else set()
    out: dict[int, Result] = {}
    for ev in events:
        stripe_id = ev.obj.get("id")
        row = known.get(stripe_id) if isinstance(stripe_id, str) else None
        if row is None:
            if metadata_invoice_id(ev.obj) not in unlinked:
                out[ev.row_id] = ignored(f"no invoice here for Stripe invoice {stripe_id}")
            continue
        settled = (row.status == InvoiceStatus.PAID and row.stripe_synced_at is not None and row.paid_at is not None
                   and row.stripe_synced_at >= row.paid_at and row.stripe_number and row.invoice_pdf_url)
        if settled:
            out[ev.row_id] = processed("stale: Stripe has the invoice paid" if ev.type in EXTRAS else None,
                                       row.tenant_id)
    return out
