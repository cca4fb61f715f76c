"""`POST /webhooks/stripe` answered straight from WSGI, in front of the Flask app.

Stripe's deliveries are machine-to-machine: no session, cookie, CSRF token, login, rate limit or HTML page
applies to them, and at month end they arrive by the thousand. Sent through Flask they would pay for all of
that machinery (request context, session, Flask-Login, Flask-Limiter, talisman's headers), which costs more
CPU than verifying, storing and queuing the event together (bench/webhooks.py measured it), so this
middleware answers them itself with the same service (`services/webhooks/intake.py`) and the contract's JSON shapes.
Every other request, and any other method on this path (405 from Flask), goes to the Flask app untouched;
the blueprint keeps the route, so the URL map and the access policy still describe it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

from flask import Flask
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_input_stream

from app.errors import error_body
from app.services.webhooks import intake

log = logging.getLogger(__name__)

PATH = "/webhooks/stripe"
#: Stripe's events are a few kB; anything near this is not one of them.
MAX_BODY = 1024 * 1024

_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
]


def answer(app: Flask, body: bytes, signature: str | None) -> tuple[int, dict]:
    """Receive one delivery; return (HTTP status, JSON body): 200 stored or duplicate, 400 not genuine."""
    try:
        received = intake.for_app(app).receive(body, signature)
    except intake.InvalidEvent as err:
        return 400, error_body(400, str(err), err.code)
    return 200, {"received": True, "duplicate": received.duplicate}


class StripeWebhookEndpoint:
    """WSGI middleware: serve POST /webhooks/stripe with `answer`, pass everything else to the wrapped app."""

    def __init__(self, app: Flask, wsgi_app: Callable) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.headers = list(_HEADERS)
        if app.config.get("PRODUCTION"):
            self.headers.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        status, payload = self.handle(environ)
        data = json.dumps(payload).encode()
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                       self.headers + [("Content-Length", str(len(data)))])
        return [data]

    def handle(self, environ: dict) -> tuple[int, dict]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return 400, error_body(400, "invalid Content-Length header")
        if length > MAX_BODY:
            return 413, error_body(413, f"a Stripe event is at most {MAX_BODY} bytes")
        try:
            # werkzeug's stream handles chunked bodies and a Content-Length that lies, both ways.
            body = get_input_stream(environ, max_content_length=MAX_BODY).read(MAX_BODY + 1)
        except RequestEntityTooLarge:
            return 413, error_body(413, f"a Stripe event is at most {MAX_BODY} bytes")
        except BadRequest:
            body = b""
        if environ.get("CONTENT_LENGTH") and len(body) != length:
            return 400, error_body(400, "the body ended before its Content-Length")
        try:
            return answer(self.app, body, environ.get("HTTP_STRIPE_SIGNATURE"))
        except Exception:  # noqa: BLE001 - Stripe retries any non-2xx answer (a stored one is then a duplicate)
            log.exception("could not receive a Stripe webhook")
            return 500, error_body(500, "Something went wrong on our side; Stripe will deliver it again.")

