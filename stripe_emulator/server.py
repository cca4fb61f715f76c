"""HTTP server of the Stripe emulator (Flask app served by werkzeug, threaded).

URL map:

``/v1/...``                      the emulated Stripe API (see :mod:`api`)
``/portal/<bps_id>``             billing portal page (GET) and card choice
                                 (POST ``/portal/<bps_id>/payment_method``)
``/i/<in_id>``, ``/i/<id>/pdf``  hosted invoice page and PDF
``/_emulator/...``               control API (JSON or form bodies); every route but
                                 ``/_emulator/health`` needs the header
                                 ``X-Emulator-Token: <control token>``:

    POST /_emulator/reset                       forget all state (and the state file's)
    GET|POST /_emulator/webhooks                 delivery target and stats
    POST /_emulator/webhooks/flush               wait for an empty queue
    GET|POST|DELETE /_emulator/faults            fault injection
    GET|DELETE /_emulator/requests               request log
    GET /_emulator/charges                       successful charges
    GET /_emulator/events                        all events, oldest first
    POST /_emulator/customers/<id>/payment_method  what the portal does
    GET /_emulator/health                        liveness
"""

from __future__ import annotations

import argparse
import datetime
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from flask import Flask, Response, redirect, render_template, request
from werkzeug.serving import WSGIRequestHandler, make_server

from . import (CONTROL_TOKEN_HEADER, DEFAULT_API_KEY, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_WEBHOOK_SECRET, cards,
               errors, forms, statefile)
from .api import Api
from .faults import FaultError, Faults
from .idempotency import IdempotencyStore
from .store import API_VERSION, Context, Store
from .webhooks import WebhookDispatcher, WebhookSettings

_DISCONNECT = "stripe_emulator.disconnect"

ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx",
                "vnd", "vuv", "xaf", "xof", "xpf"}


@dataclass
class EmulatorConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: Optional[str] = None  # base for portal/hosted URLs; default: request host
    webhook_url: Optional[str] = None
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_max_attempts: int = 5
    webhook_backoff_initial: float = 0.5
    webhook_backoff_max: float = 8.0
    webhook_timeout: float = 5.0
    verbose: bool = False
    control_token: Optional[str] = None  # None: a random one, printed at start-up
    allow_remote: bool = False  # listen on a non-loopback address (the control API still needs the token)
    state_file: Optional[str] = None  # keep the account in this file across restarts (statefile.py)


