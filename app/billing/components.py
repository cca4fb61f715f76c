"""What the tenant billing page's HTMX components take, and the words a tenant reads after acting.

`_partials/invoice_row.html` reads one `invoice_row` (InvoiceRow) and `_partials/balance_due.html` one `balance`
(BalanceDue); "Pay now" answers with both (app/fragments.py). The outcomes come typed from app/services/payments.py
and are worded here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from app.billing.queries import days_overdue
from app.models import Invoice
from app.services import pricing
from app.services.payments import CardUpdateOutcome, CardUpdateResult, PayNowOutcome, PayNowResult, can_pay_now


@dataclass(frozen=True)
class Message:
    """What a tenant reads after an action: the words, the flash category, and where to go on when asked to."""

    text: str
    category: str  # success, error or info
    hosted_url: str | None = None  # where to authenticate, when the bank asks for it

    @property
    def ok(self) -> bool:
        return self.category == "success"


@dataclass(frozen=True)
class InvoiceRow:
    """`_partials/invoice_row.html`: one invoice, its days overdue as of the page's day, and Pay now."""

    invoice: Invoice
    overdue_days: int
    payable: bool  # Pay now is offered (never on a root admin's read-only look)
    result: Message | None = None  # Pay now's answer, shown in place


def invoice_row(invoice: Invoice, as_of: date, *, read_only: bool = False, result: Message | None = None
                ) -> InvoiceRow:
    return InvoiceRow(invoice, days_overdue(invoice, as_of), not read_only and can_pay_now(invoice), result)


@dataclass(frozen=True)
class BalanceDue:
    """`_partials/balance_due.html`: what the tenant owes on its open invoices."""

    amount: int
    currency: str
    oob: bool = False  # swapped out of band (after Pay now)


def sentence(text: str) -> str:
    """Text ending like a sentence (a decline message from Stripe may lack the full stop)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def format_unit_price(unit_price: Any, currency: str) -> str:
    """A plan's unit price for people: "$0.015" for USD, "0.015 EUR" otherwise (sub-cent digits kept)."""
    text = pricing.format_major(unit_price, currency)
    amount, _, code = text.partition(" ")
    return f"${amount}" if code.lower() == "usd" else text


def pay_now_message(outcome: PayNowOutcome) -> Message:
    """A "Pay now" outcome, worded for the tenant."""
    invoice, detail = outcome.invoice, outcome.detail
    match outcome.result:
        case PayNowResult.PAID:
            return Message("Paid — thank you.", "success")
        case PayNowResult.ALREADY_PAID:
            return Message("This invoice is already paid.", "success")
        case PayNowResult.NOTHING_TO_PAY:
            return Message(f"This invoice is {invoice.status if invoice else 'gone'}: there is nothing to pay.",
                           "error")
        case PayNowResult.UNREACHABLE:
            return Message("We could not reach the payment provider. Nothing was charged; please try again in a "
                           "few minutes.", "error")
        case PayNowResult.DECLINED:
            return Message(f"The payment was declined: {sentence(detail or 'card declined')} Update your payment "
                           "method and try again.", "error")
        case PayNowResult.ACTION_REQUIRED:
            return Message("Your bank asks you to confirm this payment. Pay it on the secure invoice page.", "error",
                           invoice.hosted_invoice_url if invoice else None)
        case PayNowResult.RETRY_LATER:
            return Message("The payment provider could not take the payment just now; it will be retried "
                           "automatically.", "error")
        case PayNowResult.NOT_CHARGED:
            return Message(f"Not charged: {detail or 'nothing to charge'}.", "error")
    return Message("The payment did not go through.", "error")


def card_update_message(outcome: CardUpdateOutcome) -> Message:
    """What charging the open invoices after a card update did, worded for the tenant."""
    count = outcome.still_open
    match outcome.result:
        case CardUpdateResult.UNCHANGED:
            still = f" {count} invoice{'s are' if count > 1 else ' is'} still open." if count else ""
            return Message("Your payment method was not changed." + still, "info")
        case CardUpdateResult.UNREACHABLE:
            return Message("Your payment method was updated, but we could not reach the payment provider to charge "
                           "your open invoices. They will be retried automatically.", "error")
        case CardUpdateResult.NOTHING_DUE:
            return Message("Your payment method was updated. Nothing was due, so nothing was charged.", "success")
        case CardUpdateResult.ALL_PAID:
            return Message("Your payment method was updated and every open invoice is paid. Thank you!", "success")
    detail = f" ({outcome.error.strip().rstrip('.')})" if outcome.error else ""
    return Message(f"Your payment method was updated, but {count} invoice{'s' if count > 1 else ''} could not be "
                   f"charged{detail}. Try another card or pay on the invoice page.", "error")
