"""In-memory Stripe account: objects, business rules and events.

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
                          self.portal_sessions, self.events, self.charges):
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
                "business_name": p.get("business_name") or None,
                "created": self.clock(),
                "currency": None,
                "customer_account": None,
                "default_source": None,
                "delinquent": False,
                "description": p.get("description"),
                "discount": None,
                "email": p.get("email"),
                "individual_name": p.get("individual_name") or None,
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
                      "next_invoice_sequence", "tax_exempt", "business_name", "individual_name")
            for key in simple:
                if key in p:
                    cust[key] = p[key] if p[key] != "" else None
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
            return amount, quantity, str(unit.normalize()), None
        if "unit_amount_decimal" in p:
            unit = decimal.Decimal(p["unit_amount_decimal"])
            return int((unit * quantity).to_integral_value(decimal.ROUND_HALF_UP)), quantity, str(unit), None
        price_data = p.get("price_data")
        if isinstance(price_data, dict):
            if "unit_amount" in price_data:
                unit = decimal.Decimal(price_data["unit_amount"])
            elif "unit_amount_decimal" in price_data:
                unit = decimal.Decimal(price_data["unit_amount_decimal"])
            else:
                raise errors.missing_parameter("price_data[unit_amount]")
            return (int((unit * quantity).to_integral_value(decimal.ROUND_HALF_UP)), quantity,
                    str(unit), price_data.get("currency"))
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
                "pricing": {"price_details": None, "type": "price_details", "unit_amount_decimal": unit},
                "proration": False,
                "proration_details": {"credited_items": None},
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
                "taxes": [],
            })
        return lines

    def _totals(self, inv: Dict[str, Any]) -> Dict[str, int]:
        if inv.get("_frozen_lines") is not None:
            lines = inv["_frozen_lines"]
        else:
            lines = self._lines(inv["id"])
        subtotal = sum(line["amount"] for line in lines)
        amount_due = max(subtotal, 0)
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
            "total_count": len(lines),
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
                "status_details": None,
                "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                                       "paid_at": None, "voided_at": None},
                "test_clock": None,
                "threshold_reason": None,
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
        inv["amount_paid"] = amount
        if out_of_band:
            inv["amount_paid_off_stripe"] = amount
        inv["status_transitions"]["paid_at"] = ts
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        rendered = self._render_invoice(inv)
        self._emit("invoice.paid", rendered, ctx)
        if not out_of_band:
            self._emit("invoice.payment_succeeded", rendered, ctx)

    def _finalize(self, inv: Dict[str, Any], ctx: Context, auto_advance: Optional[bool] = None) -> None:
        ts = self.clock()
        inv["_frozen_lines"] = self._lines(inv["id"])
        totals = self._totals(inv)
        inv["status"] = "open"
        if not inv["number"]:
            self._invoice_seq += 1
            inv["number"] = "EMU-%04d" % self._invoice_seq
        inv["status_transitions"]["finalized_at"] = ts
        inv["effective_at"] = inv["effective_at"] or ts
        inv["hosted_invoice_url"] = "%s/i/%s" % (ctx.base_url.rstrip("/"), inv["id"])
        inv["invoice_pdf"] = "%s/i/%s/pdf" % (ctx.base_url.rstrip("/"), inv["id"])
        inv["ending_balance"] = 0
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
            amount = self._totals(inv)["amount_due"]
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
            "outcome": {
                "network_status": "approved_by_network" if ok else "declined_by_network",
                "reason": None if ok else failure[1],
                "risk_level": "normal",
                "seller_message": "Payment complete." if ok else "The bank did not return any further details with this decline.",
                "type": "authorized" if ok else "issuer_declined",
            },
            "paid": ok,
            "payment_intent": None,
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
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "failed",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.charges[charge["id"]] = charge
        self._charge_invoice[charge["id"]] = inv["id"]
        return charge

    def void_invoice(self, inv_id: str, ctx: Context) -> Dict[str, Any]:
        with self.lock:
            inv = self._invoice(inv_id)
            if inv["status"] not in ("open", "uncollectible"):
                raise errors.invalid_request(
                    "You can only void invoices with status `open` or `uncollectible`; this invoice has "
                    "status `%s`." % inv["status"], "invoice", "invoice_not_editable")
            inv["status"] = "void"
            inv["status_transitions"]["voided_at"] = self.clock()
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
                     and _created_filter(p.get("created"), c["created"])]
            return self.paginate(items, p, "/v1/charges", "charge")

    def charge_summaries(self, include_failed: bool = False) -> List[Dict[str, Any]]:
        """For ``GET /_emulator/charges``: oldest first."""
        with self.lock:
            return [
                {"id": c["id"], "invoice": self._charge_invoice.get(c["id"]), "customer": c["customer"],
                 "amount": c["amount"], "currency": c["currency"], "payment_method": c["payment_method"],
                 "status": c["status"], "created": c["created"]}
                for c in self.charges.values() if include_failed or c["status"] == "succeeded"
            ]

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
