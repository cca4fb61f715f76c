"""The declarative schedule and its reconciliation with rq-scheduler."""
from __future__ import annotations

import os

from redis import Redis
from rq_scheduler import Scheduler

from app.schedule import SCHEDULE, Periodic
from scheduler import PeriodicScheduler, reconcile


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


def _due_now(scheduler: Scheduler, job_id: str) -> None:
    scheduler.connection.zadd(scheduler.scheduled_jobs_key, {job_id: 0})


def test_a_periodic_job_that_waits_in_a_busy_queue_stays_scheduled(redis_url):
    import time

    conn = Redis.from_url(redis_url)
    conn.flushdb()
    scheduler = PeriodicScheduler(connection=conn, schedule=SCHEDULE)
    reconcile(scheduler, SCHEDULE)
    key = "rq:job:scheduler-heartbeat"
    # Its last run finished result_ttl (120 s) ago but for one second: RQ set the hash to expire then.
    conn.expire(key, 1)
    _due_now(scheduler, "scheduler-heartbeat")
    scheduler.enqueue_jobs()  # queued again, behind month-end's billing jobs: no worker takes it for a while
    time.sleep(1.5)
    assert conn.exists(key)  # with rq-scheduler alone the hash expired here, in the queue,
    assert "scheduler-heartbeat" in {j.id for j in scheduler.get_jobs()}  # and this dropped it from the schedule
    conn.flushdb()


def test_an_entry_lost_from_the_schedule_is_put_back_by_the_next_reconciliation(redis_url):
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    scheduler = PeriodicScheduler(connection=conn, schedule=SCHEDULE)
    reconcile(scheduler, SCHEDULE)
    scheduler.cancel("sweep-stuck")  # e.g. a Redis restart without its append-only file
    scheduler.enqueue_jobs()
    assert "sweep-stuck" not in {j.id for j in scheduler.get_jobs()}  # not yet: every RECONCILE_EVERY seconds
    scheduler.RECONCILE_EVERY = 0
    scheduler.enqueue_jobs()
    assert {j.id for j in scheduler.get_jobs()} == {p.id for p in SCHEDULE}
    conn.flushdb()


def test_every_scheduled_function_exists():
    import importlib

    for p in SCHEDULE:
        module, _, name = p.func.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), p.func
