"""The only module that talks to Stripe (or the local emulator, which speaks the same API).

Every write carries an idempotency key derived from one of our own database rows, never a random one, so a
retried job can never create a second customer, invoice or charge. Errors are classified into what the
product must do about them (see Outcome).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson
import stripe
from flask import current_app

from app.stripe_objects import id_of

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PAYMENT_FAILED = "payment_failed"  # card declined, insufficient funds: tell the tenant, retry on schedule
    ACTION_REQUIRED = "action_required"  # authentication required: send the hosted invoice link
    RETRY_LATER = "retry_later"  # rate limited, network, 5xx: try again later with the same key
    BUG = "bug"  # invalid request: log loudly, flag the tenant's billing as errored


# Declines that retrying the same card will not fix.
HARD_DECLINES = {"stolen_card", "lost_card", "pickup_card", "fraudulent", "do_not_honor", "incorrect_number",
                 "invalid_account", "card_not_supported", "expired_card", "restricted_card",
                 "transaction_not_allowed"}


@dataclass
class GatewayError(Exception):
    outcome: Outcome
    message: str
    code: str | None = None
    decline_code: str | None = None
    http_status: int | None = None
    unreachable: bool = False  # no answer at all (connection refused, DNS, timeout)

    def __str__(self) -> str:
        return f"{self.outcome}: {self.message}"

    @property
    def hard_decline(self) -> bool:
        return self.decline_code in HARD_DECLINES

    @property
    def missing_customer(self) -> bool:
        """Whether Stripe refused because it does not know the customer."""
        return self.code == "resource_missing" and "customer" in self.message.lower()


def unreachable_message() -> str:
    """One line naming the fix when Stripe (or the local emulator) does not answer at all."""
    base = current_app.config["STRIPE_API_BASE"]
    key = current_app.config.get("STRIPE_SECRET_KEY") or ""
    if urlsplit(base).hostname in ("127.0.0.1", "localhost", "::1") or key in ("", "sk_test_emulator"):
        return f"Stripe is not reachable at {base}: start `python -m stripe_emulator`, or set STRIPE_SECRET_KEY"
    return f"Stripe is not reachable at {base}: check the network connection and STRIPE_API_BASE"


def classify(err: stripe.StripeError) -> GatewayError:
    """Map a stripe exception to the product's decision."""
    code = getattr(err, "code", None)
    status = getattr(err, "http_status", None)
    message = getattr(err, "user_message", None) or str(err)
    decline_code = None
    if err.error is not None:
        decline_code = getattr(err.error, "decline_code", None)
        message = err.error.message or message
    if isinstance(err, stripe.CardError):
        outcome = Outcome.ACTION_REQUIRED if code == "authentication_required" else Outcome.PAYMENT_FAILED
        return GatewayError(outcome, message, code, decline_code, status)
    if isinstance(err, stripe.APIConnectionError):
        return GatewayError(Outcome.RETRY_LATER, message, code, None, status, unreachable=True)
    if isinstance(err, (stripe.RateLimitError, stripe.APIError)):
        return GatewayError(Outcome.RETRY_LATER, message, code, None, status)
    if isinstance(err, stripe.IdempotencyError) and status == 409:
        return GatewayError(Outcome.RETRY_LATER, message, code, None, status)
    if status is not None and status >= 500:
        return GatewayError(Outcome.RETRY_LATER, message, code, None, status)
    if isinstance(err, stripe.InvalidRequestError) and code == "invoice_payment_intent_requires_action":
        return GatewayError(Outcome.ACTION_REQUIRED, message, code, None, status)
    if isinstance(err, stripe.InvalidRequestError) and "no attached payment source" in message.lower():
        return GatewayError(Outcome.PAYMENT_FAILED, message, "no_payment_method", None, status)
    log.error("Stripe rejected a request as invalid (a bug on our side): %s", message)
    return GatewayError(Outcome.BUG, message, code, None, status)


def client() -> stripe.StripeClient:
    """A StripeClient for the configured key and base URL, with network retries."""
    app = current_app._get_current_object()
    cached = app.extensions.get("stripe_client")
    if cached is None:
        cached = stripe.StripeClient(
            app.config["STRIPE_SECRET_KEY"],
            base_addresses={"api": app.config["STRIPE_API_BASE"]},
            max_network_retries=app.config["STRIPE_MAX_NETWORK_RETRIES"],
        )
        app.extensions["stripe_client"] = cached
    return cached


