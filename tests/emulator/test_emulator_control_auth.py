"""The control API (/_emulator/*) answers only holders of the control token; the pages and the API do not need it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from stripe_emulator import CONTROL_TOKEN_HEADER
from stripe_emulator.testing import EmulatorProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONTROL_ROUTES = [
    ("POST", "/_emulator/reset"),
    ("GET", "/_emulator/webhooks"),
    ("POST", "/_emulator/webhooks"),
    ("POST", "/_emulator/webhooks/flush"),
    ("GET", "/_emulator/faults"),
    ("POST", "/_emulator/faults"),
    ("DELETE", "/_emulator/faults"),
    ("GET", "/_emulator/requests"),
    ("DELETE", "/_emulator/requests"),
    ("GET", "/_emulator/charges"),
    ("GET", "/_emulator/events"),
    ("POST", "/_emulator/customers/cus_x/payment_method"),
    ("GET", "/_emulator/no-such-route"),
]


def _http(method: str, url: str, **kw) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.request(method, url, timeout=10, **kw)


@pytest.mark.parametrize("method,path", CONTROL_ROUTES)
def test_control_route_without_token_is_401_and_with_a_wrong_one_403(emu, method, path):
    missing = _http(method, emu.url + path)
    assert missing.status_code == 401
    assert CONTROL_TOKEN_HEADER in missing.json()["error"]["message"]
    wrong = _http(method, emu.url + path, headers={CONTROL_TOKEN_HEADER: emu.control_token + "x"})
    assert wrong.status_code == 403


def test_a_page_in_the_browser_can_neither_read_nor_change_the_webhook_secret(emu):
    # What a malicious local page can send without a CORS preflight: simple GETs and form POSTs, no custom header.
    form = {"url": "http://attacker.example/hook", "secret": "whsec_attacker"}
    assert _http("POST", emu.url + "/_emulator/webhooks", data=form).status_code == 401
    assert _http("GET", emu.url + "/_emulator/webhooks").status_code == 401
    status = emu.webhook_status()
    assert status["url"] != form["url"] and "whsec_attacker" not in str(status)


def test_control_api_works_with_the_token(emu):
    token = {CONTROL_TOKEN_HEADER: emu.control_token}
    faults = _http("POST", emu.url + "/_emulator/faults", json={"error_next": 1}, headers=token)
    assert faults.status_code == 200 and faults.json()["error_next"] == 1
    assert _http("GET", emu.url + "/_emulator/requests", headers=token).json() == []
    assert emu.clear_faults()["error_next"] == 0  # EmulatorProcess sends it by itself


def test_health_index_api_and_pages_need_no_token(emu, client):
    assert _http("GET", emu.url + "/_emulator/health").json()["ok"] is True
    assert _http("GET", emu.url + "/").status_code == 200
    cus = client.v1.customers.create(params={"email": "p@example.com"})
    session = client.v1.billing_portal.sessions.create(params={"customer": cus.id, "return_url": "http://x/back"})
    chosen = _http("POST", session.url + "/payment_method", data={"payment_method": "pm_card_visa"},
                   allow_redirects=False)
    assert chosen.status_code == 303 and chosen.headers["Location"] == "http://x/back"
    assert client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method


def test_token_comes_from_the_environment_and_a_missing_one_is_generated():
    with EmulatorProcess(control_token="tok-from-test") as mine:
        assert _http("GET", mine.url + "/_emulator/faults",
                     headers={CONTROL_TOKEN_HEADER: "tok-from-test"}).status_code == 200
    proc = subprocess.Popen([sys.executable, "-m", "stripe_emulator", "--port", "0"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                                         if k != "STRIPE_EMULATOR_CONTROL_TOKEN"})
    try:
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        printed = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        assert len(printed) >= 24
        assert _http("GET", url + "/_emulator/faults").status_code == 401
        assert _http("GET", url + "/_emulator/faults", headers={CONTROL_TOKEN_HEADER: printed}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_a_non_loopback_host_unless_allowed(host):
    out = subprocess.run([sys.executable, "-m", "stripe_emulator", "--host", host, "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"python -m stripe_emulator: refusing to listen on {host}: the emulator is for development and tests; "
        "use 127.0.0.1, or pass --allow-remote to expose it"]


def test_a_non_loopback_host_is_served_when_explicitly_allowed():
    with EmulatorProcess(host="0.0.0.0", extra_args=["--allow-remote"]) as emu:
        assert _http("GET", f"http://127.0.0.1:{emu.port}/_emulator/faults").status_code == 401
        assert emu.faults()["error_next"] == 0


def test_loopback_names():
    from stripe_emulator.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("8.8.8.8")
