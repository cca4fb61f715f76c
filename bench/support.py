"""Shared set-up for the database benchmarks: a throw-away PostgreSQL, migrated, with the standard plans."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fresh_database(database: str) -> Iterator[str]:
    """Start a throw-away PostgreSQL and create `database` in it (empty); yield its URL."""
    from sqlalchemy import create_engine, text

    from tests.support.services import postgres_server

    with postgres_server() as (base, _port):
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {database}"))
        admin.dispose()
        yield f"{base}/{database}"


@contextmanager
def migrated_app(database: str, **config):
    """Start PostgreSQL, create and migrate `database`, seed the plans; yield the app (its context pushed)."""
    from flask_migrate import upgrade

    from app import create_app
    from app.services.seed import seed_plans

    with fresh_database(database) as url:
        app = create_app({
            "SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "bench", "TESTING": True,
            "RATELIMIT_STORAGE_URI": "memory://", "SMTP_URL": None, "BILLING_TIMEZONE": "UTC", **config,
        })
        with app.app_context():
            upgrade()
            seed_plans()
            yield app
