"""The emulator's account kept in a file (``--state-file PATH``), so a restart remembers what Stripe would.

The file is JSON: a header (``format``, ``version``, ``api_version``, ``saved_at``), the store's tables and
counters (:meth:`Store.snapshot`) and the finished idempotency keys. It is loaded once at start-up and
written whole, atomically (a temporary file beside it, then a rename), by :class:`StateSaver`: at most every
``SAVE_INTERVAL`` seconds while something changed, right away after ``POST /_emulator/reset``, and once more
on a clean shutdown. So a ``kill -9`` loses at most the last couple of seconds.

A file that cannot be parsed, or was written by an incompatible emulator, is moved aside to ``PATH.bad``
with one line on stderr, and the emulator starts empty.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Optional

from . import API_VERSION
from .idempotency import IdempotencyStore
from .store import Store

FORMAT = "stripe_emulator-state"
VERSION = 1
SAVE_INTERVAL = 2.0


def _log(message: str) -> None:
    print("stripe_emulator: %s" % message, file=sys.stderr, flush=True)


def dump(store: Store, idempotency: IdempotencyStore) -> bytes:
    """The state file's bytes for the current account."""
    data = {
        "format": FORMAT, "version": VERSION, "api_version": API_VERSION, "saved_at": int(time.time()),
        "store": store.snapshot(), "idempotency": idempotency.export(),
    }
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old file or the new one, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _parse(raw: bytes) -> Dict[str, Any]:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a stripe_emulator state file")
    if data.get("version") != VERSION:
        raise ValueError("state file version %r, this emulator reads %d" % (data.get("version"), VERSION))
    if data.get("api_version") != API_VERSION:
        raise ValueError("saved for API version %r, this emulator speaks %s" % (data.get("api_version"), API_VERSION))
    return data


def load(path: str, store: Store, idempotency: IdempotencyStore) -> bool:
    """Fill ``store`` and ``idempotency`` from ``path``; True if it was loaded, False if absent or set aside."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False
    try:
        data = _parse(raw)
        store.restore(data["store"])
        idempotency.load(data.get("idempotency") or [])
    except Exception as exc:  # whatever is wrong with the file, the emulator starts empty and keeps it aside
        store.reset()
        idempotency.reset()
        bad = path + ".bad"
        os.replace(path, bad)
        _log("state file %s is unreadable (%s: %s); moved it to %s and started empty"
             % (path, type(exc).__name__, str(exc)[:200], bad))
        return False
    counts = {name: len(getattr(store, name)) for name in ("customers", "invoices", "charges", "events")}
    _log("loaded state from %s (%s)" % (path, ", ".join("%d %s" % (n, k) for k, n in counts.items())))
    return True


class StateSaver:
    """Writes the account to its file from a background thread whenever :meth:`changed` was called."""

    def __init__(self, path: str, store: Store, idempotency: IdempotencyStore, interval: float = SAVE_INTERVAL):
        self.path = path
        self.store = store
        self.idempotency = idempotency
        self.interval = interval
        self._counter = itertools.count(1)
        self._revision = 0  # bumped by changed(); next() on a count is atomic, so no lock is needed
        self._saved = 0
        self._save_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="stripe_emulator-state", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """Something in the account may have changed: save it within ``interval`` seconds."""
        self._revision = next(self._counter)

    def save(self) -> None:
        """Write the account now."""
        with self._save_lock:
            revision = self._revision
            write_atomic(self.path, dump(self.store, self.idempotency))
            self._saved = revision

    def _save_logged(self) -> None:
        try:
            self.save()
            self._last_error = None
        except Exception as exc:  # keep serving; say it once, not every interval
            message = "%s: %s" % (type(exc).__name__, exc)
            if message != self._last_error:
                _log("could not save state to %s (%s)" % (self.path, message))
            self._last_error = message

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._revision != self._saved:
                self._save_logged()

    def close(self) -> None:
        """Stop the thread and save one last time (clean shutdown)."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self._save_logged()
