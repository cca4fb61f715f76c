"""Production refuses to start without its own secrets, saying so in one line (CONTRACT §8.8)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import EMULATOR_WEBHOOK_SECRET, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MISSING = ("APP_ENV=production refuses to start: missing STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET. Set SECRET_KEY, "
           "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET in the environment (on Replit: Secrets).")


def _production_env(**extra: str) -> dict[str, str]:
    # Empty values, not absent ones, so that a developer's .env cannot fill them in (load_dotenv never overrides).
    env = dict(os.environ, APP_ENV="production", SECRET_KEY="a-production-secret", STRIPE_SECRET_KEY="",
               STRIPE_WEBHOOK_SECRET="", DATABASE_URL="sqlite:////nonexistent/never-opened.db")
    env.update(extra)
    return env


def test_flask_command_refuses_with_one_line():
    out = subprocess.run([str(VENV_BIN / "flask"), "--app", "app:create_app", "db", "upgrade"], cwd=ROOT,
                         env=_production_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"Error: {MISSING}"]


def test_gunicorn_refuses_with_the_line_and_no_traceback():
    # The Procfile's command, two workers: the master checks the configuration before forking any.
    out = subprocess.run([str(VENV_BIN / "gunicorn"), "--config", "gunicorn.conf.py", "--bind", "127.0.0.1:0",
                          "--workers", "2"], cwd=ROOT, env=_production_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert f"Error: {MISSING}" in out.stderr.splitlines() and "Traceback" not in out.stderr


@pytest.mark.parametrize("env,problem", [
    ({"STRIPE_SECRET_KEY": "sk_live_x"}, "missing STRIPE_WEBHOOK_SECRET"),
    ({"STRIPE_WEBHOOK_SECRET": "whsec_real"}, "missing STRIPE_SECRET_KEY"),
    ({"SECRET_KEY": "", "STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_WEBHOOK_SECRET": "whsec_real"},
     "missing SECRET_KEY"),
    ({"STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET},
     "STRIPE_WEBHOOK_SECRET is the Stripe emulator's public one"),
])
def test_create_app_raises_a_config_error_naming_what_is_missing(monkeypatch, env, problem):
    from app import create_app

    for key, value in _production_env(**env).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        create_app({"TESTING": True})
    assert isinstance(err.value, RuntimeError)
    assert str(err.value).startswith(f"APP_ENV=production refuses to start: {problem}.")


def test_production_with_its_secrets_starts_and_uses_them(monkeypatch):
    for key, value in _production_env(STRIPE_SECRET_KEY="sk_live_x", STRIPE_WEBHOOK_SECRET="whsec_real").items():
        monkeypatch.setenv(key, value)
    cfg = load_config()
    assert cfg["PRODUCTION"] and cfg["STRIPE_WEBHOOK_SECRET"] == "whsec_real" and not cfg["STRIPE_USES_EMULATOR"]


def test_development_still_falls_back_to_the_emulator(monkeypatch):
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("FLASK_ENV", raising=False)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    cfg = load_config({"SECRET_KEY": "x"})
    assert cfg["STRIPE_USES_EMULATOR"] and cfg["STRIPE_WEBHOOK_SECRET"] == EMULATOR_WEBHOOK_SECRET
