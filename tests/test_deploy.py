"""Deploys anywhere (CONTRACT §8.5): pinned assets in the repository, and the database URLs platforms hand out."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import database_uri, load_config
from tests.support.config import base_config

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "app" / "static" / "vendor"


def _pinned() -> dict[str, str]:
    return {name.lstrip("*"): digest for digest, name in
            (line.split(maxsplit=1) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())}


def test_pages_load_the_pinned_htmx_from_this_site(client):
    html = client.get("/login").get_data(as_text=True)
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert "/static/vendor/htmx.min.js" in sources
    assert all(src.startswith("/static/") for src in sources), f"not served by the app: {sources}"
    resp = client.get("/static/vendor/htmx.min.js")
    assert resp.status_code == 200 and "javascript" in resp.content_type
    assert hashlib.sha256(resp.data).hexdigest() == _pinned()["htmx.min.js"]
    # ...and that file is the release package.json pins (npm's htmx.org dist/htmx.min.js of that version).
    version = json.loads((ROOT / "package.json").read_text())["dependencies"]["htmx.org"]
    assert f'version:"{version}"' in resp.get_data(as_text=True)


def test_pinned_assets_are_in_the_repository_not_ignored():
    for name in ("htmx.min.js", "SHA256SUMS"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"app/static/vendor/{name}"], cwd=ROOT)
        assert ignored.returncode == 1, f"app/static/vendor/{name} is git-ignored"


@pytest.mark.parametrize("given,expected", [
    ("postgres://u:p%40ss@db.example:5432/app?sslmode=require",
     "postgresql+psycopg://u:p%40ss@db.example:5432/app?sslmode=require"),
    ("postgresql://u@localhost/app", "postgresql+psycopg://u@localhost/app"),
    ("postgresql+psycopg://u@localhost/app", "postgresql+psycopg://u@localhost/app"),
    ("postgresql+psycopg2://u@localhost/app", "postgresql+psycopg2://u@localhost/app"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
])
def test_database_urls_use_psycopg_3_unless_a_driver_is_named(given, expected):
    assert database_uri(given) == expected


def test_database_url_from_the_environment_is_normalised(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/app")
    assert load_config({"SECRET_KEY": "x"})["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/app"


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_app_connects_with_a_platform_database_url(migrated, redis_url, monkeypatch, scheme):
    from app import create_app
    from app.extensions import db

    assert migrated.startswith("postgresql+psycopg://")
    monkeypatch.setenv("DATABASE_URL", migrated.replace("postgresql+psycopg://", scheme, 1))
    config = base_config(migrated, redis_url)
    del config["SQLALCHEMY_DATABASE_URI"]
    app = create_app(config)
    with app.app_context():
        try:
            assert db.engine.dialect.driver == "psycopg"
            assert db.session.execute(text("select count(*) from alembic_version")).scalar_one() == 1
        finally:
            db.session.remove()
            db.engine.dispose()
