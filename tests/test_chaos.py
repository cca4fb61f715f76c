"""The month-end chaos run at a small size: workers SIGKILLed, Redis and PostgreSQL restarted, Stripe faults and a
short outage, the webhook endpoint down, two schedulers started at once — every invariant holds, money included."""
from __future__ import annotations

import pytest

from chaos.harness import ChaosRun

pytestmark = pytest.mark.slow


def test_month_end_under_chaos_keeps_every_invariant():
    # Outages short enough for a test: stripe-python's own retries bridge 1.5 s of Stripe answering 500 (`make
    # chaos` runs 60 s, which leaves charges and events to the retry schedule), and the emulator redelivers
    # what the endpoint missed while it was down.
    report = ChaosRun(tenants=60, workers=3, seed=11, timeout=600, kills=4, stripe_outage_s=1.5,
                      endpoint_outage_s=10, pg_restart=True, schedulers=2).run()
    print(report.render())
    assert report.faults["worker_kills"] >= 3 and report.faults["redis_restarts"] == 1
    assert report.faults["pg_restarts"] == 1 and report.faults["endpoint_outage_s"] == 10
    assert report.faults["schedulers"] == 2
    names = {name for name, _ok, _detail in report.invariants}
    assert {"money_conserved", "one_schedule_each_tick_fired_once", "every_webhook_applied_once"} <= names
    assert report.ok, report.render()
