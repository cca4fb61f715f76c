"""The declarative schedule and its reconciliation with rq-scheduler."""
from __future__ import annotations

import os

from redis import Redis
from rq_scheduler import Scheduler

from app.schedule import SCHEDULE, Periodic
from scheduler import reconcile


def test_reconcile_twice_schedules_nothing_new(redis_url):
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    scheduler = Scheduler(connection=conn)
    first = reconcile(scheduler, SCHEDULE)
    assert sorted(first["added"]) == sorted(p.id for p in SCHEDULE)
    second = reconcile(scheduler, SCHEDULE)
    assert second["added"] == [] and second["updated"] == [] and second["removed"] == []
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == {p.id for p in SCHEDULE}
    for p in SCHEDULE:
        assert jobs[p.id].meta["cron_string"] == p.cron
        assert jobs[p.id].meta["use_local_timezone"] is False
        assert jobs[p.id].result_ttl == p.result_ttl
    conn.flushdb()


def test_stale_and_changed_entries_are_reconciled(redis_url):
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    scheduler = Scheduler(connection=conn)
    old = SCHEDULE + [Periodic("retired-job", "0 5 * * *", "app.jobs.rollup_recent_days")]
    reconcile(scheduler, old)
    changed = [Periodic(p.id, "0 4 * * *" if p.id == "dunning-nightly" else p.cron, p.func, p.queue,
                        p.result_ttl, p.timeout) for p in SCHEDULE]
    report = reconcile(scheduler, changed)
    assert report["removed"] == ["retired-job"] and report["updated"] == ["dunning-nightly"]
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert "retired-job" not in jobs and jobs["dunning-nightly"].meta["cron_string"] == "0 4 * * *"
    conn.flushdb()


def test_cron_is_read_in_utc_whatever_tz(redis_url, monkeypatch):
    import time
    from datetime import datetime, timezone

    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    try:
        conn = Redis.from_url(redis_url)
        conn.flushdb()
        scheduler = Scheduler(connection=conn)
        reconcile(scheduler, [Periodic("t", "30 0 * * *", "app.jobs.rollup_recent_days")])
        ((job, when),) = list(scheduler.get_jobs(with_times=True))
        when_utc = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
        assert (when_utc.hour, when_utc.minute) == (0, 30)
        assert when_utc > datetime.now(timezone.utc)
        conn.flushdb()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
        os.environ.pop("TZ", None)


def test_every_scheduled_function_exists():
    import importlib

    for p in SCHEDULE:
        module, _, name = p.func.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), p.func
