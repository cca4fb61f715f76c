"""The shared Stripe rate limiter keeps all callers together under the configured rate."""
from __future__ import annotations

import time

import pytest

from tests.support.concurrency import run_concurrently
from tests.support.config import base_config


@pytest.fixture
def config_overrides():
    return {"STRIPE_RATE_LIMIT_PER_S": 20}


def test_callers_in_several_threads_share_one_budget(app, migrated, redis_url):
    from app import create_app
    from app.services.ratelimit import stripe_slot

    apps = [create_app(base_config(migrated, redis_url, STRIPE_RATE_LIMIT_PER_S=20)) for _ in range(4)]

    def caller(i: int) -> list[float]:
        stamps = []
        with apps[i].app_context():
            for _ in range(10):
                stripe_slot()
                stamps.append(time.monotonic())
        return stamps

    stamps = sorted(stamp for thread in run_concurrently(caller, 4, timeout=30) for stamp in thread)
    assert len(stamps) == 40
    # No sliding one-second window holds more than the limit (+1 for timer jitter) ...
    worst = max(sum(1 for s in stamps if start <= s < start + 1.0) for start in stamps)
    assert worst <= 21
    # ... and the budget is used: 40 calls at 20/s take about 2 s, not much more.
    assert 1.7 <= stamps[-1] - stamps[0] <= 4.0