class Emulator:
    """All components of one emulator instance."""

    def __init__(self, config: Optional[EmulatorConfig] = None):
        self.config = config or EmulatorConfig()
        self.control_token = self.config.control_token or secrets.token_urlsafe(24)
        self.dispatcher = WebhookDispatcher(self._webhook_settings())
        self.store = Store(self.dispatcher)
        self.dispatcher.on_done = self._webhook_done
        self.faults = Faults()
        self.idempotency = IdempotencyStore()
        self.api = Api(self.store, self.faults, self.idempotency)
        self.saver: Optional[statefile.StateSaver] = None
        if self.config.state_file:
            statefile.load(self.config.state_file, self.store, self.idempotency)
            self.saver = statefile.StateSaver(self.config.state_file, self.store, self.idempotency)
            self.store.redeliver_pending()

    def _webhook_done(self, event_id: str) -> None:
        self.store.webhook_done(event_id)
        self.changed()

    def changed(self) -> None:
        """The account may have changed: have the state file saved soon (no-op without one)."""
        if self.saver is not None:
            self.saver.changed()

    def close(self) -> None:
        """Stop webhook delivery and save the state file one last time."""
        self.dispatcher.stop()
        if self.saver is not None:
            self.saver.close()

    def _webhook_settings(self) -> WebhookSettings:
        c = self.config
        return WebhookSettings(url=c.webhook_url or None, secret=c.webhook_secret,
                               max_attempts=c.webhook_max_attempts, backoff_initial=c.webhook_backoff_initial,
                               backoff_max=c.webhook_backoff_max, timeout=c.webhook_timeout)

    def reset(self, clear_webhooks: bool = False) -> None:
        with self.store.lock:
            self.dispatcher.reset()
            if clear_webhooks:
                self.dispatcher.configure(**{k: v for k, v in self._webhook_settings().public().items()})
            self.store.reset()
            self.idempotency.reset()
            self.faults.reset()
            self.api.reset_log()
        if self.saver is not None:
            self.saver.save()  # a reset is meant to stick: the next start must not bring the old account back

    def base_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return request.host_url.rstrip("/")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _json(data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> Response:
    resp = Response(json.dumps(data, indent=2) + "\n", status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _control_params() -> Dict[str, Any]:
    """Control endpoints accept JSON, form bodies or query strings."""
    params = forms.parse_query(request.query_string.decode("latin-1"))
    params.update(forms.parse_body(request.get_data(), request.content_type or ""))
    return params


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on") if value is not None else False


def money(amount: Optional[int], currency: str) -> str:
    amount = amount or 0
    cur = (currency or "usd").lower()
    if cur in ZERO_DECIMAL:
        return "%s %d" % (cur.upper(), amount)
    sign = "-" if amount < 0 else ""
    return "%s%s %d.%02d" % (sign, cur.upper(), abs(amount) // 100, abs(amount) % 100)


def _pdf(lines: list) -> bytes:
    """A minimal one-page PDF with the given text lines."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text = ["BT", "/F1 12 Tf", "50 790 Td", "16 TL"]
    for line in lines:
        text.append("(%s) Tj T*" % esc(str(line).encode("latin-1", "replace").decode("latin-1")))
    text.append("ET")
    stream = "\n".join(text).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


class DropConnectionMiddleware:
    """Closes the connection without a response when a view set
    ``environ["stripe_emulator.disconnect"]`` (simulated lost response)."""

    def __init__(self, app: Any):
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> Any:
        captured: Dict[str, Any] = {}

        def capture(status: str, headers: Any, exc_info: Any = None) -> Any:
            captured["args"] = (status, headers, exc_info)
            return lambda data: None

        body = self.app(environ, capture)
        if environ.get(_DISCONNECT):
            if hasattr(body, "close"):
                body.close()
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                raise ConnectionAbortedError("stripe_emulator: simulated lost response")
        status, headers, exc_info = captured["args"]
        if exc_info:
            start_response(status, headers, exc_info)
        else:
            start_response(status, headers)
        return body


# ---------------------------------------------------------------------------
# app
# ---------------------------------------------------------------------------

def create_app(emulator: Optional[Emulator] = None) -> Flask:
    """Flask app for ``emulator`` (a fresh one by default)."""
    emu = emulator or Emulator()
    app = Flask(__name__)
    app.extensions["stripe_emulator"] = emu

    # ---------------------------------------------------------------- API
    @app.route("/v1/<path:subpath>", methods=["GET", "POST", "DELETE"])
    def api_v1(subpath: str) -> Response:
        result = emu.api.handle(
            request.method, request.path, request.headers, request.query_string.decode("latin-1"),
            request.get_data(), request.content_type or "", emu.base_url(),
        )
        if result.disconnect:
            request.environ[_DISCONNECT] = True
        return _json(result.body, result.status, result.headers)

    @app.route("/v1", methods=["GET", "POST", "DELETE"])
    @app.route("/v2/<path:subpath>", methods=["GET", "POST", "DELETE"])
    def api_unknown(subpath: str = "") -> Response:
        err = errors.unrecognized_url(request.method, request.path)
        return _json(err.body(), err.status)

    @app.after_request
    def note_change(response: Response) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            emu.changed()
        return response

    # ------------------------------------------------------------ control
    @app.before_request
    def require_control_token() -> Optional[Response]:
        # Any page in the developer's browser can send simple requests to localhost; a custom header needs a
        # CORS preflight, which this server never grants, so only holders of the token reach the control API.
        if not request.path.startswith("/_emulator/") or request.path == "/_emulator/health":
            return None
        given = request.headers.get(CONTROL_TOKEN_HEADER)
        if not given:
            return _json({"error": {"type": "invalid_request_error", "message":
                                    "The control API needs the header %s." % CONTROL_TOKEN_HEADER}}, 401)
        if not hmac.compare_digest(given.encode(), emu.control_token.encode()):
            return _json({"error": {"type": "invalid_request_error", "message":
                                    "Wrong %s." % CONTROL_TOKEN_HEADER}}, 403)
        return None

    @app.get("/")
    def index() -> Response:
        return _json({
            "emulator": "stripe_emulator", "api_version": API_VERSION,
            "api_key_example": DEFAULT_API_KEY, "docs": "see stripe_emulator/server.py",
        })

    @app.get("/_emulator/health")
    def health() -> Response:
        return _json({"ok": True, "api_version": API_VERSION})

    @app.post("/_emulator/reset")
    def reset() -> Response:
        p = _control_params()
        emu.reset(clear_webhooks=_truthy(p.get("clear_webhooks")) or p.get("webhooks") in ("clear", "reset"))
        return _json({"ok": True})

    @app.route("/_emulator/webhooks", methods=["GET", "POST"])
    def webhooks() -> Response:
        if request.method == "POST":
            p = _control_params()
            kw: Dict[str, Any] = {}
            try:
                if "url" in p:
                    kw["url"] = p["url"] or None
                if "secret" in p:
                    kw["secret"] = p["secret"] or DEFAULT_WEBHOOK_SECRET
                for key, kind in (("max_attempts", int), ("backoff_initial", float),
                                  ("backoff_max", float), ("timeout", float)):
                    if key in p and p[key] not in (None, ""):
                        kw[key] = kind(p[key])
            except (TypeError, ValueError) as exc:
                return _json({"error": {"type": "invalid_request_error", "message": str(exc)}}, 400)
            unknown = set(p) - {"url", "secret", "max_attempts", "backoff_initial", "backoff_max", "timeout"}
            if unknown:
                return _json({"error": {"type": "invalid_request_error",
                                        "message": "Unknown webhook setting: %s" % sorted(unknown)[0]}}, 400)
            emu.dispatcher.configure(**kw)
        return _json(emu.dispatcher.snapshot())

    @app.post("/_emulator/webhooks/flush")
    def webhooks_flush() -> Response:
        p = _control_params()
        timeout = float(p.get("timeout") or 10)
        ok = emu.dispatcher.flush(timeout)
        snap = emu.dispatcher.snapshot()
        snap["flushed"] = ok
        return _json(snap, 200 if ok else 504)

    @app.route("/_emulator/faults", methods=["GET", "POST", "DELETE"])
    def faults() -> Response:
        if request.method == "DELETE":
            emu.faults.reset()
        elif request.method == "POST":
            try:
                emu.faults.configure(_control_params())
            except FaultError as exc:
                return _json({"error": {"type": "invalid_request_error", "message": str(exc)}}, 400)
        return _json(emu.faults.snapshot())

    @app.route("/_emulator/requests", methods=["GET", "DELETE"])
    def requests_log() -> Response:
        if request.method == "DELETE":
            emu.api.reset_log()
            return _json({"ok": True})
        entries = emu.api.requests()
        path_contains = request.args.get("path_contains")
        if path_contains:
            entries = [e for e in entries if path_contains in e["path"]]
        method = request.args.get("method")
        if method:
            entries = [e for e in entries if e["method"] == method.upper()]
        return _json(entries)

    @app.get("/_emulator/charges")
    def charges() -> Response:
        return _json(emu.store.charge_summaries(include_failed=_truthy(request.args.get("include_failed"))))

    @app.get("/_emulator/events")
    def events() -> Response:
        evts = emu.store.all_events()
        if request.args.get("type"):
            evts = [e for e in evts if e["type"] == request.args["type"]]
        return _json(evts)

    @app.post("/_emulator/customers/<cid>/payment_method")
    def control_set_pm(cid: str) -> Response:
        p = _control_params()
        pm = p.get("payment_method")
        if not pm:
            err = errors.missing_parameter("payment_method")
            return _json(err.body(), err.status)
        try:
            out = emu.store.set_default_payment_method(cid, pm, Context(base_url=emu.base_url()))
        except errors.StripeError as exc:
            return _json(exc.body(), exc.status)
        return _json(out)

    @app.post("/_emulator/invoices/<inv_id>/dispute")
    def control_dispute(inv_id: str) -> Response:
        try:  # `amount`, `reason` optional; close it with POST /v1/disputes/<id> (winning/losing_evidence)
            out = emu.store.open_dispute(inv_id, _control_params(), Context(base_url=emu.base_url()))
        except errors.StripeError as exc:
            return _json(exc.body(), exc.status)
        return _json(out)

    # ------------------------------------------------------ billing portal
    def _portal_page(session: Dict[str, Any], error: Optional[str] = None,
                     done_message: Optional[str] = None, status: int = 200) -> Response:
        with emu.store.lock:
            cust = emu.store.customers.get(session["customer"]) or {}
            default_id = (cust.get("invoice_settings") or {}).get("default_payment_method")
            default_pm = emu.store.payment_methods.get(default_id) if default_id else None
        return_url = session.get("return_url")
        html = render_template(
            "portal.html", session=session, customer=cust, default_pm=default_pm,
            cards=cards.PORTAL_CARDS, error=error, done_message=done_message,
            action="/portal/%s/payment_method" % session["id"],
            return_url=return_url, return_host=urlsplit(return_url).netloc if return_url else "",
        )
        return Response(html, status=status, mimetype="text/html")

    @app.get("/portal/<bps_id>")
    def portal(bps_id: str) -> Response:
        session = emu.store.portal_session(bps_id)
        if session is None:
            return Response("<h1>Portal session not found</h1>", 404, mimetype="text/html")
        return _portal_page(session)

    @app.post("/portal/<bps_id>/payment_method")
    def portal_choose(bps_id: str) -> Response:
        session = emu.store.portal_session(bps_id)
        if session is None:
            return Response("<h1>Portal session not found</h1>", 404, mimetype="text/html")
        pm = request.form.get("payment_method", "")
        if pm not in cards.TEST_CARDS:
            return _portal_page(session, error="Unknown test card: %s" % pm, status=400)
        try:
            emu.store.set_default_payment_method(session["customer"], pm, Context(base_url=emu.base_url()))
        except errors.StripeError as exc:
            return _portal_page(session, error=exc.message, status=exc.status)
        flow = session.get("flow") or {}
        after = flow.get("after_completion") or {}
        if after.get("type") == "redirect" and after.get("redirect"):
            return redirect(after["redirect"]["return_url"], code=303)
        if after.get("type") == "hosted_confirmation":
            msg = (after.get("hosted_confirmation") or {}).get("custom_message") or "Your payment method was updated."
            return _portal_page(session, done_message=msg)
        if session.get("return_url"):
            return redirect(session["return_url"], code=303)
        return _portal_page(session, done_message="Your payment method was updated.")

    # ----------------------------------------------------- hosted invoice
    def _invoice_or_404(inv_id: str) -> Optional[Dict[str, Any]]:
        try:
            inv = emu.store.render_invoice(inv_id)
        except errors.StripeError:
            return None
        if inv["status"] == "draft":
            return None  # drafts have no hosted page
        return inv

    @app.get("/i/<inv_id>")
    def hosted_invoice(inv_id: str) -> Response:
        inv = _invoice_or_404(inv_id)
        if inv is None:
            return Response("<h1>Invoice not found</h1>", 404, mimetype="text/html")
        lines = emu.store.list_invoice_lines(inv_id, {"limit": 100})["data"]
        msg = request.args.get("message")
        html = render_template(
            "hosted_invoice.html", invoice=inv, lines=lines,
            money=lambda a: money(a, inv["currency"]),
            due_date=datetime.datetime.fromtimestamp(inv["due_date"], datetime.timezone.utc).date().isoformat()
            if inv.get("due_date") else None,
            cards=[c for c in cards.PORTAL_CARDS if c.behaviour != "attach_decline"],
            pay_action="/i/%s/pay" % inv_id, pdf_url="/i/%s/pdf" % inv_id,
            message=msg, is_error=_truthy(request.args.get("error")),
        )
        return Response(html, mimetype="text/html")

    @app.post("/i/<inv_id>/pay")
    def hosted_invoice_pay(inv_id: str) -> Response:
        inv = _invoice_or_404(inv_id)
        if inv is None:
            return Response("<h1>Invoice not found</h1>", 404, mimetype="text/html")
        pm = request.form.get("payment_method", "")
        if pm not in cards.TEST_CARDS:
            return redirect("/i/%s?error=1&message=Unknown+test+card" % inv_id, code=303)
        try:
            emu.store.pay_invoice(inv_id, {"payment_method": pm}, Context(base_url=emu.base_url()))
        except errors.StripeError as exc:
            from urllib.parse import quote_plus

            return redirect("/i/%s?error=1&message=%s" % (inv_id, quote_plus(exc.message)), code=303)
        return redirect("/i/%s?message=Payment+successful" % inv_id, code=303)

    @app.get("/i/<inv_id>/pdf")
    def hosted_invoice_pdf(inv_id: str) -> Response:
        inv = _invoice_or_404(inv_id)
        if inv is None:
            return Response("Invoice not found", 404, mimetype="text/plain")
        lines = emu.store.list_invoice_lines(inv_id, {"limit": 100})["data"]
        text = ["Invoice %s" % (inv["number"] or inv["id"]), "Status: %s" % inv["status"],
                "Customer: %s" % (inv.get("customer_email") or inv["customer"]), ""]
        text += ["%s  x%s  %s" % (line.get("description") or "Item", line["quantity"],
                                  money(line["amount"], inv["currency"])) for line in lines]
        text += ["", "Total: %s" % money(inv["total"], inv["currency"]),
                 "Amount due: %s" % money(inv["amount_remaining"], inv["currency"])]
        resp = Response(_pdf(text), mimetype="application/pdf")
        resp.headers["Content-Disposition"] = 'inline; filename="%s.pdf"' % (inv["number"] or inv["id"])
        return resp

    app.wsgi_app = DropConnectionMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


# ---------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------

class _RequestHandler(WSGIRequestHandler):
    verbose = False

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        if self.verbose:
            super().log_request(code, size)

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        pass


def build_server(config: EmulatorConfig):
    """(werkzeug server, Emulator); ``config.port`` 0 picks a free port."""
    emu = Emulator(config)
    app = create_app(emu)
    handler = type("RequestHandler", (_RequestHandler,), {"verbose": config.verbose})
    server = make_server(config.host, config.port, app, threaded=True, request_handler=handler)
    return server, emu


def parse_args(argv: Optional[list] = None) -> EmulatorConfig:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m stripe_emulator",
                                description="Local emulator of the Stripe API subset used for billing.")
    p.add_argument("--host", default=env("STRIPE_EMULATOR_HOST", DEFAULT_HOST))
    p.add_argument("--port", type=int, default=int(env("STRIPE_EMULATOR_PORT", DEFAULT_PORT)),
                   help="0 picks a free port (printed on stdout)")
    p.add_argument("--public-url", default=env("STRIPE_EMULATOR_PUBLIC_URL"),
                   help="base URL used in portal/hosted invoice links (default: the request's host)")
    p.add_argument("--webhook-url", default=env("STRIPE_EMULATOR_WEBHOOK_URL"))
    p.add_argument("--webhook-secret", default=env("STRIPE_EMULATOR_WEBHOOK_SECRET", DEFAULT_WEBHOOK_SECRET))
    p.add_argument("--webhook-max-attempts", type=int, default=5)
    p.add_argument("--webhook-backoff", type=float, default=0.5, help="first retry delay in seconds")
    p.add_argument("--webhook-backoff-max", type=float, default=8.0)
    p.add_argument("--webhook-timeout", type=float, default=5.0)
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    p.add_argument("--control-token", default=env("STRIPE_EMULATOR_CONTROL_TOKEN"),
                   help="secret for the /_emulator/* control API, sent as header X-Emulator-Token "
                        "(default: $STRIPE_EMULATOR_CONTROL_TOKEN, else a random one printed at start-up)")
    p.add_argument("--state-file", default=env("STRIPE_EMULATOR_STATE_FILE") or None,
                   help="keep the account in this JSON file: loaded at start, saved every few seconds after "
                        "changes and at shutdown (default: $STRIPE_EMULATOR_STATE_FILE, else memory only)")
    p.add_argument("--allow-remote", action="store_true",
                   default=_truthy(env("STRIPE_EMULATOR_ALLOW_REMOTE")),
                   help="allow a --host that is not a loopback address (default: refuse)")
    a = p.parse_args(argv)
    if not a.allow_remote and not is_loopback(a.host):
        p.exit(2, "%s: refusing to listen on %s: the emulator is for development and tests; use 127.0.0.1, "
                  "or pass --allow-remote to expose it\n" % (p.prog, a.host))
    return EmulatorConfig(
        host=a.host, port=a.port, public_url=a.public_url, webhook_url=a.webhook_url,
        webhook_secret=a.webhook_secret, webhook_max_attempts=a.webhook_max_attempts,
        webhook_backoff_initial=a.webhook_backoff, webhook_backoff_max=a.webhook_backoff_max,
        webhook_timeout=a.webhook_timeout, verbose=a.verbose, control_token=a.control_token or None,
        allow_remote=a.allow_remote, state_file=a.state_file,
    )


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def main(argv: Optional[list] = None) -> int:
    config = parse_args(argv)
    from . import params_contract

    params_contract.routes()  # build the contract index before accepting requests
    try:
        server, emu = build_server(config)
    except OSError as exc:  # port taken, or a state file that can be neither read nor moved aside
        print("stripe_emulator: cannot start: %s" % exc, file=sys.stderr, flush=True)
        return 1
    host = config.host if ":" not in config.host else "[%s]" % config.host
    print("stripe_emulator listening on http://%s:%d" % (host, server.server_port), flush=True)
    if not config.control_token:
        print("stripe_emulator control API token (header %s): %s" % (CONTROL_TOKEN_HEADER, emu.control_token),
              flush=True)

    def _stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        emu.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
