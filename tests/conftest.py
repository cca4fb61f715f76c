"""Test harness: real PostgreSQL, Redis, SMTP sink and Stripe emulator, started once per session.

Each test gets a fresh app; after it, every table is truncated and Redis flushed, so tests never share state.
"""
from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text

from tests.factories import PASSWORD
from tests.support.config import base_config
from tests.support.services import SmtpSink, postgres_server, redis_server
from tests.support.web import login, page_csrf

os.environ.setdefault("SECRET_KEY", "test-secret-key")


@pytest.fixture(scope="session")
def pg_base():
    if os.environ.get("TEST_PG_BASE"):
        yield os.environ["TEST_PG_BASE"]
        return
    with postgres_server() as (base, _port):
        yield base


@pytest.fixture(scope="session")
def database_url(pg_base):
    engine = create_engine(f"{pg_base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS servicepro_test"))
        conn.execute(text("CREATE DATABASE servicepro_test"))
    engine.dispose()
    return f"{pg_base}/servicepro_test"


@pytest.fixture(scope="session")
def redis_url():
    with redis_server() as (url, _port):
        yield url


@pytest.fixture(scope="session")
def smtp_sink():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def emulator():
    from stripe_emulator.testing import EmulatorProcess

    emu = EmulatorProcess()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def migrated(database_url, redis_url):
    """Run the real migrations once: the schema comes only from migrations."""
    from flask_migrate import upgrade

    from app import create_app

    app = create_app(base_config(database_url, redis_url))
    with app.app_context():
        upgrade()
        from app.extensions import db

        db.engine.dispose()
    return database_url


def _truncate(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "select tablename from pg_tables where schemaname='public' and tablename <> 'alembic_version'"))]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def config_overrides():
    """Override in a test module to change the app's configuration."""
    return {}


@pytest.fixture
def app(migrated, redis_url, config_overrides, request):
    from app import create_app
    from app.extensions import db

    extra = dict(config_overrides)
    if "emulator" in request.fixturenames:
        emu = request.getfixturevalue("emulator")
        emu.reset()
        extra.setdefault("STRIPE_API_BASE", emu.url)
        extra.setdefault("STRIPE_SECRET_KEY", emu.api_key)
        extra.setdefault("STRIPE_WEBHOOK_SECRET", emu.webhook_secret)
    if "smtp_sink" in request.fixturenames:
        sink = request.getfixturevalue("smtp_sink")
        sink.clear()
        extra.setdefault("SMTP_URL", sink.url)
    application = create_app(base_config(migrated, redis_url, **extra))
    ctx = application.app_context()
    ctx.push()
    try:
        yield application
    finally:
        db.session.remove()
        db.engine.dispose()
        ctx.pop()
        _truncate(migrated)
        import redis as redis_lib

        redis_lib.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def plans(app):
    from app.services.seed import seed_plans

    seed_plans()


class AuthActions:
    """Sign the test client in and out the way a person does (the Flask tutorial's `auth`)."""

    def __init__(self, client) -> None:
        self._client = client

    def login(self, email: str, password: str = PASSWORD):
        return login(self._client, email, password)

    def logout(self):
        return self._client.post("/logout", data={"csrf_token": page_csrf(self._client, "/login")})


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def live_server(app):
    """Serve the test app over real HTTP on a free port (threaded); yields its base URL."""
    import threading

    from werkzeug.serving import make_server

    from tests.support.services import free_port

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.config["APP_BASE_URL"] = f"http://127.0.0.1:{port}"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def fast_stripe_retries(monkeypatch):
    """stripe-python's network retries without their real back-off (a Stripe outage test waits less)."""
    from stripe._http_client import HTTPClient

    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.02)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.1)


@pytest.fixture
def hook(app, emulator, live_server):
    """Call to make the emulator deliver its events to the running app's /webhooks/stripe (app's secret)."""
    url = f"{live_server}/webhooks/stripe"

    def enable() -> str:
        emulator.set_webhook(url, app.config["STRIPE_WEBHOOK_SECRET"], backoff_initial=0.05, backoff_max=0.2)
        return url

    try:
        yield enable
    finally:
        emulator.set_webhook(None)
