"""The emulated ``/v1`` REST API: routing and the per-request pipeline.

Pipeline of one API request (:meth:`Api.handle`)::

    auth (401) -> rate limit fault (429) -> error fault (500, unsaved)
    -> decode bracket params -> route (404 Unrecognized request URL)
    -> Idempotency-Key: replay saved response / 400 mismatch / 409 in use
    -> validate params against stripe's TypedDicts (400, unsaved)
    -> claim key -> latency fault -> execute -> expand[] -> save result
    -> disconnect fault (response dropped after processing)

Everything is logged for ``GET /_emulator/requests``.
"""

from __future__ import annotations

import base64
import copy
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import errors, forms, params_contract
from .faults import Faults
from .idempotency import IdempotencyStore
from .store import API_VERSION, Context, Store, new_id


@dataclass
class ApiResult:
    status: int
    body: Dict[str, Any]
    headers: Dict[str, str] = field(default_factory=dict)
    disconnect: bool = False


Handler = Callable[["Api", Dict[str, str], Dict[str, Any], Context], Dict[str, Any]]


def _routes() -> List[Tuple[str, "re.Pattern[str]", str, Handler]]:
    table: List[Tuple[str, str, Handler]] = [
        # customers
        ("POST", "/v1/customers", lambda a, v, p, c: a.store.create_customer(p, c)),
        ("GET", "/v1/customers", lambda a, v, p, c: a.store.list_customers(p)),
        ("GET", "/v1/customers/{customer}", lambda a, v, p, c: a.store.retrieve_customer(v["customer"])),
        ("POST", "/v1/customers/{customer}",
         lambda a, v, p, c: a.store.update_customer(v["customer"], p, c)),
        ("DELETE", "/v1/customers/{customer}",
         lambda a, v, p, c: a.store.delete_customer(v["customer"], c)),
        ("GET", "/v1/customers/{customer}/payment_methods",
         lambda a, v, p, c: a.store.list_payment_methods(
             v["customer"], p, "/v1/customers/%s/payment_methods" % v["customer"])),
        ("GET", "/v1/customers/{customer}/payment_methods/{payment_method}",
         lambda a, v, p, c: a.store.retrieve_customer_payment_method(v["customer"], v["payment_method"])),
        # payment methods
        ("GET", "/v1/payment_methods", lambda a, v, p, c: a.store.list_payment_methods(
            p.get("customer"), p, "/v1/payment_methods")),
        ("GET", "/v1/payment_methods/{payment_method}",
         lambda a, v, p, c: a.store.retrieve_payment_method(v["payment_method"])),
        ("POST", "/v1/payment_methods/{payment_method}/attach",
         lambda a, v, p, c: a.store.attach_payment_method(v["payment_method"], p, c)),
        ("POST", "/v1/payment_methods/{payment_method}/detach",
         lambda a, v, p, c: a.store.detach_payment_method(v["payment_method"], c)),
        # invoices
        ("POST", "/v1/invoices", lambda a, v, p, c: a.store.create_invoice(p, c)),
        ("GET", "/v1/invoices", lambda a, v, p, c: a.store.list_invoices(p)),
        ("GET", "/v1/invoices/{invoice}", lambda a, v, p, c: a.store.render_invoice(v["invoice"])),
        ("POST", "/v1/invoices/{invoice}", lambda a, v, p, c: a.store.update_invoice(v["invoice"], p, c)),
        ("DELETE", "/v1/invoices/{invoice}", lambda a, v, p, c: a.store.delete_invoice(v["invoice"], c)),
        ("GET", "/v1/invoices/{invoice}/lines",
         lambda a, v, p, c: a.store.list_invoice_lines(v["invoice"], p)),
        ("POST", "/v1/invoices/{invoice}/finalize",
         lambda a, v, p, c: a.store.finalize_invoice(v["invoice"], p, c)),
        ("POST", "/v1/invoices/{invoice}/pay", lambda a, v, p, c: a.store.pay_invoice(v["invoice"], p, c)),
        ("POST", "/v1/invoices/{invoice}/void", lambda a, v, p, c: a.store.void_invoice(v["invoice"], c)),
        ("POST", "/v1/invoices/{invoice}/mark_uncollectible",
         lambda a, v, p, c: a.store.mark_uncollectible(v["invoice"], c)),
        # invoice items
        ("POST", "/v1/invoiceitems", lambda a, v, p, c: a.store.create_invoice_item(p, c)),
        ("GET", "/v1/invoiceitems", lambda a, v, p, c: a.store.list_invoice_items(p)),
        ("GET", "/v1/invoiceitems/{invoiceitem}",
         lambda a, v, p, c: a.store.retrieve_invoice_item(v["invoiceitem"])),
        ("POST", "/v1/invoiceitems/{invoiceitem}",
         lambda a, v, p, c: a.store.update_invoice_item(v["invoiceitem"], p, c)),
        ("DELETE", "/v1/invoiceitems/{invoiceitem}",
         lambda a, v, p, c: a.store.delete_invoice_item(v["invoiceitem"], c)),
        # billing portal
        ("POST", "/v1/billing_portal/sessions", lambda a, v, p, c: a.store.create_portal_session(p, c)),
        # events
        ("GET", "/v1/events", lambda a, v, p, c: a.store.list_events(p)),
        ("GET", "/v1/events/{id}", lambda a, v, p, c: a.store.retrieve_event(v["id"])),
        # charges (read only)
        ("GET", "/v1/charges", lambda a, v, p, c: a.store.list_charges(p)),
        ("GET", "/v1/charges/{charge}", lambda a, v, p, c: a.store.retrieve_charge(v["charge"])),
        # invoice payments (read only: made by paying invoices)
        ("GET", "/v1/invoice_payments", lambda a, v, p, c: a.store.list_invoice_payments(p)),
        ("GET", "/v1/invoice_payments/{invoice_payment}",
         lambda a, v, p, c: a.store.retrieve_invoice_payment(v["invoice_payment"])),
        # disputes (opened by POST /_emulator/invoices/<id>/dispute)
        ("GET", "/v1/disputes", lambda a, v, p, c: a.store.list_disputes(p)),
        ("GET", "/v1/disputes/{dispute}", lambda a, v, p, c: a.store.retrieve_dispute(v["dispute"])),
        ("POST", "/v1/disputes/{dispute}", lambda a, v, p, c: a.store.update_dispute(v["dispute"], p, c)),
        ("POST", "/v1/disputes/{dispute}/close", lambda a, v, p, c: a.store.close_dispute(v["dispute"], c)),
        # webhook endpoints and portal configurations (what `flask stripe setup-webhook` / `check` use)
        ("POST", "/v1/webhook_endpoints", lambda a, v, p, c: a.store.create_webhook_endpoint(p, c)),
        ("GET", "/v1/webhook_endpoints", lambda a, v, p, c: a.store.list_webhook_endpoints(p)),
        ("GET", "/v1/webhook_endpoints/{webhook_endpoint}",
         lambda a, v, p, c: a.store.retrieve_webhook_endpoint(v["webhook_endpoint"])),
        ("POST", "/v1/webhook_endpoints/{webhook_endpoint}",
         lambda a, v, p, c: a.store.update_webhook_endpoint(v["webhook_endpoint"], p)),
        ("DELETE", "/v1/webhook_endpoints/{webhook_endpoint}",
         lambda a, v, p, c: a.store.delete_webhook_endpoint(v["webhook_endpoint"])),
        ("GET", "/v1/billing_portal/configurations",
         lambda a, v, p, c: a.store.list_portal_configurations(p)),
        ("GET", "/v1/billing_portal/configurations/{configuration}",
         lambda a, v, p, c: a.store.retrieve_portal_configuration(v["configuration"])),
        ("POST", "/v1/billing_portal/configurations/{configuration}",
         lambda a, v, p, c: a.store.update_portal_configuration(v["configuration"], p)),
        # credit notes and the customer balance (issue 17)
        ("POST", "/v1/credit_notes", lambda a, v, p, c: a.store.create_credit_note(p, c)),
        ("GET", "/v1/credit_notes", lambda a, v, p, c: a.store.list_credit_notes(p)),
        ("GET", "/v1/credit_notes/{id}", lambda a, v, p, c: a.store.retrieve_credit_note(v["id"])),
        ("GET", "/v1/credit_notes/{credit_note}/lines",
         lambda a, v, p, c: a.store.list_credit_note_lines(v["credit_note"], p)),
        ("POST", "/v1/customers/{customer}/balance_transactions",
         lambda a, v, p, c: a.store.create_balance_transaction(v["customer"], p, c)),
        ("GET", "/v1/customers/{customer}/balance_transactions",
         lambda a, v, p, c: a.store.list_balance_transactions(v["customer"], p)),
        ("GET", "/v1/customers/{customer}/balance_transactions/{transaction}",
         lambda a, v, p, c: a.store.retrieve_balance_transaction(v["customer"], v["transaction"])),
        # refunds
        ("POST", "/v1/refunds", lambda a, v, p, c: a.store.create_refund(p, c)),
        ("GET", "/v1/refunds/{refund}", lambda a, v, p, c: a.store.retrieve_refund(v["refund"])),
    ]
    out = []
    for method, template, handler in table:
        out.append((method, params_contract._template_regex(template), template, handler))
    # literal segments first
    out.sort(key=lambda r: (r[2].count("{"), -len(r[2])))
    return out


