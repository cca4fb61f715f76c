"""A Stripe request-rate limiter shared by every worker through Redis."""
from __future__ import annotations

import time

from flask import current_app


def stripe_slot(timeout: float = 30.0) -> None:
    """Block until a Stripe request slot is free under STRIPE_RATE_LIMIT_PER_S across all processes.

    A fixed one-second window counter in Redis; if Redis is unreachable we proceed (Stripe's own 429s and the
    client's retries are the backstop).
    """
    limit = current_app.config.get("STRIPE_RATE_LIMIT_PER_S") or 0
    if limit <= 0:
        return
    from app.extensions import rq

    deadline = time.monotonic() + timeout
    try:
        conn = rq.connection
        while True:
            now = time.time()
            window = int(now)
            key = f"stripe-rate:{window}"
            pipe = conn.pipeline()
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = pipe.execute()
            if count <= limit or time.monotonic() > deadline:
                return
            time.sleep(max(0.005, window + 1 - now))
    except Exception:  # noqa: BLE001 - the limiter must never take billing down
        return