def _call(fn, *args, idempotency_key: str | None = None, params: dict | None = None) -> Any:
    from app.services.ratelimit import stripe_slot

    options: dict[str, Any] = {}
    if idempotency_key:
        options["idempotency_key"] = idempotency_key
    attempts = current_app.config.get("STRIPE_RATE_LIMIT_RETRIES", 5)
    for attempt in range(attempts + 1):
        stripe_slot()
        try:
            return fn(*args, params=params or {}, options=options)
        except stripe.RateLimitError as err:
            # stripe-python does not retry 429s: back off and retry with the SAME idempotency key.
            if attempt == attempts:
                raise classify(err) from err
            time.sleep(min(8.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
        except stripe.StripeError as err:
            raise classify(err) from err
    raise AssertionError("unreachable")


def ping() -> None:
    """One cheap read, so a command can report an unreachable Stripe before it starts work; raises GatewayError."""
    _call(client().v1.customers.list, params={"limit": 1})


# -- customers -------------------------------------------------------------------------------------------

def create_customer(tenant_id: int, name: str, email: str | None, generation: int = 0) -> str:
    """Create the Stripe customer for a tenant; idempotent per tenant and generation. Returns the customer id.

    `generation` counts the tenant's customers deleted in Stripe: a recreated customer needs a key of its own,
    or Stripe would replay the deleted one.
    """
    params: dict[str, Any] = {"name": name, "metadata": {"tenant_id": str(tenant_id)}}
    if email:
        params["email"] = email
    key = f"customer-create-tenant-{tenant_id}" + (f"-{generation}" if generation else "")
    cust = _call(client().v1.customers.create, idempotency_key=key, params=params)
    return cust.id


def retrieve_customer(customer_id: str):
    return _call(client().v1.customers.retrieve, customer_id)


def update_customer_email(customer_id: str, email: str) -> None:
    """Set the customer's email (where Stripe sends receipts); setting the same value twice is harmless."""
    _call(client().v1.customers.update, customer_id, params={"email": email})


def default_payment_method(customer_id: str) -> str | None:
    """The customer's default payment method id, or None."""
    cust = retrieve_customer(customer_id).to_dict()
    return id_of((cust.get("invoice_settings") or {}).get("default_payment_method"))


def attach_default_card(customer_id: str, payment_method: str, key: str) -> str:
    """Attach a payment method and make it the customer's default (used by seeds and tests)."""
    pm = _call(client().v1.payment_methods.attach, payment_method, idempotency_key=f"{key}-attach",
               params={"customer": customer_id})
    _call(client().v1.customers.update, customer_id, idempotency_key=f"{key}-default",
          params={"invoice_settings": {"default_payment_method": pm.id}})
    return pm.id


# -- invoices --------------------------------------------------------------------------------------------

def create_invoice(invoice_id: int, customer_id: str, currency: str, period: str, tenant_id: int,
                   number: str | None) -> Any:
    """Create the draft Stripe invoice mirroring our invoice row (no pending items swept in)."""
    metadata = {"invoice_id": str(invoice_id), "tenant_id": str(tenant_id), "period": period}
    if number:
        metadata["number"] = number
    return _call(
        client().v1.invoices.create,
        idempotency_key=f"invoice-create-{invoice_id}",
        params={
            "customer": customer_id,
            "currency": currency,
            "collection_method": "charge_automatically",
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "description": f"ServicePro usage and plan for {period}" + (f" ({number})" if number else ""),
            "metadata": metadata,
        },
    )


def add_invoice_item(line_id: int, customer_id: str, stripe_invoice_id: str, amount: int, currency: str,
                     description: str, period_start: int, period_end: int) -> Any:
    """Add one of our invoice lines to a draft Stripe invoice; idempotent per line."""
    return _call(
        client().v1.invoice_items.create,
        idempotency_key=f"invoice-line-{line_id}",
        params={
            "customer": customer_id,
            "invoice": stripe_invoice_id,
            "amount": amount,
            "currency": currency,
            "description": description,
            "period": {"start": period_start, "end": period_end},
            "metadata": {"invoice_line_id": str(line_id)},
        },
    )


def label_invoice(invoice_id: int, stripe_invoice_id: str, number: str, period: str) -> Any:
    """Put our readable invoice number on a draft Stripe invoice (metadata and description); idempotent."""
    return _call(client().v1.invoices.update, stripe_invoice_id, idempotency_key=f"invoice-label-{invoice_id}",
                 params={"description": f"ServicePro usage and plan for {period} ({number})",
                         "metadata": {"number": number}})


def finalize_invoice(invoice_id: int, stripe_invoice_id: str) -> Any:
    return _call(client().v1.invoices.finalize_invoice, stripe_invoice_id,
                 idempotency_key=f"invoice-finalize-{invoice_id}", params={"auto_advance": False})


def pay_invoice(stripe_invoice_id: str, attempt_key: str) -> Any:
    """Charge an open invoice off-session with the customer's default payment method."""
    return _call(client().v1.invoices.pay, stripe_invoice_id, idempotency_key=attempt_key,
                 params={"off_session": True})


def retrieve_invoice(stripe_invoice_id: str) -> Any:
    return _call(client().v1.invoices.retrieve, stripe_invoice_id)


def void_invoice(invoice_id: int, stripe_invoice_id: str) -> Any:
    return _call(client().v1.invoices.void_invoice, stripe_invoice_id, idempotency_key=f"invoice-void-{invoice_id}")


def mark_paid_out_of_band(invoice_id: int, stripe_invoice_id: str) -> Any:
    return _call(client().v1.invoices.pay, stripe_invoice_id, idempotency_key=f"invoice-oob-{invoice_id}",
                 params={"paid_out_of_band": True})


def list_invoices(customer_id: str, limit: int = 100) -> list[Any]:
    """Every Stripe invoice of a customer (auto-paginated)."""
    page = _call(client().v1.invoices.list, params={"customer": customer_id, "limit": limit})
    return list(page.auto_paging_iter())


# -- credit notes and the customer balance (issue 17) -----------------------------------------------------

def create_credit_note(credit_note_id: int, stripe_invoice_id: str, amount: int, kind: str, memo: str) -> Any:
    """Issue a Stripe credit note mirroring our credit_notes row; idempotent per row (never a second refund).

    kind: "reduce" (an open invoice: lowers what is due), "refund" (a paid invoice: refunds its charge) or
    "account_credit" (a paid invoice: credits the customer balance, which pays the next invoices first).
    """
    params: dict[str, Any] = {"invoice": stripe_invoice_id, "amount": amount, "memo": memo[:5000],
                              "metadata": {"credit_note_id": str(credit_note_id), "kind": kind}}
    if kind == "refund":
        params["refund_amount"] = amount
    elif kind == "account_credit":
        params["credit_amount"] = amount
    return _call(client().v1.credit_notes.create, idempotency_key=f"credit-note-{credit_note_id}", params=params)


def refunded_on_charge(refund_id: str) -> int:
    """How much of the charge a refund came from is refunded now (all its refunds)."""
    refund = _call(client().v1.refunds.retrieve, refund_id)
    charge = refund.charge if isinstance(refund.charge, str) else refund.charge.id
    return int(retrieve_charge(charge).amount_refunded or 0)


def customer_credit_balance(customer_id: str) -> int:
    """The customer's credit in Stripe (minor units, >= 0): minus its `balance`, which is negative for a credit."""
    balance = int(getattr(retrieve_customer(customer_id), "balance", 0) or 0)
    return max(0, -balance)


# -- charges ---------------------------------------------------------------------------------------------

def retrieve_charge(charge_id: str) -> Any:
    """A charge (read when a dispute names only its charge id)."""
    return _call(client().v1.charges.retrieve, charge_id)


def retrieve_dispute(dispute_id: str) -> Any:
    """A dispute as Stripe has it now (its charge expanded: customer, payment intent, amounts)."""
    return _call(client().v1.disputes.retrieve, dispute_id, params={"expand": ["charge"]})


def awaiting_authentication(stripe_invoice_id: str) -> bool:
    """Whether Stripe's latest charge attempt on an invoice was declined because the bank asks for authentication.

    Read from the charges of the invoice's PaymentIntent (found through its invoice payment), newest first.
    """
    payments = _call(client().v1.invoice_payments.list, params={"invoice": stripe_invoice_id, "limit": 10})
    for payment in (p.to_dict() for p in payments.data):
        intent = (payment.get("payment") or {}).get("payment_intent")
        if payment.get("status") != "open" or not intent:
            continue
        charges = _call(client().v1.charges.list,
                        params={"payment_intent": intent if isinstance(intent, str) else intent["id"], "limit": 1})
        for charge in (c.to_dict() for c in charges.data):
            reason = (charge.get("outcome") or {}).get("reason")
            return charge.get("status") == "failed" and "authentication_required" in (charge.get("failure_code"),
                                                                                     reason)
    return False


def paid_card(stripe_invoice_id: str) -> tuple[str, str] | None:
    """(brand, last4) of the card whose charge paid an invoice (through its paid invoice payment), or None."""
    payments = _call(client().v1.invoice_payments.list,
                     params={"invoice": stripe_invoice_id, "status": "paid", "limit": 1})
    for payment in (p.to_dict() for p in payments.data):
        intent = (payment.get("payment") or {}).get("payment_intent")
        if not intent:
            continue
        charges = _call(client().v1.charges.list,
                        params={"payment_intent": intent if isinstance(intent, str) else intent["id"], "limit": 10})
        for charge in (c.to_dict() for c in charges.data):
            card = (charge.get("payment_method_details") or {}).get("card") or {}
            if charge.get("status") == "succeeded" and card.get("last4"):
                return card.get("brand") or "card", card["last4"]
    return None


def live_mode() -> bool:
    """Whether the configured secret key is a live-mode key (events of the other mode are not ours)."""
    key = current_app.config.get("STRIPE_SECRET_KEY") or ""
    return key.startswith(("sk_live_", "rk_live_"))


def invoice_for_payment_intent(payment_intent_id: str) -> str | None:
    """The Stripe invoice a PaymentIntent paid, through its invoice payment; None when it paid no invoice.

    Since API version 2025-03-31 a charge has no `invoice`: invoice payments are the only link.
    """
    page = _call(client().v1.invoice_payments.list,
                 params={"payment": {"type": "payment_intent", "payment_intent": payment_intent_id}, "limit": 1})
    for payment in page.data:
        invoice = payment.invoice
        return invoice if isinstance(invoice, str) else invoice.id
    return None


# -- portal ----------------------------------------------------------------------------------------------

def portal_session_url(customer_id: str, return_url: str) -> str:
    """A fresh Customer Portal session in the payment-method-update flow; returns its URL."""
    session = _call(
        client().v1.billing_portal.sessions.create,
        params={
            "customer": customer_id,
            "return_url": return_url,
            "flow_data": {
                "type": "payment_method_update",
                "after_completion": {"type": "redirect", "redirect": {"return_url": return_url}},
            },
        },
    )
    return session.url


# -- account set-up (flask stripe setup-webhook / check) ---------------------------------------------------

def pinned_api_version() -> str:
    """The API version every request and every webhook endpoint of the app speaks (stripe-python's pin)."""
    return stripe.api_version


def list_webhook_endpoints() -> list[dict]:
    """Every webhook endpoint of the account (auto-paginated), as plain dicts."""
    page = _call(client().v1.webhook_endpoints.list, params={"limit": 100})
    return [endpoint.to_dict() for endpoint in page.auto_paging_iter()]


def create_webhook_endpoint(url: str, events: list[str], description: str) -> dict:
    """Create an endpoint for `url` with exactly `events`, in the pinned API version; its secret is in the answer."""
    endpoint = _call(client().v1.webhook_endpoints.create, params={
        "url": url, "enabled_events": events, "api_version": stripe.api_version, "description": description})
    return endpoint.to_dict()


def set_webhook_events(endpoint_id: str, events: list[str]) -> dict:
    """Make an existing endpoint send exactly `events` (and be enabled)."""
    return _call(client().v1.webhook_endpoints.update, endpoint_id,
                 params={"enabled_events": events, "disabled": False}).to_dict()


def list_portal_configurations() -> list[dict]:
    """The account's Customer Portal configurations, as plain dicts."""
    page = _call(client().v1.billing_portal.configurations.list, params={"limit": 100})
    return [config.to_dict() for config in page.auto_paging_iter()]


# -- webhooks --------------------------------------------------------------------------------------------

def verify_event(payload: bytes, signature: str | None, secret: str) -> dict:
    """Verify a webhook's Stripe-Signature on the raw body; raise ValueError when it is not genuine."""
    if not signature:
        raise ValueError("missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        stripe.WebhookSignature.verify_header(text, signature, secret, stripe.Webhook.DEFAULT_TOLERANCE)
        # The event as Stripe sent it (plain JSON): a StripeObject would turn decimal strings into Decimal, which
        # cannot be stored as JSON, and building one costs more than the rest of receiving an event. orjson
        # parses a 5 kB event in a quarter of the stdlib's time (its errors are ValueErrors too).
        event = orjson.loads(text)
    except stripe.SignatureVerificationError as err:
        raise ValueError(f"bad signature: {err.user_message or err}") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed body: {err}") from err
    if not isinstance(event, dict):
        raise ValueError("malformed body: the event is not a JSON object")
    return event
