"""Fault injection for the emulated API (``/_emulator/faults``).

Settings (all optional, JSON or form body):

``error_rate``        0..1 probability of a 500 ``api_error`` *before* the
                      request is processed (nothing saved under the
                      Idempotency-Key, so a retry with the same key executes).
``error_next``        deterministic: the next N API requests get that 500.
``latency_ms``        added to every API request.
``rate_limit_per_s``  more than this many API requests within one second
                      get 429 ``rate_limit`` (0/None disables).
``disconnect_rate``   0..1 probability that a request IS processed (and its
                      idempotent result saved) but the connection is closed
                      without any response: a lost response.
``disconnect_next``   deterministic: the next N API requests are dropped.
``path_contains``     only requests whose path contains this string are
                      affected by the faults above (e.g. ``/pay``).
``methods``           only these HTTP methods (e.g. ``["POST"]``).
``seed``              seed of the random generator (reproducible runs).

Counters: ``errors_500``, ``rate_limited_429``, ``disconnects``, ``delayed``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Optional

_FIELDS = {
    "error_rate": float,
    "error_next": int,
    "latency_ms": float,
    "rate_limit_per_s": float,
    "disconnect_rate": float,
    "disconnect_next": int,
    "path_contains": str,
    "methods": list,
    "seed": int,
}


class FaultError(ValueError):
    pass


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._window: Deque[float] = deque()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.settings: Dict[str, Any] = {
                "error_rate": 0.0,
                "error_next": 0,
                "latency_ms": 0.0,
                "rate_limit_per_s": 0.0,
                "disconnect_rate": 0.0,
                "disconnect_next": 0,
                "path_contains": None,
                "methods": None,
                "seed": None,
            }
            self.counters = {"errors_500": 0, "rate_limited_429": 0, "disconnects": 0, "delayed": 0}
            self._window.clear()

    def configure(self, values: Dict[str, Any]) -> None:
        """Update the given settings (others unchanged); raises FaultError."""
        parsed: Dict[str, Any] = {}
        for key, raw in values.items():
            if key not in _FIELDS:
                raise FaultError("Unknown fault setting: %s" % key)
            if raw in (None, ""):
                parsed[key] = None if key in ("path_contains", "methods", "seed") else 0
                continue
            kind = _FIELDS[key]
            try:
                if kind is list:
                    value = raw if isinstance(raw, list) else str(raw).split(",")
                    value = [str(m).strip().upper() for m in value if str(m).strip()]
                else:
                    value = kind(raw)
            except (TypeError, ValueError):
                raise FaultError("Invalid value for %s: %r" % (key, raw))
            if key.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise FaultError("%s must be between 0 and 1" % key)
            if kind in (int, float) and key != "seed" and value < 0:
                raise FaultError("%s must not be negative" % key)
            parsed[key] = value
        with self._lock:
            self.settings.update(parsed)
            if parsed.get("seed") is not None:
                self._rng.seed(parsed["seed"])

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            out = dict(self.settings)
            out["counters"] = dict(self.counters)
            out.update(self.counters)
            return out

    # -- decisions (one call per API request) -----------------------------
    def _applies(self, method: str, path: str) -> bool:
        s = self.settings
        if s["path_contains"] and s["path_contains"] not in path:
            return False
        if s["methods"] and method.upper() not in s["methods"]:
            return False
        return True

    def check_rate_limit(self, method: str, path: str) -> bool:
        """True when this request must be rejected with 429."""
        with self._lock:
            limit = self.settings["rate_limit_per_s"]
            if not limit or not self._applies(method, path):
                return False
            now = time.monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= limit:
                self.counters["rate_limited_429"] += 1
                return True
            self._window.append(now)
            return False

    def latency(self, method: str, path: str) -> float:
        """Seconds to sleep for this request."""
        with self._lock:
            ms = self.settings["latency_ms"]
            if not ms or not self._applies(method, path):
                return 0.0
            self.counters["delayed"] += 1
            return ms / 1000.0

    def should_error(self, method: str, path: str) -> bool:
        with self._lock:
            if not self._applies(method, path):
                return False
            if self.settings["error_next"] > 0:
                self.settings["error_next"] -= 1
                self.counters["errors_500"] += 1
                return True
            rate = self.settings["error_rate"]
            if rate and self._rng.random() < rate:
                self.counters["errors_500"] += 1
                return True
            return False

    def should_disconnect(self, method: str, path: str) -> bool:
        with self._lock:
            if not self._applies(method, path):
                return False
            if self.settings["disconnect_next"] > 0:
                self.settings["disconnect_next"] -= 1
                self.counters["disconnects"] += 1
                return True
            rate = self.settings["disconnect_rate"]
            if rate and self._rng.random() < rate:
                self.counters["disconnects"] += 1
                return True
            return False


def sleep(seconds: Optional[float]) -> None:
    if seconds:
        time.sleep(seconds)
