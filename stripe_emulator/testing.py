"""Test/benchmark helper: run the emulator as a real subprocess.

    from stripe_emulator.testing import EmulatorProcess

    with EmulatorProcess() as emu:
        client = stripe.StripeClient(emu.api_key, base_addresses={"api": emu.url})
        ...
        emu.set_faults(error_next=1)
        emu.charges()

The process is started with ``sys.executable -m stripe_emulator --port 0``
(or the given port); the actual URL is read from its first stdout line.
A fresh control token is generated per process (or pass ``control_token``),
handed over in the environment and sent with every control API call.
The account lives in memory unless ``state_file`` names a file to keep it in
(``$STRIPE_EMULATOR_STATE_FILE`` of the calling shell is never inherited).
Only the standard library is used to talk to the control API.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

from . import CONTROL_TOKEN_HEADER, DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatorError(RuntimeError):
    pass


class EmulatorProcess:
    """A ``python -m stripe_emulator`` subprocess and its control API.

    Attributes: ``url`` (e.g. ``http://127.0.0.1:54321``), ``api_key``
    (``"sk_test_emulator"``), ``webhook_secret``, ``control_token``, ``port``, ``process``.
    """

    api_key = DEFAULT_API_KEY

    def __init__(self, port: int = 0, host: str = "127.0.0.1", webhook_url: Optional[str] = None,
                 webhook_secret: str = DEFAULT_WEBHOOK_SECRET, extra_args: Optional[List[str]] = None,
                 startup_timeout: float = 20.0, verbose: bool = False, start: bool = True,
                 control_token: Optional[str] = None, state_file: Optional[str] = None):
        self.host = host
        self.state_file = state_file
        self.control_token = control_token or secrets.token_urlsafe(24)
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self._initial_webhook_secret = webhook_secret
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.process: Optional[subprocess.Popen] = None
        self.url = ""
        self._stdout_lines: List[str] = []
        if start:
            self.start()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> "EmulatorProcess":
        if self.process is not None:
            return self
        cmd = [sys.executable, "-m", "stripe_emulator", "--host", self.host, "--port", str(self.port),
               "--webhook-secret", self.webhook_secret]
        if self.webhook_url:
            cmd += ["--webhook-url", self.webhook_url]
        if self.verbose:
            cmd.append("--verbose")
        if self.state_file:
            cmd += ["--state-file", self.state_file]
        cmd += self.extra_args
        env = dict(os.environ)
        env.pop("STRIPE_EMULATOR_STATE_FILE", None)  # a developer's `make run` file must not leak into tests
        env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["STRIPE_EMULATOR_CONTROL_TOKEN"] = self.control_token  # not in argv, which other users can read
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, env=env, text=True,
        )
        first = self._read_first_line()
        if "listening on " not in first:
            self.stop()
            raise EmulatorError("stripe_emulator did not start: %r" % first)
        self.url = first.rsplit("listening on ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self._call("GET", "/_emulator/health")
                return self
            except (OSError, EmulatorError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmulatorError("stripe_emulator at %s does not answer" % self.url)
                time.sleep(0.05)

    def _read_first_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        result: List[str] = []
        t = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        t.start()
        t.join(self.startup_timeout)
        return result[0] if result else ""

    def _drain(self) -> None:
        proc = self.process
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            self._stdout_lines.append(line)

    def stop(self) -> None:
        """Terminate the subprocess (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()

    def kill(self) -> None:
        """End the subprocess with SIGKILL, as a crash would: no shutdown code runs."""
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.kill()
        proc.wait(5)
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stripe_client(self, max_network_retries: int = 0, api_key: Optional[str] = None, **kw: Any):
        """A ``stripe.StripeClient`` pointed at this emulator."""
        import stripe

        return stripe.StripeClient(api_key or self.api_key, base_addresses={"api": self.url},
                                   max_network_retries=max_network_retries, **kw)

    # --------------------------------------------------------- control API
    def _call(self, method: str, path: str, data: Optional[Dict[str, Any]] = None,
              timeout: float = 30.0, ok_statuses: tuple = (200,)) -> Any:
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json",
                                              CONTROL_TOKEN_HEADER: self.control_token})
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode() or "null")
        except urllib.error.HTTPError as exc:
            payload = exc.read().decode()
            if exc.code in ok_statuses:
                return json.loads(payload)
            raise EmulatorError("%s %s -> %d: %s" % (method, path, exc.code, payload))

    def reset(self, clear_webhooks: bool = False) -> None:
        """Forget all objects, events, requests, idempotency keys and faults."""
        self._call("POST", "/_emulator/reset", {"clear_webhooks": clear_webhooks})
        if clear_webhooks:
            self.webhook_secret = self._initial_webhook_secret

    def set_webhook(self, url: Optional[str], secret: Optional[str] = None, **settings: Any) -> Dict[str, Any]:
        """Deliver events to ``url`` (None disables); settings: max_attempts,
        backoff_initial, backoff_max, timeout."""
        data: Dict[str, Any] = {"url": url or ""}
        if secret is not None:
            data["secret"] = secret
        data.update(settings)
        out = self._call("POST", "/_emulator/webhooks", data)
        self.webhook_secret = out["secret"]
        return out

    def webhook_status(self) -> Dict[str, Any]:
        return self._call("GET", "/_emulator/webhooks")

    def flush_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was delivered or given up."""
        out = self._call("POST", "/_emulator/webhooks/flush", {"timeout": timeout},
                         timeout=timeout + 5, ok_statuses=(200, 504))
        return bool(out.get("flushed"))

    def set_faults(self, **settings: Any) -> Dict[str, Any]:
        """error_rate, error_next, latency_ms, rate_limit_per_s,
        disconnect_rate, disconnect_next, path_contains, methods, seed."""
        return self._call("POST", "/_emulator/faults", settings)

    def clear_faults(self) -> Dict[str, Any]:
        return self._call("DELETE", "/_emulator/faults")

    def faults(self) -> Dict[str, Any]:
        return self._call("GET", "/_emulator/faults")

    def requests(self) -> List[Dict[str, Any]]:
        """Every API request received: method, path, params, idempotency_key, status, time..."""
        return self._call("GET", "/_emulator/requests")

    def charges(self, include_failed: bool = False) -> List[Dict[str, Any]]:
        """Successful charges (id, invoice, customer, amount, currency...)."""
        return self._call("GET", "/_emulator/charges" + ("?include_failed=1" if include_failed else ""))

    def events(self, type: Optional[str] = None) -> List[Dict[str, Any]]:
        """All events, oldest first."""
        return self._call("GET", "/_emulator/events" + ("?type=%s" % type if type else ""))

    def set_default_payment_method(self, customer: str, payment_method: str = "pm_card_visa") -> Dict[str, Any]:
        """Do what the billing portal page does for ``customer``."""
        return self._call("POST", "/_emulator/customers/%s/payment_method" % customer,
                          {"payment_method": payment_method})
