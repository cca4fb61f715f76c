"""A Stripe request-rate limiter shared by every worker and web process through Redis.

GCRA ("virtual scheduling"): one Redis key holds the theoretical arrival time of the next request; each
caller atomically reserves the next slot (spaced 1/limit s apart, on Redis's clock so machines may disagree
about time) and sleeps until it. Requests therefore leave evenly spaced — never a burst at a window edge —
so all workers together stay under Stripe's limit while still using nearly all of it.
"""
from __future__ import annotations

import time

from flask import current_app

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then return -1 end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.floor(wait / 1000) + 2000)
return wait
"""

KEY = "servicepro:stripe-rate"


def stripe_slot(timeout: float = 30.0) -> float:
    """Wait for this process's turn under STRIPE_RATE_LIMIT_PER_S (all processes together); return seconds waited.

    If Redis is unreachable we proceed: Stripe's own 429s (retried with back-off by the gateway) are the backstop.
    """
    limit = current_app.config.get("STRIPE_RATE_LIMIT_PER_S") or 0
    if limit <= 0:
        return 0.0
    from app.extensions import rq

    interval_us = int(1_000_000 / limit)
    try:
        conn = rq.connection
        script = current_app.extensions.get("stripe_rate_script")
        if script is None:
            script = current_app.extensions["stripe_rate_script"] = conn.register_script(_RESERVE)
        deadline = time.monotonic() + timeout
        while True:
            wait_us = int(script(keys=[KEY], args=[interval_us, int(timeout * 1_000_000)]))
            if wait_us >= 0:
                if wait_us:
                    time.sleep(wait_us / 1_000_000)
                return wait_us / 1_000_000
            if time.monotonic() > deadline:
                return 0.0
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the limiter must never take billing down
        return 0.0
