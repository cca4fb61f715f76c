"""Signed, asynchronous, retried webhook delivery.

Events are queued in creation order and delivered by one background thread
per endpoint URL as ``POST <url>`` with a JSON body and a genuine
``Stripe-Signature: t=<unix>,v1=<hex hmac-sha256("<t>.<payload>", secret)>``
header, which ``stripe.Webhook.construct_event(payload, header, secret)``
verifies.  A delivery that gets a non-2xx answer or a connection error is
retried with exponential backoff (``backoff_initial`` doubling up to
``backoff_max``) until ``max_attempts`` attempts were made; later events of
the same endpoint wait, so delivery order equals creation order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Optional

__all__ = ["sign", "signature_header", "WebhookSettings", "WebhookDispatcher"]

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"

# Deliveries go straight to the target, never through an environment proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<payload>"`` keyed with ``secret``."""
    signed = ("%d.%s" % (timestamp, payload)).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(payload: str, secret: str, timestamp: Optional[int] = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return "t=%d,v1=%s" % (ts, sign(payload, secret, ts))


def encode_event(event: Dict[str, Any]) -> str:
    """Stripe sends pretty-printed JSON; so do we."""
    return json.dumps(event, indent=2)


@dataclass
class WebhookSettings:
    url: Optional[str] = None
    secret: str = ""
    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    timeout: float = 5.0

    def public(self) -> Dict[str, Any]:
        return {
            "url": self.url,
            "secret": self.secret,
            "max_attempts": self.max_attempts,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
            "timeout": self.timeout,
        }


@dataclass
class _Delivery:
    event_id: str
    payload: str
    url: str
    secret: str
    generation: int
    attempts: int = 0


@dataclass
class _Endpoint:
    url: str
    queue: Deque[_Delivery] = field(default_factory=deque)
    busy: bool = False
    thread: Optional[threading.Thread] = None


class WebhookDispatcher:
    """Queues events and delivers them from background threads.

    ``on_done(event_id)`` is called after an event was delivered or given up
    (the store uses it to keep ``pending_webhooks`` current).
    """

    def __init__(self, settings: WebhookSettings, on_done: Optional[Callable[[str], None]] = None):
        self.settings = settings
        self.on_done = on_done
        self._cond = threading.Condition()
        self._endpoints: Dict[str, _Endpoint] = {}
        self._generation = 0
        self._stopped = False
        self.stats = {"delivered": 0, "failed": 0, "attempts": 0, "retries": 0}
        self.log: Deque[Dict[str, Any]] = deque(maxlen=1000)

    # -- configuration ---------------------------------------------------
    def configure(self, **kw: Any) -> None:
        with self._cond:
            for k, v in kw.items():
                if v is None and k != "url":
                    continue
                setattr(self.settings, k, v)

    def reset(self) -> None:
        """Drop queued deliveries and zero the stats (target is kept)."""
        with self._cond:
            self._generation += 1
            for ep in self._endpoints.values():
                ep.queue.clear()
            self.stats = {"delivered": 0, "failed": 0, "attempts": 0, "retries": 0}
            self.log.clear()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- queueing --------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self.settings.url)

    def enqueue(self, event: Dict[str, Any]) -> bool:
        """Queue ``event`` for the current target; False when none is set."""
        with self._cond:
            url, secret = self.settings.url, self.settings.secret
            if not url:
                return False
            ep = self._endpoints.get(url)
            if ep is None:
                ep = self._endpoints[url] = _Endpoint(url)
            ep.queue.append(_Delivery(event["id"], encode_event(event), url, secret, self._generation))
            if ep.thread is None or not ep.thread.is_alive():
                ep.thread = threading.Thread(
                    target=self._worker, args=(ep,), name="webhooks:%s" % url, daemon=True
                )
                ep.thread.start()
            self._cond.notify_all()
            return True

    def pending(self) -> int:
        with self._cond:
            return sum(len(ep.queue) + (1 if ep.busy else 0) for ep in self._endpoints.values())

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if not any(ep.queue or ep.busy for ep in self._endpoints.values()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    def snapshot(self) -> Dict[str, Any]:
        with self._cond:
            data = dict(self.settings.public())
            data.update(self.stats)
            data["pending"] = sum(
                len(ep.queue) + (1 if ep.busy else 0) for ep in self._endpoints.values()
            )
            data["recent_deliveries"] = list(self.log)[-50:]
            return data

    # -- delivery ----------------------------------------------------------
    def _worker(self, ep: _Endpoint) -> None:
        while True:
            with self._cond:
                while not ep.queue and not self._stopped:
                    self._cond.wait(5.0)
                    if not ep.queue:
                        ep.thread = None
                        return
                if self._stopped:
                    return
                item = ep.queue[0]
                ep.busy = True
            ok = self._deliver_with_retries(item)
            with self._cond:
                if ep.queue and ep.queue[0] is item:
                    ep.queue.popleft()
                ep.busy = False
                if item.generation == self._generation:
                    self.stats["delivered" if ok else "failed"] += 1
                self._cond.notify_all()
            if self.on_done and item.generation == self._generation:
                try:
                    self.on_done(item.event_id)
                except Exception:  # pragma: no cover - defensive
                    pass

    def _deliver_with_retries(self, item: _Delivery) -> bool:
        while True:
            with self._cond:
                if item.generation != self._generation or self._stopped:
                    return False
                max_attempts = max(1, int(self.settings.max_attempts))
                timeout = float(self.settings.timeout)
                initial, cap = float(self.settings.backoff_initial), float(self.settings.backoff_max)
            item.attempts += 1
            status, error = self._post(item, timeout)
            ok = status is not None and 200 <= status < 300
            with self._cond:
                self.stats["attempts"] += 1
                if item.attempts > 1:
                    self.stats["retries"] += 1
                self.log.append({
                    "event": item.event_id, "url": item.url, "attempt": item.attempts,
                    "status": status, "error": error, "ok": ok, "time": time.time(),
                })
            if ok:
                return True
            if item.attempts >= max_attempts:
                return False
            delay = min(initial * (2 ** (item.attempts - 1)), cap)
            with self._cond:
                # Wake early on reset/stop.
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    if item.generation != self._generation or self._stopped:
                        return False
                    self._cond.wait(end - time.monotonic())

    @staticmethod
    def _post(item: _Delivery, timeout: float):
        body = item.payload.encode("utf-8")
        req = urllib.request.Request(
            item.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": USER_AGENT,
                "Stripe-Signature": signature_header(item.payload, item.secret),
                "Cache-Control": "no-cache",
            },
        )
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                resp.read()
                return resp.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except Exception as exc:  # connection refused, timeout, reset...
            return None, "%s: %s" % (type(exc).__name__, exc)