ROUTES = _routes()

#: Templates of the calls the emulator implements, e.g. ("POST", "/v1/invoices").
IMPLEMENTED = sorted((m, t) for m, _, t, _ in ROUTES)


def match_route(method: str, path: str) -> Optional[Tuple[str, Handler, Dict[str, str]]]:
    for m, regex, template, handler in ROUTES:
        if m == method:
            mo = regex.match(path)
            if mo:
                return template, handler, mo.groupdict()
    return None


def api_key_from(headers: Any) -> str:
    """The API key of a request; raises the 401 StripeError."""
    auth = headers.get("Authorization") or ""
    key = ""
    if auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    elif auth.lower().startswith("basic "):
        try:
            key = base64.b64decode(auth[6:].strip()).decode("utf-8").split(":", 1)[0]
        except Exception:
            key = ""
    if not key:
        raise errors.authentication_missing()
    if not key.startswith("sk_"):
        raise errors.authentication_invalid(key)
    return key


# ---------------------------------------------------------------------------
# expand[]
# ---------------------------------------------------------------------------

#: Fields Stripe returns only when expanded (``expand[]=payments`` on an invoice), by object type.
_INCLUDABLE: Dict[Any, Tuple[str, ...]] = {"invoice": ("payments",)}

Include = Callable[[Dict[str, Any], str], Any]


