"""Shared set-up for the database benchmarks: a throw-away PostgreSQL, migrated, with the standard plans."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def migrated_app(database: str, **config):
    """Start PostgreSQL, create `database`, build the app on it, migrate and seed plans; yield the app (context pushed)."""
    from flask_migrate import upgrade
    from sqlalchemy import create_engine, text

    from app import create_app
    from app.services.seed import seed_plans
    from tests.support.services import postgres_server

    with postgres_server() as (base, _port):
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {database}"))
        admin.dispose()
        app = create_app({
            "SQLALCHEMY_DATABASE_URI": f"{base}/{database}", "SECRET_KEY": "bench", "TESTING": True,
            "RATELIMIT_STORAGE_URI": "memory://", "SMTP_URL": None, "BILLING_TIMEZONE": "UTC", **config,
        })
        with app.app_context():
            upgrade()
            seed_plans()
            yield app
