"""ServicePro entitlements: a reference client for the services that place calls and send SMS.

Copy this file, or import it; it needs only the standard library and `requests`.

    from servicepro_entitlements import EntitlementsClient, verify_signature

    client = EntitlementsClient("https://billing.example.com", token="sp_svc_…", failure_mode="open")
    if client.can_call(tenant_id):
        ...

    # In your webhook handler (the raw body, before any JSON parsing):
    client.handle_push(request_body, request.headers.get("ServicePro-Signature"), secret="whsec_…")

What it does:
- Reads `GET /api/entitlements?tenant_id=ID` with your service token and caches each answer. An answer younger
  than `max_age` seconds is used as is; an older one is revalidated with If-None-Match (the server answers 304, no
  body, while nothing changed), so polling is cheap.
- Applies signed push events (`entitlements.updated`): a suspension or a restoration reaches the cache within
  seconds, without waiting for `max_age`. Events are checked with HMAC-SHA256 in constant time and refused when
  their timestamp is outside `tolerance` seconds (a replayed capture). An event older than what the cache holds
  (by `updated_at`) is ignored, so a late retry never undoes a newer state.
- When ServicePro cannot answer (network error, timeout, 5xx, 429, a token refused), it falls back in this order:
  1. the last answer it has, if younger than `max_stale` seconds (default 15 minutes) — a suspended tenant stays
     suspended and a paying one keeps service through a short outage;
  2. otherwise the `failure_mode`:
     - "open" (default): allow calls and SMS. A billing outage never takes your service down for paying tenants;
       the cost is that a tenant suspended during the outage (and never seen by this process) is served until
       ServicePro answers again. Recommended for telephony (emergency calls must not depend on billing).
     - "closed": refuse calls and SMS. No unpaid usage, at the cost of an outage for everyone while ServicePro is
       unreachable. Consider it for high-cost outbound traffic (premium destinations, bulk SMS).
  Every fallback is logged at WARNING and visible as `Entitlements.source`.
- An unknown tenant (404) is never served: `get` raises UnknownTenant and `can_call`/`can_send_sms` say False.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping, Sequence

import requests

__all__ = ["Entitlements", "EntitlementsClient", "SignatureError", "UnknownTenant", "verify_signature",
           "SIGNATURE_HEADER"]

log = logging.getLogger("servicepro_entitlements")

SIGNATURE_HEADER = "ServicePro-Signature"
FAILURE_MODES = ("open", "closed")


class SignatureError(ValueError):
    """A push event whose signature is missing, malformed, wrong or too old."""


class UnknownTenant(LookupError):
    """ServicePro has no such tenant (never serve it)."""


@dataclass(frozen=True)
class Entitlements:
    tenant_id: int
    telephony: bool
    sms_outbound: bool
    admin_access: str
    dunning_stage: str
    updated_at: str
    # Where this answer came from: "fresh" (200), "revalidated" (304), "cache" (read less than max_age ago),
    # "push" (a push event, not re-read since), "stale" (server unavailable, last answer used), "fail_open" /
    # "fail_closed" (no usable answer).
    source: str = "fresh"

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], source: str) -> "Entitlements":
        return cls(tenant_id=int(doc["tenant_id"]), telephony=bool(doc["telephony"]),
                   sms_outbound=bool(doc["sms_outbound"]), admin_access=str(doc["admin_access"]),
                   dunning_stage=str(doc["dunning_stage"]), updated_at=str(doc["updated_at"]), source=source)


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def verify_signature(payload: bytes, header: str | None, secret: str | Sequence[str], *, tolerance: int = 300,
                     now: float | None = None) -> dict[str, Any]:
    """Check a push's ServicePro-Signature over the raw body; return the event, or raise SignatureError.

    `secret` may be several secrets (while rotating: the old endpoint and the new one both deliver).
    """
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp, candidates = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)  # several when the sender signs with an old and a new secret
    if timestamp is None or not timestamp.isdigit() or not candidates:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    keys = [secret] if isinstance(secret, str) else list(secret)
    expected = [hmac.new(k.encode(), timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest() for k in keys]
    if not any(hmac.compare_digest(e, c) for e in expected for c in candidates):
        raise SignatureError("signature does not match (wrong secret, or the body was changed)")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance:
        raise SignatureError(f"timestamp outside the tolerance ({int(age)} s old, {tolerance} s allowed)")
    try:
        return json.loads(payload)
    except ValueError:
        raise SignatureError("body is not JSON") from None


@dataclass
class _Entry:
    value: Entitlements
    etag: str | None
    checked_at: float  # monotonic: when the server last confirmed (or pushed) this answer


class EntitlementsClient:
    """Cached, revalidated, push-updated entitlements for one service (thread-safe)."""

    def __init__(self, base_url: str, token: str, *, failure_mode: str = "open", max_age: float = 30.0,
                 max_stale: float = 900.0, timeout: float = 2.0, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}")
        self.base_url = base_url.rstrip("/")
        self.failure_mode = failure_mode
        self.max_age, self.max_stale, self.timeout = max_age, max_stale, timeout
        self.http = session or requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.clock = clock
        self._cache: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self.last_status: int | None = None  # HTTP status of the last request (None: no answer)

    # -- reading -------------------------------------------------------------------------------------------

    def get(self, tenant_id: int) -> Entitlements:
        """The tenant's entitlements: cached, revalidated, or the fallback described in the module docstring."""
        now = self.clock()
        with self._lock:
            entry = self._cache.get(tenant_id)
        if entry is not None and now - entry.checked_at < self.max_age:
            return entry.value if entry.value.source == "push" else replace(entry.value, source="cache")
        headers = {"If-None-Match": entry.etag} if entry is not None and entry.etag else {}
        try:
            resp = self.http.get(f"{self.base_url}/api/entitlements", params={"tenant_id": tenant_id},
                                 headers=headers, timeout=self.timeout)
            self.last_status = resp.status_code
        except requests.RequestException as err:
            self.last_status = None
            return self._fallback(tenant_id, entry, f"{type(err).__name__}: {err}")
        if resp.status_code == 304 and entry is not None:
            with self._lock:
                entry.checked_at = now
            return replace(entry.value, source="revalidated")
        if resp.status_code == 200:
            value = Entitlements.from_document(resp.json(), "fresh")
            self._store(value, resp.headers.get("ETag"), now)
            return value
        if resp.status_code == 404:
            with self._lock:
                self._cache.pop(tenant_id, None)
            raise UnknownTenant(f"ServicePro has no tenant {tenant_id}")
        return self._fallback(tenant_id, entry, f"HTTP {resp.status_code}: {resp.text[:200]}")

    def can_call(self, tenant_id: int) -> bool:
        """Whether the tenant may place calls now."""
        try:
            return self.get(tenant_id).telephony
        except UnknownTenant:
            return False

    def can_send_sms(self, tenant_id: int) -> bool:
        """Whether the tenant may send outbound SMS now."""
        try:
            return self.get(tenant_id).sms_outbound
        except UnknownTenant:
            return False

    def _fallback(self, tenant_id: int, entry: _Entry | None, why: str) -> Entitlements:
        if entry is not None and self.clock() - entry.checked_at < self.max_stale:
            log.warning("ServicePro unavailable (%s): using tenant %s's last answer", why, tenant_id)
            return replace(entry.value, source="stale")
        allow = self.failure_mode == "open"
        log.warning("ServicePro unavailable (%s) and no recent answer for tenant %s: failing %s", why, tenant_id,
                    self.failure_mode)
        return Entitlements(tenant_id=tenant_id, telephony=allow, sms_outbound=allow,
                            admin_access="full" if allow else "billing_only", dunning_stage="unknown",
                            updated_at="", source=f"fail_{self.failure_mode}")

    def _store(self, value: Entitlements, etag: str | None, now: float) -> bool:
        """Keep a newer answer (by updated_at); an older one (a late retry) is ignored. Return whether kept."""
        with self._lock:
            current = self._cache.get(value.tenant_id)
            if current is not None and current.value.updated_at and value.updated_at \
                    and _instant(value.updated_at) < _instant(current.value.updated_at):
                return False
            self._cache[value.tenant_id] = _Entry(value, etag, now)
            return True

    # -- push ----------------------------------------------------------------------------------------------

    def handle_push(self, payload: bytes, signature_header: str | None, secret: str | Sequence[str], *,
                    tolerance: int = 300) -> dict[str, Any]:
        """Verify a pushed event and apply it; return the event (raise SignatureError → answer 400).

        Answer 2xx only after this returns: ServicePro retries anything else, with the same event id.
        """
        event = verify_signature(payload, signature_header, secret, tolerance=tolerance)
        if event.get("type") == "entitlements.updated":
            # No ETag comes with a push: the next revalidation fetches the new document once.
            self._store(Entitlements.from_document(event["data"], "push"), None, self.clock())
        return event

    # -- bulk ----------------------------------------------------------------------------------------------

    def iter_all(self, changed_since: str | None = None, limit: int = 1000) -> Iterator[Entitlements]:
        """Every tenant's entitlements (or those changed since an ISO instant), page by page; cached as read."""
        params: dict[str, Any] = {"limit": limit}
        if changed_since:
            params["changed_since"] = changed_since
        while True:
            resp = self.http.get(f"{self.base_url}/api/entitlements", params=params, timeout=self.timeout)
            self.last_status = resp.status_code
            resp.raise_for_status()
            page = resp.json()
            for doc in page["data"]:
                value = Entitlements.from_document(doc, "fresh")
                self._store(value, None, self.clock())
                yield value
            if not page["has_more"]:
                return
            params = {"limit": limit, "cursor": page["next_cursor"]}
