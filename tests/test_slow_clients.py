"""Slow and oversized requests (CONTRACT §8.8): the web process, run as the Procfile runs it, keeps answering."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.factories import make_api_key, make_tenant
from tests.support.services import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
PROMPT_S = 5.0  # a functional bound ("still answers"), far above a normal answer's few milliseconds


def procfile_web_command() -> str:
    """The `web:` line of the Procfile, exactly as a deploy runs it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web process")


@pytest.fixture(scope="module")
def web(migrated, redis_url):
    """Start the Procfile's web process on a free port against the test PostgreSQL and Redis; yield its URL."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY="2", DATABASE_URL=migrated, REDIS_URL=redis_url,
               SECRET_KEY="test-secret-key", STRIPE_WEBHOOK_SECRET="whsec_test_secret",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("APP_ENV", "FLASK_ENV", "STRIPE_SECRET_KEY"):
        env.pop(name, None)
    server = subprocess.Popen(["bash", "-c", f"exec {procfile_web_command()}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, timeout=30)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the web process never became healthy"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _open(url: str, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
    sock.sendall(head)
    return sock


def half_sent_post(url: str, path: str, content_type: str, first_bytes: bytes) -> socket.socket:
    """Headers announcing a 100,000-byte body, then only `first_bytes` of it; the connection stays open."""
    return _open(url, (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                       f"Content-Length: 100000\r\n\r\n").encode() + first_bytes)


def partial_headers(url: str) -> socket.socket:
    """Slowloris: a request line and one header, never the blank line that ends them."""
    return _open(url, b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")


def assert_answers_promptly(url: str) -> None:
    for path in ("/login", "/healthz"):
        started = time.monotonic()
        try:
            resp = requests.get(f"{url}{path}", timeout=PROMPT_S)
        except requests.Timeout:
            pytest.fail(f"GET {path} got no answer within {PROMPT_S:.0f} s while slow clients were connected")
        assert resp.status_code == 200, (path, resp.status_code)
        assert time.monotonic() - started < PROMPT_S


def test_half_sent_bodies_and_partial_headers_do_not_stop_the_server_answering(web):
    held: list[socket.socket] = []
    try:
        for _ in range(8):
            held.append(half_sent_post(web, "/login", "application/x-www-form-urlencoded", b"email="))
            held.append(half_sent_post(web, "/webhooks/stripe", "application/json", b'{"id":'))
            held.append(partial_headers(web))
        time.sleep(1.0)  # let the server take every one of them in before the real visitors come
        for _ in range(3):
            assert_answers_promptly(web)
        # The slow clients dribble on (a byte each, well inside any idle timeout): still no effect on others.
        for sock in held:
            try:
                sock.sendall(b"x")
            except OSError:
                pass  # the server may already have dropped a slowloris connection: that is allowed
        assert_answers_promptly(web)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_a_client_that_never_finishes_its_headers_is_disconnected(web):
    sock = partial_headers(web)
    try:
        sock.settimeout(30)  # gunicorn.conf.py gives a client its keep-alive time (5 s) to send its headers
        assert sock.recv(1024) == b""
    finally:
        sock.close()


def _status_line(sock: socket.socket) -> str:
    sock.settimeout(PROMPT_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("path,content_type", [("/login", "application/x-www-form-urlencoded"),
                                               ("/webhooks/stripe", "application/json")])
def test_a_body_declared_over_one_mib_is_refused_at_once_without_being_read(web, path, content_type):
    sock = _open(web, (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                       f"Content-Length: {MiB + 1}\r\n\r\n").encode() + b"x" * 100)
    try:
        assert _status_line(sock).split(" ", 2)[1] == "413"
    finally:
        sock.close()


def test_a_huge_sign_in_form_gets_413_and_the_page_not_a_500(web):
    resp = requests.post(f"{web}/login", data={"email": "a@example.com", "password": "x" * (2 * MiB)}, timeout=30)
    assert resp.status_code == 413
    assert "text/html" in resp.headers["Content-Type"]


def test_the_json_api_answers_413_in_the_error_shape(client, plans):
    key = make_api_key(make_tenant())
    resp = client.post("/api/usage/events", data=b"[" + b" " * MiB + b"]", content_type="application/json",
                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 413
    error = resp.get_json()["error"]
    assert error["code"] == "payload_too_large" and error["message"] and error["fields"] == {}


def test_a_stripe_webhook_over_one_mib_gets_413_in_the_error_shape(web):
    resp = requests.post(f"{web}/webhooks/stripe", data=b"{" + b" " * MiB + b"}", timeout=30,
                         headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