def _expand(node: Any, parts: List[str], find: Callable[[str], Optional[Dict[str, Any]]],
            include: Optional[Include] = None) -> Any:
    if not parts or node is None:
        return node
    if isinstance(node, str):
        node = find(node) or node
        if isinstance(node, str):
            return node
    if not isinstance(node, dict):
        return node
    key, rest = parts[0], parts[1:]
    if key in _INCLUDABLE.get(node.get("object"), ()) and key not in node and include is not None:
        node[key] = include(node, key)  # Stripe omits these unless they are expanded
    if node.get("object") == "list" and key == "data":
        node["data"] = [_expand(item, rest, find, include) for item in node.get("data", [])]
        return node
    if key not in node:
        return node
    value = node[key]
    if not rest:
        if isinstance(value, str):
            node[key] = find(value) or value
        elif isinstance(value, list):
            node[key] = [(find(x) or x) if isinstance(x, str) else x for x in value]
        return node
    node[key] = _expand(value, rest, find, include)
    return node


def expand(obj: Dict[str, Any], paths: List[str], find: Callable[[str], Optional[Dict[str, Any]]],
           include: Optional[Include] = None) -> Dict[str, Any]:
    for path in paths or []:
        obj = _expand(obj, [p for p in str(path).split(".") if p], find, include)
    return obj


# ---------------------------------------------------------------------------
# Request pipeline
# ---------------------------------------------------------------------------

