"""Handlers: what each Stripe event type does here. The table first; one function per type in the modules below.

Every handler re-reads the object from Stripe (or from our own rows) before it changes anything, so a late,
repeated or replayed event ends in Stripe's current state; each commits its own changes and returns a Result
(processed, or ignored with the reason) that processing records on the event's row. `flask stripe
setup-webhook` subscribes the endpoint to exactly the types of HANDLERS; intake stores any other type ignored.
"""
from __future__ import annotations

from app.services.webhooks.events import Handler, QuickDecision
from app.services.webhooks.handlers.cards import customer_updated, payment_method_attached, quick_card_events
from app.services.webhooks.handlers.charges import charge_refunded, dispute_event
from app.services.webhooks.handlers.customers import customer_deleted
from app.services.webhooks.handlers.invoices import invoice_event, quick_invoice_events

HANDLERS: dict[str, Handler] = {
    "invoice.paid": invoice_event,
    "invoice.payment_succeeded": invoice_event,
    "invoice.payment_failed": invoice_event,
    "invoice.payment_action_required": invoice_event,
    "invoice.finalized": invoice_event,
    "invoice.voided": invoice_event,
    "invoice.marked_uncollectible": invoice_event,
    "customer.updated": customer_updated,
    "payment_method.attached": payment_method_attached,
    "charge.dispute.created": dispute_event,
    "charge.dispute.updated": dispute_event,
    "charge.dispute.closed": dispute_event,
    "charge.dispute.funds_withdrawn": dispute_event,
    "charge.dispute.funds_reinstated": dispute_event,
    "charge.refunded": charge_refunded,
    "customer.deleted": customer_deleted,
}

#: Decisions a drainer makes for a whole claimed batch of one type before any handler runs, without the ORM
#: (an invoice we do not have or one already settled, a card event that retries nothing): the events they
#: decide get exactly the handler's result; the rest go to HANDLERS.
QUICK: dict[str, QuickDecision] = {
    **{name: quick_invoice_events for name, handler in HANDLERS.items() if handler is invoice_event},
    "customer.updated": quick_card_events,
    "payment_method.attached": quick_card_events,
}
