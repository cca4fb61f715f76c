"""Job functions used only by the worker-reliability tests (run by real worker subprocesses)."""
from __future__ import annotations

import time

from app.jobs import job


@job
def slow_marker(key: str, seconds: float) -> str:
    """Sleep, then record in Redis that this job completed (and how many times it ran)."""
    from app.extensions import rq

    rq.connection.incr(f"{key}:started")
    time.sleep(seconds)
    rq.connection.incr(f"{key}:done")
    return "done"


@job
def always_fails(reason: str) -> None:
    """Fail with a recognisable message."""
    raise RuntimeError(f"boom: {reason}")
