"""The month-end chaos run at a small size: workers SIGKILLed, Redis restarted, Stripe faults — invariants hold."""
from __future__ import annotations

import pytest

from chaos.harness import ChaosRun

pytestmark = pytest.mark.slow


def test_month_end_under_chaos_keeps_every_invariant():
    report = ChaosRun(tenants=60, workers=3, seed=11, timeout=600, kills=4).run()
    print(report.render())
    assert report.faults["worker_kills"] >= 3 and report.faults["redis_restarts"] == 1
    assert report.ok, report.render()
