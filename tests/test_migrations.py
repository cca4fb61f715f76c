"""The schema comes only from migrations, and they run both ways on PostgreSQL."""
from __future__ import annotations

from sqlalchemy import create_engine, text

from tests.support.config import base_config


def test_models_and_migrated_database_agree(app):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.extensions import db

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


def test_upgrade_downgrade_upgrade_on_postgresql(pg_base, redis_url):
    from flask_migrate import downgrade, upgrade

    from app import create_app
    from app.extensions import db

    admin = create_engine(f"{pg_base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS servicepro_migrations"))
        conn.execute(text("CREATE DATABASE servicepro_migrations"))
    url = f"{pg_base}/servicepro_migrations"
    app = create_app(base_config(url, redis_url))
    with app.app_context():
        upgrade()
        tables = set(db.inspect(db.engine).get_table_names())
        assert {"tenants", "invoices", "usage_rollups_daily", "plans", "plan_prices", "invoice_lines"} <= tables
        downgrade(revision="base")
        assert set(db.inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
        assert "invoices" in set(db.inspect(db.engine).get_table_names())
        db.engine.dispose()
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE servicepro_migrations"))
    admin.dispose()


def test_upgrade_works_on_an_empty_sqlite_file(tmp_path, redis_url):
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db

    app = create_app(base_config(f"sqlite:///{tmp_path / 'x.db'}", redis_url))
    with app.app_context():
        upgrade()
        assert "invoices" in db.inspect(db.engine).get_table_names()
        db.engine.dispose()