class Api:
    """Executes API requests against a :class:`Store`."""

    def __init__(self, store: Store, faults: Faults, idempotency: IdempotencyStore,
                 log_size: int = 20000):
        self.store = store
        self.faults = faults
        self.idempotency = idempotency
        self._log_lock = threading.Lock()
        self.request_log: Deque[Dict[str, Any]] = deque(maxlen=log_size)

    def reset_log(self) -> None:
        with self._log_lock:
            self.request_log.clear()

    def requests(self) -> List[Dict[str, Any]]:
        with self._log_lock:
            return copy.deepcopy(list(self.request_log))

    def handle(self, method: str, path: str, headers: Any, query_string: str, body: bytes,
               content_type: str, base_url: str) -> ApiResult:
        method = method.upper()
        request_id = new_id("req", 14)
        started = time.time()
        idem_key = headers.get("Idempotency-Key") if method == "POST" else None
        entry: Dict[str, Any] = {
            "id": request_id, "method": method, "path": path, "params": None,
            "idempotency_key": idem_key, "status": None, "time": started,
            "replayed": False, "fault": None, "disconnected": False,
            "stripe_version": headers.get("Stripe-Version"),
        }
        resp_headers = {"Request-Id": request_id, "Stripe-Version": headers.get("Stripe-Version") or API_VERSION}
        if idem_key:
            resp_headers["Idempotency-Key"] = idem_key
        delay = 0.0
        slept = False
        executed = False
        params: Dict[str, Any] = {}
        form_error: Optional[errors.StripeError] = None
        try:
            params = forms.parse_query(query_string)
            ctype = (content_type or "").split(";")[0].strip().lower()
            if method == "POST" and body and ctype not in ("", "application/x-www-form-urlencoded"):
                # Stripe's v1 API only understands form encoding.
                form_error = errors.invalid_value(
                    "Invalid request: unsupported Content-Type %s. If error persists and you need "
                    "assistance, please contact support@stripe.com." % ctype, None)
            elif method == "POST":
                params.update(forms.parse_body(body, "application/x-www-form-urlencoded"))
            entry["params"] = params
        except forms.FormError as exc:
            form_error = errors.invalid_value(str(exc), exc.param)
        except (ValueError, UnicodeDecodeError):
            form_error = errors.invalid_value("Invalid request body", "body")
        try:
            api_key = api_key_from(headers)
            if self.faults.check_rate_limit(method, path):
                entry["fault"] = "rate_limit"
                raise errors.rate_limited()
            delay = self.faults.latency(method, path)
            if self.faults.should_error(method, path):
                entry["fault"] = "error_500"
                raise errors.api_error()
            if form_error is not None:
                raise form_error
            matched = match_route(method, path)
            if matched is None:
                raise errors.unrecognized_url(method, path)
            template, handler, path_vars = matched

            if idem_key:
                saved = self.idempotency.lookup(api_key, idem_key, method, path, params)
                if saved is not None:
                    return self._replay(saved, entry, resp_headers, delay)

            try:
                coerced = params_contract.validate(method, path, params)
            except params_contract.ParamError as exc:
                code = ("parameter_unknown" if exc.message.startswith("Received unknown")
                        else "parameter_missing" if exc.message.startswith("Missing required")
                        else None)
                raise errors.StripeError(400, "invalid_request_error", exc.message, param=exc.param,
                                         code=code, saved=False)
            expand_paths = coerced.pop("expand", None) or []
            if isinstance(expand_paths, str):
                expand_paths = [expand_paths]

            if idem_key:
                saved = self.idempotency.claim(api_key, idem_key, method, path, params)
                if saved is not None:
                    return self._replay(saved, entry, resp_headers, delay)
            if delay:
                slept = True
                time.sleep(delay)
            executed = True
            ctx = Context(request_id=request_id, idempotency_key=idem_key, base_url=base_url)
            try:
                result = handler(self, path_vars, coerced, ctx)
                if expand_paths:
                    result = expand(result, expand_paths, self.store.find, self._include)
                status, out = 200, result
            except errors.StripeError as exc:
                if not exc.saved:
                    if idem_key:
                        self.idempotency.release(api_key, idem_key)
                    raise
                status, out = exc.status, exc.body(request_id)
                resp_headers.update(exc.headers)
            except Exception:
                if idem_key:
                    self.idempotency.release(api_key, idem_key)
                raise
            if idem_key:
                self.idempotency.save(api_key, idem_key, status, out,
                                      {"Original-Request": request_id})
            result_obj = ApiResult(status, out, resp_headers)
        except errors.StripeError as exc:
            resp_headers.update(exc.headers)
            result_obj = ApiResult(exc.status, exc.body(request_id), resp_headers)
        except Exception as exc:  # bug in the emulator: still answer like Stripe
            import traceback

            traceback.print_exc()
            result_obj = ApiResult(500, errors.api_error("Emulator internal error: %s" % exc).body(request_id),
                                   resp_headers)
        if delay and not slept:
            time.sleep(delay)
        if executed and self.faults.should_disconnect(method, path):
            result_obj.disconnect = True
            entry["fault"] = "disconnect"
            entry["disconnected"] = True
        self._log(entry, result_obj.status, started)
        return result_obj

    def _include(self, node: Dict[str, Any], key: str) -> Any:
        if node.get("object") == "invoice" and key == "payments":
            return self.store.invoice_payments_of(node["id"])
        return None

    def _replay(self, saved: Any, entry: Dict[str, Any], headers: Dict[str, str], delay: float) -> ApiResult:
        if delay:
            time.sleep(delay)
        h = dict(headers)
        h.update(saved.headers)
        h["Idempotent-Replayed"] = "true"
        entry["replayed"] = True
        result = ApiResult(saved.status, copy.deepcopy(saved.body), h)
        if self.faults.should_disconnect(entry["method"], entry["path"]):
            result.disconnect = True
            entry["fault"] = "disconnect"
            entry["disconnected"] = True
        self._log(entry, saved.status, entry["time"])
        return result

    def _log(self, entry: Dict[str, Any], status: int, started: float) -> None:
        entry["status"] = status
        entry["duration_ms"] = round((time.time() - started) * 1000, 2)
        with self._log_lock:
            self.request_log.append(entry)
