"""Idempotency-Key handling, as Stripe's v1 API does it.

* Keys are scoped per API key and apply to POST requests.
* The first request with a key *claims* it.  While it executes, another
  request with the same key gets ``409 idempotency_error``
  (``idempotency_key_in_use``), which stripe-python retries.
* When execution finishes the status and body are saved; a later request
  with the same key and the same method, path and parameters gets the saved
  response replayed (header ``Idempotent-Replayed: true``).  Different
  method/path/parameters get ``400 idempotency_error``.
* Results that must not be saved (parameter validation failures, injected
  500s, rate limiting) release the claim, so a retry executes normally.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import errors


@dataclass
class SavedResponse:
    method: str
    path: str
    fingerprint: str
    status: int = 0
    body: Optional[Dict[str, Any]] = None
    headers: Dict[str, str] = field(default_factory=dict)
    done: bool = False
    created: float = field(default_factory=time.time)


def fingerprint(params: Dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class IdempotencyStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[Tuple[str, str], SavedResponse] = {}

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()

    def export(self) -> List[Dict[str, Any]]:
        """Finished entries as JSON-ready dicts (what ``--state-file`` saves); claims in flight are left out."""
        with self._lock:
            return [dict(asdict(e), api_key=a, key=k) for (a, k), e in self._entries.items() if e.done]

    def load(self, entries: List[Dict[str, Any]], max_age: float = 24 * 3600) -> None:
        """Replace the entries with exported ones younger than ``max_age`` s (Stripe forgets keys after 24 h)."""
        oldest = time.time() - max_age
        loaded = {}
        for item in entries:
            item = dict(item)
            api_key, key = item.pop("api_key"), item.pop("key")
            entry = SavedResponse(**item)
            if entry.done and entry.created >= oldest:
                loaded[(api_key, key)] = entry
        with self._lock:
            self._entries = loaded

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, api_key: str, key: str, method: str, path: str,
               params: Dict[str, Any]) -> Optional[SavedResponse]:
        """Return a saved response to replay, or None if the key is free.

        Raises StripeError 400 (mismatch) or 409 (in progress).
        """
        with self._lock:
            entry = self._entries.get((api_key, key))
            if entry is None:
                return None
            if entry.method != method or entry.path != path or entry.fingerprint != fingerprint(params):
                raise errors.idempotency_mismatch(key)
            if not entry.done:
                raise errors.idempotency_in_use(key)
            return entry

    def claim(self, api_key: str, key: str, method: str, path: str,
              params: Dict[str, Any]) -> Optional[SavedResponse]:
        """Atomically claim a free key.  Returns a finished entry to replay
        if another request finished meanwhile; raises like :meth:`lookup`."""
        with self._lock:
            entry = self._entries.get((api_key, key))
            if entry is not None:
                if entry.method != method or entry.path != path or entry.fingerprint != fingerprint(params):
                    raise errors.idempotency_mismatch(key)
                if not entry.done:
                    raise errors.idempotency_in_use(key)
                return entry
            self._entries[(api_key, key)] = SavedResponse(method, path, fingerprint(params))
            return None

    def save(self, api_key: str, key: str, status: int, body: Dict[str, Any],
             headers: Optional[Dict[str, str]] = None) -> None:
        with self._lock:
            entry = self._entries.get((api_key, key))
            if entry is None:
                return
            entry.status, entry.body, entry.headers, entry.done = status, body, dict(headers or {}), True

    def release(self, api_key: str, key: str) -> None:
        with self._lock:
            entry = self._entries.get((api_key, key))
            if entry is not None and not entry.done:
                del self._entries[(api_key, key)]
