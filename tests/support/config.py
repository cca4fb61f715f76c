"""The app configuration every test starts from: the test servers' URLs, the emulator off unless a test asks."""
from __future__ import annotations


def base_config(database_url: str, redis_url: str, **extra) -> dict:
    cfg = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url,
        "STRIPE_SECRET_KEY": "sk_test_emulator",
        "STRIPE_API_BASE": "http://127.0.0.1:9",  # nothing listens: tests that need Stripe use `emulator`
        "STRIPE_WEBHOOK_SECRET": "whsec_test_secret",
        "STRIPE_MAX_NETWORK_RETRIES": 2,
        "STRIPE_RATE_LIMIT_PER_S": 0,
        "APP_BASE_URL": "http://127.0.0.1:5000",
        "SMTP_URL": None,
        "BILLING_TIMEZONE": "UTC",
        "SERVER_NAME": None,
    }
    cfg.update(extra)
    return cfg
