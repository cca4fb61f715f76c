"""Fixtures for the Stripe emulator tests.

One real ``python -m stripe_emulator`` subprocess per test session
(:class:`stripe_emulator.testing.EmulatorProcess`), reset before every test.
Most tests talk to it through the real ``stripe`` package.
"""

from __future__ import annotations

import http.server
import os
import sys
import threading
from collections import deque
from typing import Any, Dict, List, Optional

import pytest
import requests
import stripe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from stripe_emulator import CONTROL_TOKEN_HEADER  # noqa: E402
from stripe_emulator.testing import EmulatorProcess  # noqa: E402


@pytest.fixture(scope="session")
def emulator_process():
    with EmulatorProcess() as emu:
        yield emu


@pytest.fixture
def emu(emulator_process):
    """The running emulator, with all state forgotten."""
    emulator_process.reset(clear_webhooks=True)
    yield emulator_process


@pytest.fixture(autouse=True)
def fast_stripe_retries(fast_stripe_retries):
    """stripe-python sleeps >= 0.5 s between retries; keep the suite fast (tests/conftest.py's, always on here)."""
    return fast_stripe_retries


@pytest.fixture
def client(emu) -> stripe.StripeClient:
    """stripe.StripeClient without automatic retries."""
    return emu.stripe_client()


@pytest.fixture
def retrying_client(emu) -> stripe.StripeClient:
    """stripe.StripeClient with max_network_retries=3 (auto Idempotency-Key)."""
    return emu.stripe_client(max_network_retries=3)


class Raw:
    """Plain HTTP access to the emulated API (no stripe package)."""

    def __init__(self, emu: EmulatorProcess):
        self.emu = emu
        self.session = requests.Session()
        self.session.trust_env = False

    def __call__(self, method: str, path: str, data: Any = None, key: Optional[str] = "default",
                 idempotency_key: Optional[str] = None, headers: Optional[Dict[str, str]] = None,
                 **kw: Any) -> requests.Response:
        h = dict(headers or {})
        if key == "default":
            key = self.emu.api_key
        if key:
            h["Authorization"] = "Bearer %s" % key
        if idempotency_key:
            h["Idempotency-Key"] = idempotency_key
        if path.startswith("/_emulator/"):
            h.setdefault(CONTROL_TOKEN_HEADER, self.emu.control_token)
        if method.upper() == "GET":
            return self.session.request(method, self.emu.url + path, params=data, headers=h, **kw)
        return self.session.request(method, self.emu.url + path, data=data, headers=h, **kw)


@pytest.fixture
def raw(emu) -> Raw:
    return Raw(emu)


@pytest.fixture
def customer_with_card(client):
    """(customer, payment_method) factory: customer whose default pm comes from ``token``."""

    def make(token: str = "pm_card_visa", **params: Any):
        cus = client.v1.customers.create(params={"email": "payer@example.com", **params})
        pm = client.v1.payment_methods.attach(token, params={"customer": cus.id})
        cus = client.v1.customers.update(
            cus.id, params={"invoice_settings": {"default_payment_method": pm.id}})
        return cus, pm

    return make


@pytest.fixture
def open_invoice(client):
    """Factory: a finalized invoice of ``amount`` for ``customer_id``."""

    def make(customer_id: str, amount: int = 2500, **create: Any):
        inv = client.v1.invoices.create(params={"customer": customer_id, "currency": "usd", **create})
        client.v1.invoice_items.create(params={
            "customer": customer_id, "invoice": inv.id, "amount": amount, "currency": "usd",
            "description": "Usage",
        })
        return client.v1.invoices.finalize_invoice(inv.id)

    return make


# ---------------------------------------------------------------------------
# Local webhook receiver
# ---------------------------------------------------------------------------

class WebhookReceiver:
    """A tiny threaded HTTP server recording deliveries.

    ``statuses`` is a queue of status codes to answer with (default 200).
    """

    def __init__(self) -> None:
        self.received: List[Dict[str, Any]] = []
        self.statuses: deque = deque()
        self.default_status = 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.statuses.popleft() if receiver.statuses else receiver.default_status
                    receiver.received.append({
                        "path": self.path, "headers": dict(self.headers), "body": body, "status": status,
                    })
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/webhooks/stripe" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver():
    r = WebhookReceiver()
    yield r
    r.close()
