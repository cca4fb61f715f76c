"""In-memory Stripe account: objects, business rules and events.

``snapshot``/``restore`` turn the whole account into JSON-ready data and back (``--state-file``, statefile.py).

All state lives in one :class:`Store` guarded by a re-entrant lock; every
public method takes the lock for its whole duration, so each API call is
atomic.  Objects are kept as plain dicts in Stripe's JSON shape (for the
API version pinned by stripe-python, see ``API_VERSION``); methods return
deep copies.

Every state change appends a Stripe-shaped event (``evt_...``) and hands it
to the webhook dispatcher.  Events emitted per call:

=============================  ===============================================
customer create                customer.created (+ payment_method.attached)
customer update                [payment_method.attached] customer.updated
customer delete                customer.deleted
payment_method attach          payment_method.attached
payment_method detach          payment_method.detached (+ customer.updated if
                               it was the default)
invoice create                 invoice.created
invoice update                 invoice.updated
invoice delete (draft)         invoice.deleted
invoice finalize               invoice.finalized (+ invoice.paid,
                               invoice.payment_succeeded when amount_due is 0)
invoice pay success            [invoice.finalized...] invoice.paid,
                               invoice.payment_succeeded
invoice pay declined           invoice.payment_failed, invoice.updated
invoice pay auth required      invoice.payment_action_required,
                               invoice.payment_failed, invoice.updated
                               (off_session=false: 400
                               invoice_payment_intent_requires_action,
                               invoice.payment_action_required, .updated)
invoice pay out of band        invoice.paid
invoice void                   invoice.voided
invoice mark_uncollectible     invoice.marked_uncollectible
invoiceitem create/update/del  invoiceitem.created / .updated / .deleted
portal/control card choice     payment_method.attached, customer.updated
credit note create             credit_note.created, then on an open invoice
                               invoice.updated (+ invoice.paid when nothing is
                               left to pay); on a paid one: refund_amount →
                               charge.refunded, refund.created; credit_amount
                               → customer.updated; invoice.updated
customer balance transaction   customer.updated
invoice finalize with balance  customer.updated (the balance applied)
invoice void with balance      customer.updated (the balance given back)
=============================  ===============================================
"""

from __future__ import annotations

import copy
import decimal
import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import cards, errors

from . import API_VERSION  # noqa: E402  (single source of truth)

_ALPHABET = string.ascii_letters + string.digits

NO_PAYMENT_METHOD_MESSAGE = (
    "This customer has no attached payment source or default payment method. Please consider "
    "adding a default payment method. For more information, visit "
    "https://stripe.com/docs/billing/subscriptions/payment-methods-setting#payment-method-priority."
)


REQUIRES_ACTION_MESSAGE = (
    "This payment requires additional user action before it can be completed successfully. Payment "
    "can be completed using the PaymentIntent associated with the invoice. For more details see: "
    "https://stripe.com/docs/billing/subscriptions/overview#requires-action"
)


#: Text and file fields of ``dispute.evidence`` (all null until evidence is staged).
_EVIDENCE_FIELDS = (
    "access_activity_log", "billing_address", "cancellation_policy", "cancellation_policy_disclosure",
    "cancellation_rebuttal", "customer_communication", "customer_email_address", "customer_name",
    "customer_purchase_ip", "customer_signature", "duplicate_charge_documentation", "duplicate_charge_explanation",
    "duplicate_charge_id", "product_description", "receipt", "refund_policy", "refund_policy_disclosure",
    "refund_refusal_explanation", "service_date", "service_documentation", "shipping_address", "shipping_carrier",
    "shipping_date", "shipping_documentation", "shipping_tracking_number", "uncategorized_file",
    "uncategorized_text",
)


