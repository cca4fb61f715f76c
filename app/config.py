"""Everything the application reads from the environment, in one place (CONTRACT §2)."""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping

import click
from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = ROOT / "instance"

EMULATOR_URL = "http://127.0.0.1:12111"
EMULATOR_API_KEY = "sk_test_emulator"
EMULATOR_WEBHOOK_SECRET = "whsec_emulator_local_development_secret"


class ConfigError(RuntimeError, click.ClickException):
    """The environment cannot run the app; the message is one line naming the fix."""

    # ClickException makes `flask ...` print "Error: <message>" and exit 1; gunicorn's master reports it the same
    # way from gunicorn.conf.py's on_starting, and worker.py / scheduler.py catch it themselves.
    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)

    def __str__(self) -> str:
        return self.message


def database_uri(url: str) -> str:
    """Make the `postgres://` and `postgresql://` URLs of Replit and Heroku use psycopg 3; keep others as given."""
    return re.sub(r"^postgres(?:ql)?://", "postgresql+psycopg://", url)


def _check_production(cfg: Mapping[str, Any]) -> None:
    """Refuse production without its own secrets: no dev session key, no emulator's published webhook secret."""
    problems = []
    missing = [name for name in ("SECRET_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET") if not cfg.get(name)]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if cfg.get("STRIPE_WEBHOOK_SECRET") == EMULATOR_WEBHOOK_SECRET:
        problems.append("STRIPE_WEBHOOK_SECRET is the Stripe emulator's public one")
    if problems:
        raise ConfigError(f"APP_ENV=production refuses to start: {'; '.join(problems)}. Set SECRET_KEY, "
                          "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET in the environment (on Replit: Secrets).")


def _dev_secret_key() -> str:
    """Generate a development SECRET_KEY once into instance/ and reuse it."""
    INSTANCE_DIR.mkdir(exist_ok=True)
    path = INSTANCE_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def load_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config from the environment (and .env), then apply overrides."""
    load_dotenv(ROOT / ".env", override=False)
    env = os.environ
    overrides = dict(overrides or {})
    production = env.get("FLASK_ENV") == "production" or env.get("APP_ENV") == "production"

    stripe_key = overrides.get("STRIPE_SECRET_KEY", env.get("STRIPE_SECRET_KEY") or None)
    cfg: dict[str, Any] = {
        "PRODUCTION": production,
        "SQLALCHEMY_DATABASE_URI": database_uri(env.get("DATABASE_URL")
                                                or f"sqlite:///{INSTANCE_DIR / 'servicepro.db'}"),
        "REDIS_URL": env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "STRIPE_SECRET_KEY": stripe_key,
        "STRIPE_USES_EMULATOR": not stripe_key,
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE")
        or ("https://api.stripe.com" if stripe_key else EMULATOR_URL),
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET")
        or (None if stripe_key or production else EMULATOR_WEBHOOK_SECRET),
        "STRIPE_MAX_NETWORK_RETRIES": int(env.get("STRIPE_MAX_NETWORK_RETRIES", "3")),
        "STRIPE_RATE_LIMIT_PER_S": float(env.get("STRIPE_RATE_LIMIT_PER_S", "20")),
        "APP_BASE_URL": env.get("APP_BASE_URL", "http://127.0.0.1:5000").rstrip("/"),
        "SMTP_URL": env.get("SMTP_URL") or None,
        "MAIL_FROM": env.get("MAIL_FROM", "ServicePro Billing <billing@servicepro.example.com>"),
        "BILLING_TIMEZONE": env.get("BILLING_TIMEZONE", "UTC"),
        "DUNNING_REMINDER_DAYS": int(env.get("DUNNING_REMINDER_DAYS", "14")),
        "DUNNING_SUSPEND_DAYS": int(env.get("DUNNING_SUSPEND_DAYS", "30")),
        "DUNNING_RESTRICT_DAYS": int(env.get("DUNNING_RESTRICT_DAYS", "45")),
        "INVOICE_DUE_DAYS": int(env.get("INVOICE_DUE_DAYS", "0")),
        "PAYMENT_RETRY_DAYS": [int(d) for d in env.get("PAYMENT_RETRY_DAYS", "3,7,12").split(",") if d],
        "DEMO_PASSWORD": env.get("DEMO_PASSWORD", "demo-password"),
        "LOGIN_RATE_LIMIT": env.get("LOGIN_RATE_LIMIT", "10 per minute"),
        "USAGE_RATE_LIMIT": env.get("USAGE_RATE_LIMIT", "600 per minute"),
        "USAGE_MAX_CLOCK_SKEW_SECONDS": int(env.get("USAGE_MAX_CLOCK_SKEW_SECONDS", "300")),
        "LOGIN_ACCOUNT_RATE_LIMIT": env.get("LOGIN_ACCOUNT_RATE_LIMIT", "20 per hour"),
        "TRUSTED_PROXIES": env.get("TRUSTED_PROXIES", ""),
        "RQ_QUEUES": ["billing", "webhooks", "default", "mail"],
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SECURE": production,
        "WTF_CSRF_HEADERS": ["X-CSRFToken", "X-CSRF-Token"],
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": 1024 * 1024,  # CONTRACT §8.8: a larger body is answered 413, unread
        "WEBHOOK_DRAINERS": int(env.get("WEBHOOK_DRAINERS", "4")),
        "SWEEPER_STALE_SECONDS": int(env.get("SWEEPER_STALE_SECONDS", "120")),
        "PAYMENT_RETRY_LATER_SECONDS": int(env.get("PAYMENT_RETRY_LATER_SECONDS", "900")),
    }
    secret = overrides.get("SECRET_KEY") or env.get("SECRET_KEY")
    cfg.update(overrides)
    if cfg["PRODUCTION"]:
        _check_production({**cfg, "SECRET_KEY": secret})
    cfg["SECRET_KEY"] = secret or _dev_secret_key()
    if cfg["STRIPE_SECRET_KEY"] is None:
        cfg["STRIPE_SECRET_KEY"] = EMULATOR_API_KEY
    return cfg