def _decimal_string(value: decimal.Decimal) -> str:
    """A decimal as Stripe writes one ("2500", "0.015"): no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text not in ("-0",) else "0"


def new_id(prefix: str, length: int = 24) -> str:
    """Stripe-looking id, e.g. ``cus_NffrFeUfNV2Hib``."""
    return "%s_%s" % (prefix, "".join(secrets.choice(_ALPHABET) for _ in range(length)))


def now() -> int:
    return int(time.time())


@dataclass
class Context:
    """Who caused a change: copied into ``event.request`` and used for URLs."""

    request_id: Optional[str] = None
    idempotency_key: Optional[str] = None
    base_url: str = "http://127.0.0.1:12111"


def _merge_metadata(current: Dict[str, str], new: Any, param: str = "metadata") -> Dict[str, str]:
    """Stripe metadata semantics: merge keys, "" unsets a key, "" for the
    whole field unsets everything."""
    if new is None:
        return current
    if new == "":
        return {}
    if not isinstance(new, dict):
        raise errors.invalid_value("Invalid object", param)
    out = dict(current)
    for k, v in new.items():
        if len(k) > 40:
            raise errors.invalid_value(
                "Metadata keys can have a maximum length of 40 characters.", "%s[%s]" % (param, k))
        if v in ("", None):
            out.pop(k, None)
        else:
            if isinstance(v, (dict, list)):
                raise errors.invalid_value("Invalid string: %s" % (v,), "%s[%s]" % (param, k))
            v = "true" if v is True else "false" if v is False else str(v)
            if len(v) > 500:
                raise errors.invalid_value(
                    "Metadata values can have a maximum length of 500 characters.", "%s[%s]" % (param, k))
            out[k] = v
    if len(out) > 50:
        raise errors.invalid_value("You can only have 50 metadata keys.", param)
    return out


def _diff(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """Top-level ``previous_attributes`` of an ``*.updated`` event."""
    out = {}
    for k, v in before.items():
        if after.get(k) != v:
            out[k] = v
    return out


def _created_filter(value: Any, created: int) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        ops = {"gt": created.__gt__, "gte": created.__ge__, "lt": created.__lt__, "lte": created.__le__}
        return all(ops[k](int(v)) for k, v in value.items() if k in ops)
    return created == int(value)


class Store:
    """The emulated Stripe account."""

    def __init__(self, dispatcher: Any = None, clock: Callable[[], int] = now):
        self.lock = threading.RLock()
        self.dispatcher = dispatcher
        self.clock = clock
        self.reset()

    # ------------------------------------------------------------------ infra
    def reset(self) -> None:
        with self.lock:
            self.customers: Dict[str, Dict[str, Any]] = {}
            self.payment_methods: Dict[str, Dict[str, Any]] = {}
            self.invoices: Dict[str, Dict[str, Any]] = {}
            self.invoice_items: Dict[str, Dict[str, Any]] = {}
            self.portal_sessions: Dict[str, Dict[str, Any]] = {}
            self.events: Dict[str, Dict[str, Any]] = {}
            self.charges: Dict[str, Dict[str, Any]] = {}
            self._pm_card: Dict[str, cards.TestCard] = {}
            self._line_ids: Dict[str, str] = {}  # ii_ -> il_
            self._charge_invoice: Dict[str, str] = {}
            self.invoice_payments: Dict[str, Dict[str, Any]] = {}
            self._default_payment: Dict[str, str] = {}  # in_ -> its default inpay_
            self.disputes: Dict[str, Dict[str, Any]] = {}
            self.refunds: Dict[str, Dict[str, Any]] = {}
            self.credit_notes: Dict[str, Dict[str, Any]] = {}
            self.balance_transactions: Dict[str, Dict[str, Any]] = {}
            self.webhook_endpoints: Dict[str, Dict[str, Any]] = {}
            self.portal_configurations: Dict[str, Dict[str, Any]] = {}
            self._invoice_seq = 0
            self._portal_configuration = new_id("bpc")

    def _emit(self, type_: str, obj: Dict[str, Any], ctx: Context,
              previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        active = bool(self.dispatcher is not None and self.dispatcher.active)
        data: Dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.clock(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1 if active else 0,
            "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            "type": type_,
        }
        self.events[event["id"]] = event
        if active:
            self.dispatcher.enqueue(copy.deepcopy(event))
        return event

    # ------------------------------------------------------------ persistence
    #: Attributes that wire the store up rather than hold the account.
    _WIRING = frozenset({"lock", "dispatcher", "clock"})

    def snapshot(self) -> Dict[str, Any]:
        """Copy of every table and counter as JSON-ready data (what ``--state-file`` saves)."""
        with self.lock:
            state = {k: v for k, v in vars(self).items() if k not in self._WIRING}
            state["_pm_card"] = {pm_id: card.token for pm_id, card in self._pm_card.items()}
            return copy.deepcopy(state)

    def restore(self, state: Dict[str, Any]) -> None:
        """Replace the account with a :meth:`snapshot`; on ValueError the store is left empty."""
        with self.lock:
            self.reset()
            fresh = {k: v for k, v in vars(self).items() if k not in self._WIRING}
            if not isinstance(state, dict):
                raise ValueError("the saved store is not an object")
            # A table this emulator has but the file lacks (added since it was saved) stays empty.
            loaded = {k: v for k, v in state.items() if k in fresh}
            for key, value in loaded.items():
                if type(value) is not type(fresh[key]):
                    raise ValueError("%s is a %s, expected a %s" % (key, type(value).__name__,
                                                                    type(fresh[key]).__name__))
            pm_cards: Dict[str, cards.TestCard] = {}
            for pm_id, token in loaded.get("_pm_card", {}).items():
                card = cards.lookup(token) if isinstance(token, str) else None
                if card is None:
                    raise ValueError("payment method %s has an unknown test card %r" % (pm_id, token))
                pm_cards[pm_id] = card
            loaded["_pm_card"] = pm_cards
            for key, value in loaded.items():
                setattr(self, key, value)

    def redeliver_pending(self) -> int:
        """Queue again the events whose delivery had not finished (Stripe retries those); how many."""
        with self.lock:
            if self.dispatcher is None or not self.dispatcher.active:
                return 0
            pending = [e for e in self.events.values() if e.get("pending_webhooks", 0) > 0]
            for event in pending:
                self.dispatcher.enqueue(copy.deepcopy(event))
            return len(pending)

    def webhook_done(self, event_id: str) -> None:
        """Dispatcher callback: the event's delivery finished (ok or given up)."""
        with self.lock:
            evt = self.events.get(event_id)
            if evt and evt["pending_webhooks"] > 0:
                evt["pending_webhooks"] -= 1

    @staticmethod
    def paginate(items: List[Dict[str, Any]], params: Dict[str, Any], url: str,
                 kind: str = "object") -> Dict[str, Any]:
        """Stripe list object over ``items`` (already newest first)."""
        limit = params.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise errors.invalid_value(
                "This value must be greater than or equal to 1 and less than or equal to 100.", "limit")
        after, before = params.get("starting_after"), params.get("ending_before")
        ids = [o["id"] for o in items]
        if after:
            if after not in ids:
                raise errors.resource_missing(kind, after, "starting_after")
            start = ids.index(after) + 1
            page = items[start:start + limit]
            has_more = start + limit < len(items)
        elif before:
            if before not in ids:
                raise errors.resource_missing(kind, before, "ending_before")
            end = ids.index(before)
            page = items[max(0, end - limit):end]
            has_more = end - limit > 0
        else:
            page = items[:limit]
            has_more = len(items) > limit
        return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": url}

    def find(self, obj_id: str) -> Optional[Dict[str, Any]]:
        """Any object by id (used by ``expand``)."""
        with self.lock:
            for table in (self.customers, self.payment_methods, self.invoice_items,
                          self.portal_sessions, self.events, self.charges, self.invoice_payments,
                          self.disputes, self.refunds, self.credit_notes, self.balance_transactions):
                if obj_id in table:
                    return copy.deepcopy(table[obj_id])
            if obj_id in self.invoices:
                return self._render_invoice(self.invoices[obj_id])
            return None

    # -------------------------------------------------------------- customers
    def _customer(self, cid: Any, param: str = "id", allow_deleted: bool = False) -> Dict[str, Any]:
        if not isinstance(cid, str) or cid not in self.customers:
            raise errors.resource_missing("customer", str(cid), param)
        c = self.customers[cid]
        if c.get("deleted") and not allow_deleted:
            raise errors.resource_missing("customer", cid, param)
        return c

    def create_customer(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            attach_pm = p.get("payment_method")
            inv_settings = p.get("invoice_settings") or {}
            default_pm = inv_settings.get("default_payment_method") if isinstance(inv_settings, dict) else None
            # Check every payment method before changing anything.
            for value, param in ((attach_pm, "payment_method"),
                                 (default_pm, "invoice_settings[default_payment_method]")):
                if value:
                    self._check_attachable(value, None, param)
            if default_pm and default_pm != attach_pm and not cards.lookup(default_pm):
                raise errors.invalid_request(
                    "The customer does not have a payment method with the ID %s. The payment method "
                    "must be attached to the customer." % default_pm,
                    "invoice_settings[default_payment_method]")
            cid = new_id("cus", 14)
            cust = {
                "id": cid,
                "object": "customer",
                "address": p.get("address") or None,
                "balance": p.get("balance", 0),
                "created": self.clock(),
                "currency": None,
                "customer_account": None,
                "default_source": None,
                "delinquent": False,
                "description": p.get("description"),
                "discount": None,
                "email": p.get("email"),
                "invoice_prefix": p.get("invoice_prefix") or "".join(
                    secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
                "invoice_settings": {
                    "custom_fields": None,
                    "default_payment_method": None,
                    "footer": inv_settings.get("footer") if isinstance(inv_settings, dict) else None,
                    "rendering_options": None,
                },
                "livemode": False,
                "metadata": _merge_metadata({}, p.get("metadata")),
                "name": p.get("name"),
                "next_invoice_sequence": p.get("next_invoice_sequence", 1),
                "phone": p.get("phone"),
                "preferred_locales": list(p.get("preferred_locales") or []),
                "shipping": p.get("shipping") or None,
                "tax_exempt": p.get("tax_exempt") or "none",
                "test_clock": None,
            }
            for key in ("business_name", "individual_name"):  # Stripe omits them unless they are set
                if p.get(key):
                    cust[key] = p[key]
            self.customers[cid] = cust
            attached: List[Dict[str, Any]] = []
            token_map: Dict[str, str] = {}
            if attach_pm:
                pm = self._attach(attach_pm, cid, "payment_method")
                token_map[attach_pm] = pm["id"]
                attached.append(pm)
            if default_pm:
                if default_pm in token_map:
                    cust["invoice_settings"]["default_payment_method"] = token_map[default_pm]
                else:
                    pm = self._attach(default_pm, cid, "invoice_settings[default_payment_method]")
                    if pm["id"] not in [a["id"] for a in attached]:
                        attached.append(pm)
                    cust["invoice_settings"]["default_payment_method"] = pm["id"]
            self._emit("customer.created", cust, ctx)
            for pm in attached:
                self._emit("payment_method.attached", pm, ctx)
            return copy.deepcopy(cust)

    def retrieve_customer(self, cid: str) -> Dict[str, Any]:
        with self.lock:
            c = self._customer(cid, allow_deleted=True)
            if c.get("deleted"):
                return {"id": cid, "object": "customer", "deleted": True}
            return copy.deepcopy(c)

    def update_customer(self, cid: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cust = self._customer(cid)
            before = copy.deepcopy(cust)
            new_metadata = _merge_metadata(cust["metadata"], p["metadata"]) if "metadata" in p else None
            inv_settings = p.get("invoice_settings")
            new_default: Any = None
            set_default = False
            if isinstance(inv_settings, dict) and "default_payment_method" in inv_settings:
                set_default = True
                new_default = inv_settings["default_payment_method"]
                if new_default:
                    self._check_attachable(new_default, cid, "invoice_settings[default_payment_method]")
                    if not cards.lookup(new_default):
                        pm = self.payment_methods.get(new_default)
                        if pm is None or pm.get("customer") != cid:
                            raise errors.invalid_request(
                                "The customer does not have a payment method with the ID %s. The "
                                "payment method must be attached to the customer." % new_default,
                                "invoice_settings[default_payment_method]")
            simple = ("name", "email", "description", "phone", "balance", "invoice_prefix",
                      "next_invoice_sequence", "tax_exempt")
            for key in simple:
                if key in p:
                    cust[key] = p[key] if p[key] != "" else None
            for key in ("business_name", "individual_name"):
                if key in p:
                    if p[key]:
                        cust[key] = p[key]
                    else:
                        cust.pop(key, None)
            for key in ("address", "shipping"):
                if key in p:
                    cust[key] = p[key] or None
            if "preferred_locales" in p:
                cust["preferred_locales"] = list(p["preferred_locales"] or [])
            if new_metadata is not None:
                cust["metadata"] = new_metadata
            if isinstance(inv_settings, dict) and "footer" in inv_settings:
                cust["invoice_settings"]["footer"] = inv_settings["footer"] or None
            attached = None
            if set_default:
                if new_default:
                    if cards.lookup(new_default):
                        attached = self._attach(new_default, cid, "invoice_settings[default_payment_method]")
                        new_default = attached["id"]
                    cust["invoice_settings"]["default_payment_method"] = new_default
                else:
                    cust["invoice_settings"]["default_payment_method"] = None
            if attached is not None:
                self._emit("payment_method.attached", attached, ctx)
            previous = _diff(before, cust)
            if previous:
                self._emit("customer.updated", cust, ctx, previous)
            return copy.deepcopy(cust)

    def delete_customer(self, cid: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cust = self._customer(cid)
            snapshot = copy.deepcopy(cust)
            cust["deleted"] = True
            for pm in self.payment_methods.values():
                if pm.get("customer") == cid:
                    pm["customer"] = None
            self._emit("customer.deleted", snapshot, ctx)
            return {"id": cid, "object": "customer", "deleted": True}

    def list_customers(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            items = [
                c for c in reversed(list(self.customers.values()))
                if not c.get("deleted")
                and ("email" not in p or c.get("email") == p["email"])
                and _created_filter(p.get("created"), c["created"])
            ]
            return self.paginate(items, p, "/v1/customers", "customer")

    # -------------------------------------------------------- payment methods
    def _check_attachable(self, pm_ref: str, customer: Optional[str], param: str) -> None:
        """Raise the error attaching ``pm_ref`` would raise (without doing it)."""
        card = cards.lookup(pm_ref)
        if card is not None:
            if card.behaviour == "attach_decline":
                code, decline, msg = cards.ATTACH_FAILURE
                raise errors.card_error(code, msg, decline, param=param)
            return
        pm = self.payment_methods.get(pm_ref)
        if pm is None:
            raise errors.resource_missing("PaymentMethod", pm_ref, param)
        if pm.get("customer") and pm["customer"] != customer:
            raise errors.invalid_request(
                "The payment method you provided has already been attached to a customer.", param)

    def _new_pm(self, card: cards.TestCard, customer: Optional[str]) -> Dict[str, Any]:
        pm_id = new_id("pm")
        pm = {
            "id": pm_id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {"city": None, "country": None, "line1": None, "line2": None,
                            "postal_code": None, "state": None},
                "email": None, "name": None, "phone": None, "tax_id": None,
            },
            "card": {
                "brand": card.brand,
                "checks": {"address_line1_check": None, "address_postal_code_check": None,
                           "cvc_check": "pass"},
                "country": card.country,
                "display_brand": card.display_brand,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
                "fingerprint": "emu" + card.last4 + card.brand[:4],
                "funding": card.funding,
                "generated_from": None,
                "last4": card.last4,
                "networks": {"available": [card.brand], "preferred": None},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": self.clock(),
            "customer": customer,
            "customer_account": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.payment_methods[pm_id] = pm
        self._pm_card[pm_id] = card
        return pm

    def _attach(self, pm_ref: str, cid: str, param: str) -> Dict[str, Any]:
        """Attach (no event). Tokens create a fresh PaymentMethod."""
        self._check_attachable(pm_ref, cid, param)
        card = cards.lookup(pm_ref)
        if card is not None:
            return self._new_pm(card, cid)
        pm = self.payment_methods[pm_ref]
        pm["customer"] = cid
        return pm

    def attach_payment_method(self, pm_ref: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cid = p.get("customer")
            if not cid:
                raise errors.missing_parameter("customer")
            self._customer(cid, "customer")
            existing = self.payment_methods.get(pm_ref)
            if existing is not None and existing.get("customer") == cid:
                return copy.deepcopy(existing)
            if cards.lookup(pm_ref) is None and existing is None:
                raise errors.resource_missing("PaymentMethod", pm_ref, "payment_method")
            pm = self._attach(pm_ref, cid, "payment_method")
            self._emit("payment_method.attached", pm, ctx)
            return copy.deepcopy(pm)

    def detach_payment_method(self, pm_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            pm = self.payment_methods.get(pm_id)
            if pm is None:
                raise errors.resource_missing("PaymentMethod", pm_id, "payment_method")
            cid = pm.get("customer")
            if not cid:
                raise errors.invalid_request(
                    "The payment method you provided is not attached to a customer so detachment "
                    "is impossible.", "payment_method")
            pm["customer"] = None
            self._emit("payment_method.detached", pm, ctx, {"customer": cid})
            cust = self.customers.get(cid)
            if cust and cust["invoice_settings"]["default_payment_method"] == pm_id:
                before = copy.deepcopy(cust)
                cust["invoice_settings"]["default_payment_method"] = None
                self._emit("customer.updated", cust, ctx, _diff(before, cust))
            return copy.deepcopy(pm)

    def retrieve_payment_method(self, pm_id: str) -> Dict[str, Any]:
        with self.lock:
            card = cards.lookup(pm_id)
            if card is not None:  # a test token: Stripe returns a fresh PaymentMethod
                return copy.deepcopy(self._new_pm(card, None))
            pm = self.payment_methods.get(pm_id)
            if pm is None:
                raise errors.resource_missing("PaymentMethod", pm_id, "payment_method")
            return copy.deepcopy(pm)

    def list_payment_methods(self, cid: Optional[str], p: Dict[str, Any], url: str) -> Dict[str, Any]:
        with self.lock:
            if cid is not None:
                self._customer(cid, "customer")
            items = [
                pm for pm in reversed(list(self.payment_methods.values()))
                if (cid is None or pm.get("customer") == cid)
                and (cid is not None or pm.get("customer"))
                and ("type" not in p or pm["type"] == p["type"])
            ]
            return self.paginate(items, p, url, "PaymentMethod")

    def retrieve_customer_payment_method(self, cid: str, pm_id: str) -> Dict[str, Any]:
        with self.lock:
            self._customer(cid, "customer")
            pm = self.payment_methods.get(pm_id)
            if pm is None or pm.get("customer") != cid:
                raise errors.resource_missing("PaymentMethod", pm_id, "payment_method")
            return copy.deepcopy(pm)

    def set_default_payment_method(self, cid: str, pm_ref: str, ctx: Context) -> Dict[str, Any]:
        """What the billing portal does: attach ``pm_ref`` (token or pm id)
        and make it ``invoice_settings.default_payment_method``."""
        with self.lock:
            cust = self._customer(cid, "customer")
            pm = self.payment_methods.get(pm_ref)
            if pm is not None and pm.get("customer") == cid:
                attached = None
            else:
                if cards.lookup(pm_ref) is None and pm is None:
                    raise errors.resource_missing("PaymentMethod", pm_ref, "payment_method")
                pm = attached = self._attach(pm_ref, cid, "payment_method")
            before = copy.deepcopy(cust)
            cust["invoice_settings"]["default_payment_method"] = pm["id"]
            if attached is not None:
                self._emit("payment_method.attached", attached, ctx)
            previous = _diff(before, cust)
            if previous:
                self._emit("customer.updated", cust, ctx, previous)
            return {"customer": copy.deepcopy(cust), "payment_method": copy.deepcopy(pm)}

    def card_for(self, pm_id: str) -> Optional[cards.TestCard]:
        return self._pm_card.get(pm_id)

    # ---------------------------------------------------------- invoice items
    def _invoice(self, iid: Any, param: str = "id") -> Dict[str, Any]:
        if not isinstance(iid, str) or iid not in self.invoices:
            raise errors.resource_missing("invoice", str(iid), param)
        return self.invoices[iid]

    def _item_amount(self, p: Dict[str, Any]) -> Tuple[int, int, Optional[str], Optional[str]]:
        """(amount, quantity, unit_amount_decimal, currency_from_price_data)."""
        quantity = p.get("quantity", 1)
        if not isinstance(quantity, int) or quantity < 0:
            raise errors.invalid_value("Invalid integer: %s" % quantity, "quantity")
        if "amount" in p:
            amount = p["amount"]
            unit = decimal.Decimal(amount) / (quantity or 1)
            return amount, quantity, _decimal_string(unit), None
        if "unit_amount_decimal" in p:
            unit = decimal.Decimal(p["unit_amount_decimal"])
            return int((unit * quantity).to_integral_value(decimal.ROUND_HALF_UP)), quantity, _decimal_string(unit), None
        price_data = p.get("price_data")
        if isinstance(price_data, dict):
            if "unit_amount" in price_data:
                unit = decimal.Decimal(price_data["unit_amount"])
            elif "unit_amount_decimal" in price_data:
                unit = decimal.Decimal(price_data["unit_amount_decimal"])
            else:
                raise errors.missing_parameter("price_data[unit_amount]")
            return (int((unit * quantity).to_integral_value(decimal.ROUND_HALF_UP)), quantity,
                    _decimal_string(unit), price_data.get("currency"))
        if p.get("pricing"):
            raise errors.invalid_request("No such price: '%s'" % (p["pricing"].get("price"),),
                                         "pricing[price]", "resource_missing")
        raise errors.param_error(
            "You must specify either `amount`, `price_data`, `pricing` or `unit_amount_decimal`.",
            "amount", "parameter_missing")

    def create_invoice_item(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cid = p.get("customer")
            if not cid:
                raise errors.missing_parameter("customer")
            amount, quantity, unit, pd_currency = self._item_amount(p)
            cust = self._customer(cid, "customer")
            inv = None
            if p.get("invoice"):
                inv = self._invoice(p["invoice"], "invoice")
                if inv["customer"] != cid:
                    raise errors.invalid_request(
                        "The invoice `%s` belongs to a different customer than `%s`." % (inv["id"], cid),
                        "invoice")
                if inv["status"] != "draft":
                    raise errors.invalid_request(
                        "Invoice items can only be added to draft invoices; invoice `%s` has status "
                        "`%s`." % (inv["id"], inv["status"]), "invoice")
            currency = (p.get("currency") or pd_currency
                        or (inv["currency"] if inv else None) or cust.get("currency") or "usd").lower()
            if inv is not None and currency != inv["currency"]:
                raise errors.invalid_request(
                    "The currency of this invoice item (%s) must match the currency of the invoice "
                    "(%s)." % (currency, inv["currency"]), "currency")
            period = p.get("period") or {}
            created = self.clock()
            start, end = period.get("start", created), period.get("end", created)
            if end < start:
                raise errors.invalid_value(
                    "The period end must be greater than or equal to the period start.", "period[end]")
            ii_id = new_id("ii")
            item = {
                "id": ii_id,
                "object": "invoiceitem",
                "amount": amount,
                "currency": currency,
                "customer": cid,
                "customer_account": None,
                "date": created,
                "description": p.get("description"),
                "discountable": p.get("discountable", True),
                "discounts": [],
                "invoice": inv["id"] if inv else None,
                "livemode": False,
                "metadata": _merge_metadata({}, p.get("metadata")),
                "net_amount": amount,
                "parent": None,
                "period": {"end": end, "start": start},
                "pricing": {"type": "price_details", "unit_amount_decimal": unit},
                "proration": False,
                "proration_details": {"credited_items": None, "discount_amounts": []},
                "quantity": quantity,
                "quantity_decimal": str(quantity),
                "tax_rates": [],
                "test_clock": None,
            }
            self.invoice_items[ii_id] = item
            self._line_ids[ii_id] = new_id("il")
            self._emit("invoiceitem.created", item, ctx)
            return copy.deepcopy(item)

    def _item(self, ii_id: str) -> Dict[str, Any]:
        item = self.invoice_items.get(ii_id)
        if item is None:
            raise errors.resource_missing("invoiceitem", ii_id, "id")
        return item

    def _editable_item(self, item: Dict[str, Any]) -> None:
        if item["invoice"] and self.invoices[item["invoice"]]["status"] != "draft":
            raise errors.invalid_request(
                "You can only modify invoice items that are pending or attached to a draft invoice.",
                "id")

    def retrieve_invoice_item(self, ii_id: str) -> Dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._item(ii_id))

    def update_invoice_item(self, ii_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            item = self._item(ii_id)
            self._editable_item(item)
            before = copy.deepcopy(item)
            new_metadata = _merge_metadata(item["metadata"], p["metadata"]) if "metadata" in p else None
            if any(k in p for k in ("amount", "unit_amount_decimal", "price_data", "quantity")):
                merged = {"quantity": p.get("quantity", item["quantity"])}
                for k in ("amount", "unit_amount_decimal", "price_data"):
                    if k in p:
                        merged[k] = p[k]
                if not any(k in merged for k in ("amount", "unit_amount_decimal", "price_data")):
                    merged["unit_amount_decimal"] = item["pricing"]["unit_amount_decimal"]
                amount, quantity, unit, _ = self._item_amount(merged)
                item.update(amount=amount, net_amount=amount, quantity=quantity,
                            quantity_decimal=str(quantity))
                item["pricing"]["unit_amount_decimal"] = unit
            if "description" in p:
                item["description"] = p["description"] or None
            if new_metadata is not None:
                item["metadata"] = new_metadata
            if "period" in p:
                item["period"] = {"end": p["period"]["end"], "start": p["period"]["start"]}
            if "discountable" in p:
                item["discountable"] = p["discountable"]
            previous = _diff(before, item)
            if previous:
                self._emit("invoiceitem.updated", item, ctx, previous)
            return copy.deepcopy(item)

    def delete_invoice_item(self, ii_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            item = self._item(ii_id)
            self._editable_item(item)
            del self.invoice_items[ii_id]
            self._emit("invoiceitem.deleted", item, ctx)
            return {"id": ii_id, "object": "invoiceitem", "deleted": True}

    def list_invoice_items(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            items = [
                i for i in reversed(list(self.invoice_items.values()))
                if ("invoice" not in p or i["invoice"] == p["invoice"])
                and ("customer" not in p or i["customer"] == p["customer"])
                and ("pending" not in p or (i["invoice"] is None) == bool(p["pending"]))
                and _created_filter(p.get("created"), i["date"])
            ]
            return self.paginate(items, p, "/v1/invoiceitems", "invoiceitem")

    # ---------------------------------------------------------------- invoices
    def _lines(self, inv_id: str) -> List[Dict[str, Any]]:
        lines = []
        for item in self.invoice_items.values():
            if item["invoice"] != inv_id:
                continue
            lines.append({
                "id": self._line_ids[item["id"]],
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "discount_amounts": [],
                "discountable": item["discountable"],
                "discounts": [],
                "invoice": inv_id,
                "livemode": False,
                "metadata": copy.deepcopy(item["metadata"]),
                "parent": {
                    "invoice_item_details": {
                        "invoice_item": item["id"],
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": None,
                    },
                    "subscription_item_details": None,
                    "type": "invoice_item_details",
                },
                "period": dict(item["period"]),
                "pretax_credit_amounts": [],
                "pricing": copy.deepcopy(item["pricing"]),
                "quantity": item["quantity"],
                "quantity_decimal": item["quantity_decimal"],
                "subscription": None,
                "subtotal": item["amount"],
                "taxes": [],
            })
        return lines

    def _totals(self, inv: Dict[str, Any]) -> Dict[str, int]:
        if inv.get("_frozen_lines") is not None:
            lines = inv["_frozen_lines"]
        else:
            lines = self._lines(inv["id"])
        subtotal = sum(line["amount"] for line in lines)
        # The customer balance applied at finalization (ending − starting: a credit used is positive) and the
        # pre-payment credit notes lower what is due; the total stays what the lines say.
        applied = inv["ending_balance"] - inv["starting_balance"] if inv.get("ending_balance") is not None else 0
        amount_due = max(subtotal - applied - inv.get("pre_payment_credit_notes_amount", 0), 0)
        return {"subtotal": subtotal, "total": subtotal, "amount_due": amount_due}

    def _render_invoice(self, inv: Dict[str, Any], lines_limit: int = 10) -> Dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in inv.items() if not k.startswith("_")}
        lines = inv["_frozen_lines"] if inv.get("_frozen_lines") is not None else self._lines(inv["id"])
        totals = self._totals(inv)
        out.update(totals)
        out["subtotal_excluding_tax"] = totals["subtotal"]
        out["total_excluding_tax"] = totals["total"]
        out["amount_remaining"] = max(totals["amount_due"] - inv["amount_paid"], 0)
        out["lines"] = {
            "object": "list",
            "data": copy.deepcopy(lines[:lines_limit]),
            "has_more": len(lines) > lines_limit,
            "url": "/v1/invoices/%s/lines" % inv["id"],
        }
        return out

    def render_invoice(self, inv_id: str) -> Dict[str, Any]:
        with self.lock:
            return self._render_invoice(self._invoice(inv_id))

    def _resolve_pm_for_customer(self, ref: str, cid: str, param: str, ctx: Context) -> str:
        """A PaymentMethod id of ``cid`` for ``ref``; test tokens get attached."""
        if cards.lookup(ref) is not None:
            pm = self._attach(ref, cid, param)
            self._emit("payment_method.attached", pm, ctx)
            return pm["id"]
        pm = self.payment_methods.get(ref)
        if pm is None:
            raise errors.resource_missing("PaymentMethod", ref, param)
        if pm.get("customer") != cid:
            raise errors.invalid_request(
                "The PaymentMethod %s does not belong to the Customer %s. Please use a PaymentMethod "
                "that belongs to this Customer." % (ref, cid), param)
        return ref

    def create_invoice(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cid = p.get("customer")
            if not cid:
                raise errors.missing_parameter("customer")
            method = p.get("collection_method", "charge_automatically")
            if method not in ("charge_automatically", "send_invoice"):
                raise errors.invalid_value(
                    "Invalid collection_method: must be one of charge_automatically or send_invoice",
                    "collection_method")
            behaviour = p.get("pending_invoice_items_behavior", "exclude")
            if behaviour not in ("exclude", "include"):
                raise errors.invalid_value(
                    "Invalid pending_invoice_items_behavior: must be one of exclude or include",
                    "pending_invoice_items_behavior")
            if method == "send_invoice" and "days_until_due" not in p and "due_date" not in p:
                raise errors.param_error(
                    "Invoices with `collection_method=send_invoice` must have either `days_until_due` "
                    "or `due_date` set.", "days_until_due", "parameter_missing")
            if method == "charge_automatically" and ("days_until_due" in p or "due_date" in p):
                name = "days_until_due" if "days_until_due" in p else "due_date"
                raise errors.invalid_value(
                    "You can only set `%s` if `collection_method` is `send_invoice`." % name, name)
            cust = self._customer(cid, "customer")
            currency = (p.get("currency") or cust.get("currency") or "usd").lower()
            if p.get("default_payment_method"):
                self._check_attachable(p["default_payment_method"], cid, "default_payment_method")
                if cards.lookup(p["default_payment_method"]) is None:  # pure check for real ids
                    self._resolve_pm_for_customer(p["default_payment_method"], cid,
                                                  "default_payment_method", ctx)
            created = self.clock()
            inv_id = new_id("in")
            inv: Dict[str, Any] = {
                "id": inv_id,
                "object": "invoice",
                "account_country": "US",
                "account_name": "Stripe Emulator",
                "account_tax_ids": None,
                "amount_due": 0,
                "amount_overpaid": 0,
                "amount_paid": 0,
                "amount_paid_off_stripe": 0,
                "amount_remaining": 0,
                "amount_shipping": 0,
                "application": None,
                "attempt_count": 0,
                "attempted": False,
                "auto_advance": p.get("auto_advance", False),
                "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None,
                                  "provider": None, "status": None},
                "automatically_finalizes_at": None,
                "billing_reason": "manual",
                "collection_method": method,
                "confirmation_secret": None,
                "created": created,
                "currency": currency,
                "custom_fields": p.get("custom_fields") or None,
                "customer": cid,
                "customer_account": None,
                "customer_address": cust.get("address"),
                "customer_email": cust.get("email"),
                "customer_name": cust.get("name"),
                "customer_phone": cust.get("phone"),
                "customer_shipping": cust.get("shipping"),
                "customer_tax_exempt": cust.get("tax_exempt", "none"),
                "customer_tax_ids": [],
                "default_payment_method": None,
                "default_source": None,
                "default_tax_rates": [],
                "description": p.get("description"),
                "discounts": [],
                "due_date": p.get("due_date"),
                "effective_at": p.get("effective_at"),
                "ending_balance": None,
                "footer": p.get("footer") or cust["invoice_settings"].get("footer"),
                "from_invoice": None,
                "hosted_invoice_url": None,
                "invoice_pdf": None,
                "issuer": {"type": "self"},
                "last_finalization_error": None,
                "latest_revision": None,
                "livemode": False,
                "metadata": _merge_metadata({}, p.get("metadata")),
                "next_payment_attempt": None,
                "number": p.get("number"),
                "on_behalf_of": None,
                "parent": None,
                "payment_settings": {"default_mandate": None, "payment_method_options": None,
                                     "payment_method_types": None},
                "period_end": created,
                "period_start": created,
                "post_payment_credit_notes_amount": 0,
                "pre_payment_credit_notes_amount": 0,
                "receipt_number": None,
                "rendering": None,
                "shipping_cost": None,
                "shipping_details": None,
                "starting_balance": 0,
                "statement_descriptor": p.get("statement_descriptor"),
                "status": "draft",
                "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                                       "paid_at": None, "voided_at": None},
                "test_clock": None,
                "total_discount_amounts": [],
                "total_pretax_credit_amounts": [],
                "total_taxes": [],
                "webhooks_delivered_at": None,
                "_days_until_due": p.get("days_until_due"),
            }
            self.invoices[inv_id] = inv
            if p.get("default_payment_method"):
                inv["default_payment_method"] = self._resolve_pm_for_customer(
                    p["default_payment_method"], cid, "default_payment_method", ctx)
            if behaviour == "include":
                for item in self.invoice_items.values():
                    if item["customer"] == cid and item["invoice"] is None and item["currency"] == currency:
                        item["invoice"] = inv_id
            rendered = self._render_invoice(inv)
            self._emit("invoice.created", rendered, ctx)
            return rendered

    _DRAFT_ONLY = ("collection_method", "days_until_due", "custom_fields", "number",
                   "statement_descriptor", "effective_at")
    _OPEN_OK = ("metadata", "description", "footer", "auto_advance", "default_payment_method", "due_date")

    def update_invoice(self, inv_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            status = inv["status"]
            given = [k for k in p if k != "expand"]
            if status != "draft":
                allowed = self._OPEN_OK if status == "open" else ("metadata",)
                bad = [k for k in given if k not in allowed]
                if bad:
                    raise errors.invalid_request(
                        "Finalized invoices can't be updated in this way: you can't update `%s` on an "
                        "invoice with status `%s`." % (bad[0], status), bad[0])
            before = self._render_invoice(inv)
            new_metadata = _merge_metadata(inv["metadata"], p["metadata"]) if "metadata" in p else None
            if p.get("collection_method", "send_invoice") not in ("charge_automatically", "send_invoice"):
                raise errors.invalid_value(
                    "Invalid collection_method: must be one of charge_automatically or send_invoice",
                    "collection_method")
            if p.get("default_payment_method"):
                self._check_attachable(p["default_payment_method"], inv["customer"], "default_payment_method")
                if cards.lookup(p["default_payment_method"]) is None:
                    self._resolve_pm_for_customer(p["default_payment_method"], inv["customer"],
                                                  "default_payment_method", ctx)
            if "collection_method" in p:
                inv["collection_method"] = p["collection_method"]
            if "default_payment_method" in p:
                ref = p["default_payment_method"]
                inv["default_payment_method"] = (
                    self._resolve_pm_for_customer(ref, inv["customer"], "default_payment_method", ctx)
                    if ref else None)
            for key in ("description", "footer", "statement_descriptor", "number"):
                if key in p:
                    inv[key] = p[key] or None
            for key in ("auto_advance", "due_date", "effective_at"):
                if key in p:
                    inv[key] = p[key] if p[key] != "" else None
            if "days_until_due" in p:
                inv["_days_until_due"] = p["days_until_due"]
            if "custom_fields" in p:
                inv["custom_fields"] = p["custom_fields"] or None
            if new_metadata is not None:
                inv["metadata"] = new_metadata
            after = self._render_invoice(inv)
            previous = _diff(before, after)
            if previous:
                self._emit("invoice.updated", after, ctx, previous)
            return after

    def delete_invoice(self, inv_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            if inv["status"] != "draft":
                raise errors.invalid_request(
                    "You can only delete draft invoices. Invoice %s has status %s; void it instead."
                    % (inv_id, inv["status"]), "id")
            snapshot = self._render_invoice(inv)
            for ii in [i for i in self.invoice_items.values() if i["invoice"] == inv_id]:
                del self.invoice_items[ii["id"]]
            del self.invoices[inv_id]
            self._emit("invoice.deleted", snapshot, ctx)
            return {"id": inv_id, "object": "invoice", "deleted": True}

    def list_invoices(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            status = p.get("status")
            if status is not None and status not in ("draft", "open", "paid", "uncollectible", "void"):
                raise errors.invalid_value(
                    "Invalid status: must be one of draft, open, paid, uncollectible, or void", "status")
            items = [
                self._render_invoice(i) for i in reversed(list(self.invoices.values()))
                if ("customer" not in p or i["customer"] == p["customer"])
                and (status is None or i["status"] == status)
                and ("collection_method" not in p or i["collection_method"] == p["collection_method"])
                and _created_filter(p.get("created"), i["created"])
                and (p.get("due_date") is None or (i["due_date"] is not None
                                                   and _created_filter(p["due_date"], i["due_date"])))
            ]
            return self.paginate(items, p, "/v1/invoices", "invoice")

    def list_invoice_lines(self, inv_id: str, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id, "invoice")
            lines = inv["_frozen_lines"] if inv.get("_frozen_lines") is not None else self._lines(inv_id)
            return self.paginate(lines, p, "/v1/invoices/%s/lines" % inv_id, "line_item")

    def _mark_paid(self, inv: Dict[str, Any], amount: int, ctx: Context, *, out_of_band: bool = False) -> None:
        ts = self.clock()
        inv["status"] = "paid"
        inv["amount_paid"] += amount
        if out_of_band:
            inv["amount_paid_off_stripe"] = amount
        inv["status_transitions"]["paid_at"] = ts
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        self._settle_invoice_payment(inv, "canceled" if out_of_band else "paid", amount)
        rendered = self._render_invoice(inv)
        self._emit("invoice.paid", rendered, ctx)
        if not out_of_band:
            self._emit("invoice.payment_succeeded", rendered, ctx)

    def _finalize(self, inv: Dict[str, Any], ctx: Context, auto_advance: Optional[bool] = None) -> None:
        ts = self.clock()
        inv["_frozen_lines"] = self._lines(inv["id"])
        self._apply_customer_balance(inv, ctx)
        totals = self._totals(inv)
        inv["status"] = "open"
        if not inv["number"]:
            self._invoice_seq += 1
            inv["number"] = "EMU-%04d" % self._invoice_seq
        inv["status_transitions"]["finalized_at"] = ts
        inv["effective_at"] = inv["effective_at"] or ts
        inv["hosted_invoice_url"] = "%s/i/%s" % (ctx.base_url.rstrip("/"), inv["id"])
        inv["invoice_pdf"] = "%s/i/%s/pdf" % (ctx.base_url.rstrip("/"), inv["id"])
        if auto_advance is not None:
            inv["auto_advance"] = auto_advance
        if inv["collection_method"] == "send_invoice" and inv["due_date"] is None:
            inv["due_date"] = ts + 86400 * int(inv.get("_days_until_due") or 0)
        if inv["collection_method"] == "charge_automatically" and inv["auto_advance"]:
            inv["next_payment_attempt"] = ts + 3600
        self._emit("invoice.finalized", self._render_invoice(inv), ctx)
        if totals["amount_due"] == 0:
            self._mark_paid(inv, 0, ctx)

    def finalize_invoice(self, inv_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            if inv["status"] != "draft":
                raise errors.invalid_request(
                    "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                    "invoice", "invoice_not_editable")
            self._finalize(inv, ctx, p.get("auto_advance"))
            return self._render_invoice(inv)

    def pay_invoice(self, inv_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            status = inv["status"]
            if status == "paid":
                raise errors.invalid_request("Invoice is already paid", "invoice", "invoice_already_paid")
            if status == "void":
                raise errors.invalid_request(
                    "This invoice has been voided and can no longer be paid.", "invoice",
                    "invoice_not_editable")
            pm_ref = p.get("payment_method")
            if pm_ref:  # validate before any state change
                if cards.lookup(pm_ref) is None:
                    self._resolve_pm_for_customer(pm_ref, inv["customer"], "payment_method", ctx)
                else:
                    self._check_attachable(pm_ref, inv["customer"], "payment_method")
            if status == "draft":
                self._finalize(inv, ctx)
                if inv["status"] == "paid":
                    return self._render_invoice(inv)
            amount = max(self._totals(inv)["amount_due"] - inv["amount_paid"], 0)
            if p.get("paid_out_of_band"):
                self._mark_paid(inv, amount, ctx, out_of_band=True)
                return self._render_invoice(inv)
            cust = self.customers[inv["customer"]]
            if pm_ref:
                pm_id = self._resolve_pm_for_customer(pm_ref, inv["customer"], "payment_method", ctx)
            else:
                pm_id = inv["default_payment_method"] or cust["invoice_settings"]["default_payment_method"]
            if not pm_id:
                raise errors.invalid_request(NO_PAYMENT_METHOD_MESSAGE)
            card = self._pm_card.get(pm_id)
            before = self._render_invoice(inv)
            charge = self._charge(inv, pm_id, amount, card)
            inv["attempt_count"] += 1
            inv["attempted"] = True
            if charge["status"] == "succeeded":
                self._mark_paid(inv, amount, ctx)
                return self._render_invoice(inv)
            behaviour = card.behaviour if card else "charge_fail"
            code, decline_code, message = cards.CHARGE_FAILURES[behaviour]
            rendered = self._render_invoice(inv)
            if behaviour == "auth_required" and p.get("off_session") is False:
                # On-session: the PaymentIntent waits for 3DS instead of failing.
                self._emit("invoice.payment_action_required", rendered, ctx)
                self._emit("invoice.updated", rendered, ctx, _diff(before, rendered))
                raise errors.invalid_request(REQUIRES_ACTION_MESSAGE, None,
                                             "invoice_payment_intent_requires_action")
            if behaviour == "auth_required":
                self._emit("invoice.payment_action_required", rendered, ctx)
            self._emit("invoice.payment_failed", rendered, ctx)
            self._emit("invoice.updated", rendered, ctx, _diff(before, rendered))
            raise errors.card_error(code, message, decline_code, extra={
                "charge": charge["id"],
                "payment_method": copy.deepcopy(self.payment_methods.get(pm_id)),
            })

    def _charge(self, inv: Dict[str, Any], pm_id: str, amount: int,
                card: Optional[cards.TestCard]) -> Dict[str, Any]:
        behaviour = card.behaviour if card else "succeed"
        payment_intent = self._invoice_payment(inv, amount)["payment"]["payment_intent"]
        ok = behaviour == "succeed"
        failure = None if ok else cards.CHARGE_FAILURES.get(behaviour, cards.CHARGE_FAILURES["charge_fail"])
        pm = self.payment_methods.get(pm_id) or {}
        charge = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": amount,
            "amount_captured": amount if ok else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": new_id("txn") if ok else None,
            "billing_details": copy.deepcopy(pm.get("billing_details")),
            "calculated_statement_descriptor": "STRIPE EMULATOR",
            "captured": ok,
            "created": self.clock(),
            "currency": inv["currency"],
            "customer": inv["customer"],
            "description": "Payment for Invoice",
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": failure[0] if failure else None,
            "failure_message": failure[2] if failure else None,
            "fraud_details": {},
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "outcome": self._outcome(ok, behaviour, failure),
            "paid": ok,
            "payment_intent": payment_intent,
            "payment_method": pm_id,
            "payment_method_details": {
                "card": {
                    "brand": card.brand if card else None,
                    "country": card.country if card else None,
                    "exp_month": card.exp_month if card else None,
                    "exp_year": card.exp_year if card else None,
                    "funding": card.funding if card else None,
                    "last4": card.last4 if card else None,
                },
                "type": "card",
            },
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "failed",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.charges[charge["id"]] = charge
        self._charge_invoice[charge["id"]] = inv["id"]
        return charge

    @staticmethod
    def _outcome(ok: bool, behaviour: str, failure: Optional[Tuple[str, str, str]]) -> Dict[str, Any]:
        """``charge.outcome`` as Stripe fills it for an approval, an issuer decline or a Radar block."""
        if ok or failure is None:
            return {"advice_code": None, "network_advice_code": None, "network_decline_code": None,
                    "network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                    "risk_score": 20, "seller_message": "Payment complete.", "type": "authorized"}
        if behaviour == "fraudulent":
            return {"advice_code": "do_not_try_again", "network_advice_code": None, "network_decline_code": None,
                    "network_status": "not_sent_to_network", "reason": "highest_risk_level",
                    "risk_level": "highest", "risk_score": 95,
                    "seller_message": "Stripe blocked this payment as too risky.", "type": "blocked"}
        hard = failure[1] in ("lost_card", "stolen_card")
        message = ("The bank did not return any further details with this decline."
                   if failure[1] == "generic_decline" else "The bank returned the decline code `%s`." % failure[1])
        return {"advice_code": "do_not_try_again" if hard else "try_again_later", "network_advice_code": None,
                "network_decline_code": None, "network_status": "declined_by_network", "reason": failure[1],
                "risk_level": "normal", "risk_score": 20, "seller_message": message, "type": "issuer_declined"}

    def void_invoice(self, inv_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            if inv["status"] not in ("open", "uncollectible"):
                raise errors.invalid_request(
                    "You can only void invoices with status `open` or `uncollectible`; this invoice has "
                    "status `%s`." % inv["status"], "invoice", "invoice_not_editable")
            inv["status"] = "void"
            inv["status_transitions"]["voided_at"] = self.clock()
            self._settle_invoice_payment(inv, "canceled", 0)
            self._unapply_customer_balance(inv, ctx)
            inv["next_payment_attempt"] = None
            inv["auto_advance"] = False
            rendered = self._render_invoice(inv)
            self._emit("invoice.voided", rendered, ctx)
            return rendered

    def mark_uncollectible(self, inv_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            if inv["status"] != "open":
                raise errors.invalid_request(
                    "You can only mark invoices with status `open` as uncollectible; this invoice has "
                    "status `%s`." % inv["status"], "invoice", "invoice_not_editable")
            inv["status"] = "uncollectible"
            inv["status_transitions"]["marked_uncollectible_at"] = self.clock()
            inv["next_payment_attempt"] = None
            inv["auto_advance"] = False
            rendered = self._render_invoice(inv)
            self._emit("invoice.marked_uncollectible", rendered, ctx)
            return rendered

    # ----------------------------------------------------------------- charges
    def retrieve_charge(self, ch_id: str) -> Dict[str, Any]:
        with self.lock:
            if ch_id not in self.charges:
                raise errors.resource_missing("charge", ch_id, "charge")
            return copy.deepcopy(self.charges[ch_id])

    def list_charges(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            items = [c for c in reversed(list(self.charges.values()))
                     if ("customer" not in p or c["customer"] == p["customer"])
                     and ("payment_intent" not in p or c["payment_intent"] == p["payment_intent"])
                     and _created_filter(p.get("created"), c["created"])]
            return self.paginate(items, p, "/v1/charges", "charge")

    def charge_summaries(self, include_failed: bool = False) -> List[Dict[str, Any]]:
        """For ``GET /_emulator/charges``: oldest first."""
        with self.lock:
            return [
                {"id": c["id"], "invoice": self._charge_invoice.get(c["id"]), "customer": c["customer"],
                 "amount": c["amount"], "amount_refunded": c["amount_refunded"], "currency": c["currency"],
                 "payment_method": c["payment_method"],
                 "status": c["status"], "created": c["created"]}
                for c in self.charges.values() if include_failed or c["status"] == "succeeded"
            ]

    # -------------------------------------------------------- invoice payments
    def _invoice_payment(self, inv: Dict[str, Any], amount: int) -> Dict[str, Any]:
        """The invoice's default InvoicePayment, created (with its PaymentIntent) at the first attempt.

        Stripe reuses one PaymentIntent for every attempt on an invoice, so every charge of the invoice names
        the same ``payment_intent``; ``GET /v1/invoice_payments?payment[payment_intent]=pi_...`` finds it.
        """
        ip_id = self._default_payment.get(inv["id"])
        if ip_id is not None:
            return self.invoice_payments[ip_id]
        ip = {
            "id": new_id("inpay"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": amount,
            "created": self.clock(),
            "currency": inv["currency"],
            "invoice": inv["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"payment_intent": new_id("pi"), "type": "payment_intent"},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
        self.invoice_payments[ip["id"]] = ip
        self._default_payment[inv["id"]] = ip["id"]
        return ip

    def _settle_invoice_payment(self, inv: Dict[str, Any], status: str, amount: int) -> None:
        """Close the invoice's open InvoicePayment: ``paid`` by a charge, ``canceled`` (void, out of band)."""
        ip_id = self._default_payment.get(inv["id"])
        ip = self.invoice_payments.get(ip_id) if ip_id else None
        if ip is None or ip["status"] != "open":
            return
        ip["status"] = status
        if status == "paid":
            ip["amount_paid"] = amount
            ip["status_transitions"]["paid_at"] = self.clock()
        else:
            ip["status_transitions"]["canceled_at"] = self.clock()

    def invoice_payments_of(self, inv_id: str) -> Dict[str, Any]:
        """``invoice.payments`` (only present when expanded, as in Stripe)."""
        with self.lock:
            items = [ip for ip in reversed(list(self.invoice_payments.values())) if ip["invoice"] == inv_id]
            return {"object": "list", "data": copy.deepcopy(items), "has_more": False,
                    "url": "/v1/invoice_payments?invoice=%s" % inv_id}

    def list_invoice_payments(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            payment = p.get("payment") or {}
            if payment and not payment.get("type"):
                raise errors.missing_parameter("payment[type]")
            status = p.get("status")
            if status is not None and status not in ("canceled", "open", "paid"):
                raise errors.invalid_value("Invalid status: must be one of canceled, open, or paid", "status")
            items = [
                ip for ip in reversed(list(self.invoice_payments.values()))
                if ("invoice" not in p or ip["invoice"] == p["invoice"])
                and (status is None or ip["status"] == status)
                and (not payment or (ip["payment"]["type"] == payment["type"] and all(
                    ip["payment"].get(k) == payment[k] for k in ("payment_intent", "payment_record")
                    if k in payment)))
                and _created_filter(p.get("created"), ip["created"])
            ]
            return self.paginate(items, p, "/v1/invoice_payments", "invoice_payment")

    def retrieve_invoice_payment(self, ip_id: str) -> Dict[str, Any]:
        with self.lock:
            if ip_id not in self.invoice_payments:
                raise errors.resource_missing("invoice payment", ip_id, "invoice_payment")
            return copy.deepcopy(self.invoice_payments[ip_id])

    # ---------------------------------------------------------------- disputes
    def _paid_charge_of(self, inv_id: str) -> Optional[Dict[str, Any]]:
        for ch_id, owner in self._charge_invoice.items():
            if owner == inv_id and self.charges[ch_id]["status"] == "succeeded":
                return self.charges[ch_id]
        return None

    def _dispute_transaction(self, dispute: Dict[str, Any], amount: int, fee: int, description: str) -> Dict[str, Any]:
        ts = self.clock()
        return {
            "id": new_id("txn"),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": ts,
            "balance_type": "payments",
            "created": ts,
            "currency": dispute["currency"],
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": ([{"amount": fee, "application": None, "currency": dispute["currency"],
                              "description": "Dispute fee", "type": "stripe_fee"}] if fee else []),
            "net": amount - fee,
            "reporting_category": "dispute" if amount < 0 else "dispute_reversal",
            "source": dispute["id"],
            "status": "available",
            "type": "adjustment",
        }

    def open_dispute(self, inv_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        """What a cardholder's bank does: dispute the charge that paid ``inv_id`` (control API)."""
        with self.lock:
            inv = self._invoice(inv_id, "invoice")
            charge = self._paid_charge_of(inv_id)
            if charge is None:
                raise errors.invalid_request(
                    "Invoice %s was not paid by a charge: there is nothing to dispute." % inv_id, "invoice")
            if charge["disputed"]:
                raise errors.invalid_request("Charge %s is already disputed." % charge["id"], "invoice")
            try:
                amount = int(p.get("amount") or charge["amount"])
            except (TypeError, ValueError):
                raise errors.invalid_value("Invalid integer: %s" % p.get("amount"), "amount")
            if not 0 < amount <= charge["amount"]:
                raise errors.invalid_value("The disputed amount must be between 1 and the charge's amount.",
                                           "amount")
            card = (charge.get("payment_method_details") or {}).get("card") or {}
            ts = self.clock()
            dispute: Dict[str, Any] = {
                "id": new_id("dp"),
                "object": "dispute",
                "amount": amount,
                "balance_transactions": [],
                "charge": charge["id"],
                "created": ts,
                "currency": charge["currency"],
                "enhanced_eligibility_types": [],
                "evidence": {**{k: None for k in _EVIDENCE_FIELDS}, "enhanced_evidence": {}},
                "evidence_details": {"due_by": ts + 7 * 86400, "enhanced_eligibility": {}, "has_evidence": False,
                                     "past_due": False, "submission_count": 0},
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": charge["payment_intent"],
                "payment_method_details": {
                    "card": {"brand": card.get("brand") or "visa", "case_type": "chargeback",
                             "network": card.get("brand") or "visa", "network_reason_code": "10.4"},
                    "type": "card",
                },
                "reason": str(p.get("reason") or "fraudulent"),
                "status": "needs_response",
            }
            dispute["balance_transactions"].append(self._dispute_transaction(
                dispute, -amount, 1500, "Chargeback withdrawal for %s" % charge["id"]))
            self.disputes[dispute["id"]] = dispute
            charge["disputed"] = True
            self._emit("charge.dispute.created", dispute, ctx)
            self._emit("charge.dispute.funds_withdrawn", dispute, ctx)
            return copy.deepcopy(dispute)

    def _dispute(self, dp_id: str) -> Dict[str, Any]:
        if dp_id not in self.disputes:
            raise errors.resource_missing("dispute", dp_id, "dispute")
        return self.disputes[dp_id]

    @staticmethod
    def _open_or_raise(dispute: Dict[str, Any]) -> None:
        if dispute["status"] in ("won", "lost", "warning_closed", "prevented"):
            raise errors.invalid_request(
                "This dispute is already closed (status `%s`)." % dispute["status"], "dispute")

    def retrieve_dispute(self, dp_id: str) -> Dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._dispute(dp_id))

    def list_disputes(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            items = [d for d in reversed(list(self.disputes.values()))
                     if ("charge" not in p or d["charge"] == p["charge"])
                     and ("payment_intent" not in p or d["payment_intent"] == p["payment_intent"])
                     and _created_filter(p.get("created"), d["created"])]
            return self.paginate(items, p, "/v1/disputes", "dispute")

    def update_dispute(self, dp_id: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        """Stage or submit evidence. Test mode as in Stripe: submitting ``uncategorized_text`` of
        ``winning_evidence`` wins the dispute, ``losing_evidence`` loses it."""
        with self.lock:
            dispute = self._dispute(dp_id)
            self._open_or_raise(dispute)
            before = copy.deepcopy(dispute)
            evidence = p.get("evidence") or {}
            if not isinstance(evidence, dict):
                raise errors.invalid_value("Invalid object", "evidence")
            for key, value in evidence.items():
                if key in _EVIDENCE_FIELDS:
                    dispute["evidence"][key] = value or None
            if "metadata" in p:
                dispute["metadata"] = _merge_metadata(dispute["metadata"], p["metadata"])
            if evidence:
                dispute["evidence_details"]["has_evidence"] = True
            if p.get("submit", True):
                dispute["evidence_details"]["submission_count"] += 1
                dispute["status"] = "under_review"
            previous = _diff(before, dispute)
            if previous:
                self._emit("charge.dispute.updated", dispute, ctx, previous)
            text = dispute["evidence"].get("uncategorized_text")
            if dispute["status"] == "under_review" and text in ("winning_evidence", "losing_evidence"):
                self._close_dispute(dispute, "won" if text == "winning_evidence" else "lost", ctx)
            return copy.deepcopy(dispute)

    def close_dispute(self, dp_id: str, ctx: Context) -> Dict[str, Any]:
        """Accept the dispute: it is lost, the funds stay with the cardholder."""
        with self.lock:
            dispute = self._dispute(dp_id)
            self._open_or_raise(dispute)
            self._close_dispute(dispute, "lost", ctx)
            return copy.deepcopy(dispute)

    def _close_dispute(self, dispute: Dict[str, Any], status: str, ctx: Context) -> None:
        before = copy.deepcopy(dispute)
        dispute["status"] = status
        self._emit("charge.dispute.closed", dispute, ctx, _diff(before, dispute))
        if status == "won":
            dispute["balance_transactions"].append(self._dispute_transaction(
                dispute, dispute["amount"], -1500, "Chargeback reversal for %s" % dispute["charge"]))
            self._emit("charge.dispute.funds_reinstated", dispute, ctx)

    # ----------------------------------------------------------------- refunds
    def create_refund(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            if p.get("charge"):
                charge = self.charges.get(p["charge"])
                if charge is None:
                    raise errors.resource_missing("charge", p["charge"], "charge")
            elif p.get("payment_intent"):
                charge = next((c for c in self.charges.values() if c["payment_intent"] == p["payment_intent"]
                               and c["status"] == "succeeded"), None)
                if charge is None:
                    raise errors.resource_missing("payment_intent", p["payment_intent"], "payment_intent")
            else:
                raise errors.param_error("One of the following params should be provided for this request: "
                                         "payment_intent or charge.", None, "parameter_missing")
            return self._refund(charge, p.get("amount"), p.get("metadata"), p.get("reason"), ctx, "amount")

    def _refund(self, charge: Dict[str, Any], amount: Any, metadata: Any, reason: Any, ctx: Context,
                param: str) -> Dict[str, Any]:
        """Refund part or all of a succeeded charge (charge.refunded, refund.created); the refund object."""
        if charge["status"] != "succeeded":
            raise errors.invalid_request("Charge %s has not been captured: nothing to refund." % charge["id"],
                                         "charge")
        if charge["disputed"]:
            raise errors.invalid_request("Charge %s has been charged back; cannot issue a refund."
                                         % charge["id"], "charge", "charge_disputed")
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = remaining if amount is None else amount
        if not isinstance(amount, int) or amount <= 0 or amount > remaining:
            raise errors.invalid_request(
                "Refund amount (%s) is greater than unrefunded amount on charge (%s)" % (amount, remaining),
                param, "amount_too_large" if isinstance(amount, int) and amount > 0 else None)
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn"),
            "charge": charge["id"],
            "created": self.clock(),
            "currency": charge["currency"],
            "metadata": _merge_metadata({}, metadata),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        before = copy.deepcopy(charge)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self._emit("charge.refunded", charge, ctx, _diff(before, charge))
        self._emit("refund.created", refund, ctx)
        return copy.deepcopy(refund)

    def retrieve_refund(self, re_id: str) -> Dict[str, Any]:
        with self.lock:
            if re_id not in self.refunds:
                raise errors.resource_missing("refund", re_id, "refund")
            return copy.deepcopy(self.refunds[re_id])

    # ------------------------------------------------------------ customer balance
    def _balance_txn(self, cust: Dict[str, Any], amount: int, currency: str, type_: str, ctx: Context, *,
                     invoice: Optional[str] = None, credit_note: Optional[str] = None,
                     description: Optional[str] = None, metadata: Any = None) -> Dict[str, Any]:
        """Move the customer's `balance` by `amount` (negative: a credit) and record it; customer.updated."""
        before = copy.deepcopy(cust)
        cust["balance"] += amount
        if cust.get("currency") is None:
            cust["currency"] = currency
        txn = {
            "id": new_id("cbtxn"),
            "object": "customer_balance_transaction",
            "amount": amount,
            "checkout_session": None,
            "created": self.clock(),
            "credit_note": credit_note,
            "currency": currency,
            "customer": cust["id"],
            "customer_account": None,
            "description": description,
            "ending_balance": cust["balance"],
            "invoice": invoice,
            "livemode": False,
            "metadata": _merge_metadata({}, metadata),
            "type": type_,
        }
        self.balance_transactions[txn["id"]] = txn
        self._emit("customer.updated", cust, ctx, _diff(before, cust))
        return txn

    def _apply_customer_balance(self, inv: Dict[str, Any], ctx: Context) -> None:
        """At finalization, as Stripe does: a credit balance pays the invoice first, a debit is added to it."""
        cust = self.customers.get(inv["customer"])
        balance = int(cust.get("balance") or 0) if cust else 0
        inv["starting_balance"] = balance
        inv["ending_balance"] = balance
        if not balance or cust.get("currency") not in (None, inv["currency"]):
            return
        total = sum(line["amount"] for line in inv["_frozen_lines"])
        used = -min(-balance, max(total, 0)) if balance < 0 else balance  # credit used (<0), or debit added
        if used:
            inv["ending_balance"] = balance - used
            self._balance_txn(cust, -used, inv["currency"], "applied_to_invoice", ctx, invoice=inv["id"])

    def _unapply_customer_balance(self, inv: Dict[str, Any], ctx: Context) -> None:
        """A voided invoice gives back the balance its finalization used."""
        if inv.get("ending_balance") is None:
            return
        used = inv["ending_balance"] - inv["starting_balance"]  # >0: credit the invoice took
        cust = self.customers.get(inv["customer"])
        if used and cust is not None and not cust.get("deleted"):
            self._balance_txn(cust, -used, inv["currency"], "unapplied_from_invoice", ctx, invoice=inv["id"])

    def create_balance_transaction(self, cid: str, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cust = self._customer(cid, "customer")
            amount, currency = p.get("amount"), p.get("currency")
            if amount is None:
                raise errors.missing_parameter("amount")
            if not currency:
                raise errors.missing_parameter("currency")
            if not isinstance(amount, int) or amount == 0:
                raise errors.invalid_value("The amount must be a non-zero integer.", "amount")
            if cust.get("currency") not in (None, str(currency).lower()):
                raise errors.invalid_request(
                    "The customer's balance is in %s; a transaction in %s cannot be added."
                    % (cust["currency"], currency), "currency")
            txn = self._balance_txn(cust, amount, str(currency).lower(), "adjustment", ctx,
                                    description=p.get("description"), metadata=p.get("metadata"))
            return copy.deepcopy(txn)

    def list_balance_transactions(self, cid: str, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            self._customer(cid, "customer")
            items = [t for t in reversed(list(self.balance_transactions.values())) if t["customer"] == cid
                     and ("invoice" not in p or t["invoice"] == p["invoice"])
                     and ("credit_note" not in p or t["credit_note"] == p["credit_note"])
                     and _created_filter(p.get("created"), t["created"])]
            return self.paginate(items, p, "/v1/customers/%s/balance_transactions" % cid,
                                 "customer_balance_transaction")

    def retrieve_balance_transaction(self, cid: str, txn_id: str) -> Dict[str, Any]:
        with self.lock:
            self._customer(cid, "customer")
            txn = self.balance_transactions.get(txn_id)
            if txn is None or txn["customer"] != cid:
                raise errors.resource_missing("customer_balance_transaction", txn_id, "transaction")
            return copy.deepcopy(txn)

    # ------------------------------------------------------------- credit notes
    _CREDIT_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")

    def _credit_note_lines(self, inv: Dict[str, Any], cn_id: str, lines: Any) -> List[Dict[str, Any]]:
        """Credit note line items from the `lines` parameter (invoice lines or custom lines)."""
        frozen = {line["id"]: line for line in inv.get("_frozen_lines") or []}
        credited: Dict[str, int] = {}
        for note in self.credit_notes.values():
            if note["invoice"] == inv["id"] and note["status"] == "issued":
                for line in note["lines"]["data"]:
                    if line.get("invoice_line_item"):
                        credited[line["invoice_line_item"]] = credited.get(line["invoice_line_item"], 0) \
                            + line["amount"]
        out = []
        for i, item in enumerate(lines or []):
            param = "lines[%d]" % i
            if not isinstance(item, dict):
                raise errors.invalid_value("Invalid object", param)
            kind = item.get("type")
            quantity = item.get("quantity", 1)
            if not isinstance(quantity, int) or quantity < 0:
                raise errors.invalid_value("Invalid integer: %s" % quantity, param + "[quantity]")
            base = {"id": new_id("cnli"), "object": "credit_note_line_item", "discount_amount": 0,
                    "discount_amounts": [], "livemode": False, "metadata": _merge_metadata({}, item.get("metadata")),
                    "pretax_credit_amounts": [], "tax_rates": [], "taxes": [], "type": kind}
            if kind == "invoice_line_item":
                line = frozen.get(item.get("invoice_line_item"))
                if line is None:
                    raise errors.invalid_request("Invoice line item %s is not on invoice %s."
                                                 % (item.get("invoice_line_item"), inv["id"]),
                                                 param + "[invoice_line_item]")
                unit = decimal.Decimal(line["pricing"]["unit_amount_decimal"] or 0)
                amount = item["amount"] if "amount" in item else int(
                    (unit * quantity).to_integral_value(decimal.ROUND_HALF_UP))
                left = line["amount"] - credited.get(line["id"], 0)
                if not isinstance(amount, int) or amount <= 0 or amount > left:
                    raise errors.invalid_request(
                        "The amount to credit on line %s (%s) is more than is left to credit on it (%s)."
                        % (line["id"], amount, left), param + "[amount]")
                credited[line["id"]] = credited.get(line["id"], 0) + amount
                base.update(amount=amount, description=line["description"], invoice_line_item=line["id"],
                            quantity=quantity, unit_amount=None, unit_amount_decimal=None)
            elif kind == "custom_line_item":
                if "unit_amount" not in item and "unit_amount_decimal" not in item:
                    raise errors.missing_parameter(param + "[unit_amount]")
                unit = decimal.Decimal(item.get("unit_amount", item.get("unit_amount_decimal")))
                amount = int((unit * quantity).to_integral_value(decimal.ROUND_HALF_UP))
                if not item.get("description"):
                    raise errors.missing_parameter(param + "[description]")
                base.update(amount=amount, description=item["description"], quantity=quantity,
                            unit_amount=int(unit) if unit == unit.to_integral_value() else None,
                            unit_amount_decimal=_decimal_string(unit))
            else:
                raise errors.invalid_value("Invalid %s[type]: must be one of custom_line_item or "
                                           "invoice_line_item" % param, param + "[type]")
            out.append(base)
        return out

    def create_credit_note(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        """Issue a credit note on an open (pre-payment) or paid (post-payment) invoice, as Stripe does."""
        with self.lock:
            if not p.get("invoice"):
                raise errors.missing_parameter("invoice")
            inv = self._invoice(p["invoice"], "invoice")
            if inv["status"] not in ("open", "paid"):
                raise errors.invalid_request(
                    "Credit notes can only be created for invoices that are open or paid; this invoice has "
                    "status `%s`." % inv["status"], "invoice", "invoice_not_editable")
            for unsupported in ("refunds", "shipping_cost"):
                if p.get(unsupported):
                    raise errors.invalid_value("The emulator does not support `%s` on credit notes."
                                               % unsupported, unsupported)
            if p.get("reason") is not None and p["reason"] not in self._CREDIT_REASONS:
                raise errors.invalid_value("Invalid reason: must be one of %s" % ", ".join(self._CREDIT_REASONS),
                                           "reason")
            cn_id = new_id("cn")
            lines = self._credit_note_lines(inv, cn_id, p.get("lines"))
            if "amount" in p:
                total = p["amount"]
                if not isinstance(total, int) or total <= 0:
                    raise errors.invalid_value("The credit note amount must be a positive integer.", "amount")
                if lines and sum(line["amount"] for line in lines) != total:
                    raise errors.invalid_request("The amount (%s) must equal the sum of the lines (%s)."
                                                 % (total, sum(line["amount"] for line in lines)), "amount")
            elif lines:
                total = sum(line["amount"] for line in lines)
            else:
                raise errors.param_error("One of `amount`, `lines`, or `shipping_cost` must be provided.",
                                         "amount", "parameter_missing")
            refund_amount = int(p.get("refund_amount") or 0)
            credit_amount = int(p.get("credit_amount") or 0)
            oob_amount = int(p.get("out_of_band_amount") or 0)
            if min(refund_amount, credit_amount, oob_amount) < 0:
                raise errors.invalid_value("Credit note amounts cannot be negative.", "amount")
            totals = self._totals(inv)
            if inv["status"] == "open":
                remaining = max(totals["amount_due"] - inv["amount_paid"], 0)
                if refund_amount or credit_amount or oob_amount:
                    raise errors.invalid_request(
                        "refund_amount, credit_amount and out_of_band_amount are only for paid invoices; a credit "
                        "note on an open invoice lowers what is due.", "refund_amount" if refund_amount else
                        "credit_amount" if credit_amount else "out_of_band_amount")
                if total > remaining:
                    raise errors.invalid_request(
                        "The credit note amount (%s) is more than the invoice's amount remaining (%s)."
                        % (total, remaining), "amount", "credit_note_amount_too_large")
                pre, post = total, 0
            else:
                creditable = totals["total"] - inv["pre_payment_credit_notes_amount"] \
                    - inv["post_payment_credit_notes_amount"]
                if total > creditable:
                    raise errors.invalid_request(
                        "The credit note amount (%s) is more than is left to credit on the invoice (%s)."
                        % (total, creditable), "amount", "credit_note_amount_too_large")
                if refund_amount + credit_amount + oob_amount != total:
                    raise errors.invalid_request(
                        "For a paid invoice, refund_amount, credit_amount and out_of_band_amount must add up to the "
                        "credit note amount (%s); they add up to %s."
                        % (total, refund_amount + credit_amount + oob_amount), "amount")
                pre, post = 0, total
            charge = self._paid_charge_of(inv["id"]) if refund_amount else None
            if refund_amount and charge is None:
                raise errors.invalid_request("Invoice %s was not paid by a charge: there is nothing to refund."
                                             % inv["id"], "refund_amount")
            before = self._render_invoice(inv)
            cust = self.customers[inv["customer"]]
            refunds = []
            if refund_amount:  # checked (and raised) before anything changes
                refund = self._refund(charge, refund_amount, {"credit_note": cn_id}, None, ctx, "refund_amount")
                refunds.append({"amount_refunded": refund_amount, "payment_record_refund": None,
                                "refund": refund["id"], "type": "refund"})
            txn = None
            if credit_amount:
                txn = self._balance_txn(cust, -credit_amount, inv["currency"], "credit_note", ctx,
                                        invoice=inv["id"], credit_note=cn_id)
            seq = 1 + sum(1 for n in self.credit_notes.values() if n["invoice"] == inv["id"])
            note = {
                "id": cn_id,
                "object": "credit_note",
                "amount": total,
                "amount_shipping": 0,
                "created": self.clock(),
                "currency": inv["currency"],
                "customer": inv["customer"],
                "customer_account": None,
                "customer_balance_transaction": txn["id"] if txn else None,
                "discount_amount": 0,
                "discount_amounts": [],
                "effective_at": p.get("effective_at"),
                "invoice": inv["id"],
                "lines": {"object": "list", "data": lines, "has_more": False,
                          "url": "/v1/credit_notes/%s/lines" % cn_id},
                "livemode": False,
                "memo": p.get("memo") or None,
                "metadata": _merge_metadata({}, p.get("metadata")),
                "number": "%s-CN-%02d" % (inv["number"], seq),
                "out_of_band_amount": oob_amount or None,
                "pdf": "%s/cn/%s/pdf" % (ctx.base_url.rstrip("/"), cn_id),
                "post_payment_amount": post,
                "pre_payment_amount": pre,
                "pretax_credit_amounts": [],
                "reason": p.get("reason"),
                "refunds": refunds,
                "shipping_cost": None,
                "status": "issued",
                "subtotal": total,
                "subtotal_excluding_tax": total,
                "total": total,
                "total_excluding_tax": total,
                "total_taxes": [],
                "type": "pre_payment" if pre else "post_payment",
                "voided_at": None,
            }
            self.credit_notes[cn_id] = note
            inv["pre_payment_credit_notes_amount"] += pre
            inv["post_payment_credit_notes_amount"] += post
            self._emit("credit_note.created", note, ctx)
            if pre and self._totals(inv)["amount_due"] - inv["amount_paid"] <= 0:
                self._credited_in_full(inv, ctx, before)
            else:
                after = self._render_invoice(inv)
                self._emit("invoice.updated", after, ctx, _diff(before, after))
            return copy.deepcopy(note)

    def _credited_in_full(self, inv: Dict[str, Any], ctx: Context, before: Dict[str, Any]) -> None:
        """An open invoice whose credit notes leave nothing to pay is paid (no charge)."""
        ts = self.clock()
        inv["status"] = "paid"
        inv["status_transitions"]["paid_at"] = ts
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        self._settle_invoice_payment(inv, "canceled", 0)
        after = self._render_invoice(inv)
        self._emit("invoice.updated", after, ctx, _diff(before, after))
        self._emit("invoice.paid", after, ctx)

    def _credit_note(self, cn_id: str) -> Dict[str, Any]:
        if cn_id not in self.credit_notes:
            raise errors.resource_missing("credit_note", cn_id, "id")
        return self.credit_notes[cn_id]

    def retrieve_credit_note(self, cn_id: str) -> Dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._credit_note(cn_id))

    def list_credit_notes(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            items = [n for n in reversed(list(self.credit_notes.values()))
                     if ("invoice" not in p or n["invoice"] == p["invoice"])
                     and ("customer" not in p or n["customer"] == p["customer"])
                     and _created_filter(p.get("created"), n["created"])]
            return self.paginate(items, p, "/v1/credit_notes", "credit_note")

    def list_credit_note_lines(self, cn_id: str, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            note = self._credit_note(cn_id)
            return self.paginate(note["lines"]["data"], p, "/v1/credit_notes/%s/lines" % cn_id,
                                 "credit_note_line_item")

    # ------------------------------------------------------- webhook endpoints
    def create_webhook_endpoint(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        """Register an endpoint (its `secret` is returned once, on create, as in Stripe).

        Deliveries still go to the control API's target (``/_emulator/webhooks``), signed with its secret,
        which is the secret handed out here.
        """
        with self.lock:
            url, events = p.get("url"), p.get("enabled_events")
            if not url:
                raise errors.missing_parameter("url")
            if not events:
                raise errors.missing_parameter("enabled_events")
            if not str(url).startswith(("http://", "https://")):
                raise errors.invalid_value("Invalid URL: %s" % url, "url")
            endpoint = {
                "id": new_id("we"),
                "object": "webhook_endpoint",
                "api_version": p.get("api_version") or None,
                "application": None,
                "created": self.clock(),
                "description": p.get("description") or None,
                "enabled_events": sorted(set(events)),
                "livemode": False,
                "metadata": _merge_metadata({}, p.get("metadata")),
                "status": "enabled",
                "url": url,
            }
            self.webhook_endpoints[endpoint["id"]] = endpoint
            secret = self.dispatcher.settings.secret if self.dispatcher is not None else None
            return dict(copy.deepcopy(endpoint), secret=secret or "whsec_" + secrets.token_hex(16))

    def _webhook_endpoint(self, we_id: str) -> Dict[str, Any]:
        if we_id not in self.webhook_endpoints:
            raise errors.resource_missing("webhook endpoint", we_id, "webhook_endpoint")
        return self.webhook_endpoints[we_id]

    def retrieve_webhook_endpoint(self, we_id: str) -> Dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._webhook_endpoint(we_id))

    def update_webhook_endpoint(self, we_id: str, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            endpoint = self._webhook_endpoint(we_id)
            if p.get("enabled_events"):
                endpoint["enabled_events"] = sorted(set(p["enabled_events"]))
            for key in ("url", "description"):
                if key in p:
                    endpoint[key] = p[key] or (endpoint[key] if key == "url" else None)
            if "disabled" in p:
                endpoint["status"] = "disabled" if p["disabled"] else "enabled"
            if "metadata" in p:
                endpoint["metadata"] = _merge_metadata(endpoint["metadata"], p["metadata"])
            return copy.deepcopy(endpoint)

    def delete_webhook_endpoint(self, we_id: str) -> Dict[str, Any]:
        with self.lock:
            self._webhook_endpoint(we_id)
            del self.webhook_endpoints[we_id]
            return {"id": we_id, "object": "webhook_endpoint", "deleted": True}

    def list_webhook_endpoints(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            return self.paginate(list(reversed(list(self.webhook_endpoints.values()))), p,
                                 "/v1/webhook_endpoints", "webhook endpoint")

    # ------------------------------------------ billing portal configurations
    def _default_portal_configuration(self) -> Dict[str, Any]:
        """The account's default portal configuration (what saving the Dashboard's portal settings makes)."""
        bpc_id = self._portal_configuration
        if bpc_id not in self.portal_configurations:
            ts = self.clock()
            self.portal_configurations[bpc_id] = {
                "id": bpc_id,
                "object": "billing_portal.configuration",
                "active": True,
                "application": None,
                "business_profile": {"headline": None, "privacy_policy_url": None, "terms_of_service_url": None},
                "created": ts,
                "default_return_url": None,
                "features": {
                    "customer_update": {"allowed_updates": ["email", "address"], "enabled": True},
                    "invoice_history": {"enabled": True},
                    "payment_method_update": {"enabled": True, "payment_method_configuration": None},
                    "subscription_cancel": {
                        "cancellation_reason": {"enabled": False, "feedback_options": None, "options": []},
                        "enabled": False, "mode": "at_period_end", "proration_behavior": "none"},
                    "subscription_update": {"billing_cycle_anchor": None, "default_allowed_updates": [],
                                            "enabled": False, "products": [], "proration_behavior": "none",
                                            "schedule_at_period_end": {"conditions": []},
                                            "trial_update_behavior": "end_trial"},
                },
                "is_default": True,
                "livemode": False,
                "login_page": {"enabled": False, "url": None},
                "metadata": {},
                "name": None,
                "updated": ts,
            }
        return self.portal_configurations[bpc_id]

    def _portal_config(self, bpc_id: str) -> Dict[str, Any]:
        self._default_portal_configuration()
        if bpc_id not in self.portal_configurations:
            raise errors.resource_missing("configuration", bpc_id, "configuration")
        return self.portal_configurations[bpc_id]

    def list_portal_configurations(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            self._default_portal_configuration()
            items = [c for c in reversed(list(self.portal_configurations.values()))
                     if ("is_default" not in p or c["is_default"] == p["is_default"])
                     and ("active" not in p or c["active"] == p["active"])]
            return self.paginate(items, p, "/v1/billing_portal/configurations", "configuration")

    def retrieve_portal_configuration(self, bpc_id: str) -> Dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._portal_config(bpc_id))

    def update_portal_configuration(self, bpc_id: str, p: Dict[str, Any]) -> Dict[str, Any]:
        """Settings the product checks: active, default_return_url, business_profile, the features' `enabled`."""
        with self.lock:
            config = self._portal_config(bpc_id)
            if "active" in p:
                config["active"] = bool(p["active"])
            if "default_return_url" in p:
                config["default_return_url"] = p["default_return_url"] or None
            for key, value in (p.get("business_profile") or {}).items():
                if key in config["business_profile"]:
                    config["business_profile"][key] = value or None
            for name, settings in (p.get("features") or {}).items():
                if name in config["features"] and isinstance(settings, dict) and "enabled" in settings:
                    config["features"][name]["enabled"] = bool(settings["enabled"])
            config["updated"] = self.clock()
            return copy.deepcopy(config)

    # ------------------------------------------------------ billing portal
    def create_portal_session(self, p: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        with self.lock:
            cid = p.get("customer")
            if not cid:
                raise errors.missing_parameter("customer")
            flow = None
            flow_data = p.get("flow_data")
            if flow_data:
                ftype = flow_data.get("type")
                valid = ("customer_update", "payment_method_update", "subscription_cancel",
                         "subscription_pause", "subscription_update", "subscription_update_confirm")
                if ftype not in valid:
                    raise errors.invalid_value(
                        "Invalid flow_data[type]: must be one of %s" % ", ".join(valid), "flow_data[type]")
                if ftype.startswith("subscription_"):
                    sub = (flow_data.get(ftype) or {}).get("subscription")
                    if not sub:
                        raise errors.missing_parameter("flow_data[%s][subscription]" % ftype)
                    raise errors.resource_missing("subscription", sub,
                                                  "flow_data[%s][subscription]" % ftype)
                after = flow_data.get("after_completion") or {"type": "portal_homepage"}
                atype = after.get("type")
                if atype not in ("hosted_confirmation", "portal_homepage", "redirect"):
                    raise errors.invalid_value(
                        "Invalid flow_data[after_completion][type]: must be one of hosted_confirmation, "
                        "portal_homepage, or redirect", "flow_data[after_completion][type]")
                if atype == "redirect" and not (after.get("redirect") or {}).get("return_url"):
                    raise errors.missing_parameter("flow_data[after_completion][redirect][return_url]")
                flow = {
                    "after_completion": {
                        "hosted_confirmation": (
                            {"custom_message": (after.get("hosted_confirmation") or {}).get("custom_message")}
                            if atype == "hosted_confirmation" else None),
                        "redirect": ({"return_url": after["redirect"]["return_url"]}
                                     if atype == "redirect" else None),
                        "type": atype,
                    },
                    "customer_update": None,
                    "subscription_cancel": None,
                    "subscription_pause": None,
                    "subscription_update": None,
                    "subscription_update_confirm": None,
                    "type": ftype,
                }
            self._customer(cid, "customer")
            bps_id = new_id("bps")
            session = {
                "id": bps_id,
                "object": "billing_portal.session",
                "configuration": self._portal_configuration,
                "created": self.clock(),
                "customer": cid,
                "customer_account": None,
                "flow": flow,
                "livemode": False,
                "locale": p.get("locale"),
                "on_behalf_of": p.get("on_behalf_of"),
                "return_url": p.get("return_url"),
                "url": "%s/portal/%s" % (ctx.base_url.rstrip("/"), bps_id),
            }
            self.portal_sessions[bps_id] = session
            return copy.deepcopy(session)

    def portal_session(self, bps_id: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            s = self.portal_sessions.get(bps_id)
            return copy.deepcopy(s) if s else None

    # ------------------------------------------------------------------ events
    def retrieve_event(self, evt_id: str) -> Dict[str, Any]:
        with self.lock:
            if evt_id not in self.events:
                raise errors.resource_missing("event", evt_id, "id")
            return copy.deepcopy(self.events[evt_id])

    def list_events(self, p: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            types: List[str] = []
            if p.get("type"):
                types.append(p["type"])
            types.extend(p.get("types") or [])

            def match(t: str) -> bool:
                if not types:
                    return True
                for pat in types:
                    if pat == t or (pat.endswith("*") and t.startswith(pat[:-1])):
                        return True
                return False

            items = [e for e in reversed(list(self.events.values()))
                     if match(e["type"]) and _created_filter(p.get("created"), e["created"])]
            return self.paginate(items, p, "/v1/events", "event")

    def all_events(self) -> List[Dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self.events.values()))

    def iter_objects(self) -> Iterable[Dict[str, Any]]:  # pragma: no cover - debugging aid
        with self.lock:
            for table in (self.customers, self.payment_methods, self.invoices, self.invoice_items):
                yield from copy.deepcopy(list(table.values()))
