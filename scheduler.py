"""Reconcile rq-scheduler with app/schedule.py, then run the scheduler loop.

`python scheduler.py --reconcile-only` only reconciles (idempotent: a second run schedules nothing new).
"""
from __future__ import annotations

import argparse
import logging
import os
import time

from redis import Redis
from rq_scheduler import Scheduler

log = logging.getLogger("scheduler")


def force_utc() -> None:
    """Read cron strings in UTC: rq-scheduler's crontab computes next runs in the process's local time."""
    os.environ["TZ"] = "UTC"
    time.tzset()


def reconcile(scheduler: Scheduler, schedule) -> dict[str, list[str]]:
    """Make the scheduled jobs equal the declared ones: add missing, replace changed, remove stale."""
    force_utc()
    wanted = {p.id: p for p in schedule}
    existing = {job.id: job for job in scheduler.get_jobs()}
    report: dict[str, list[str]] = {"added": [], "updated": [], "removed": [], "kept": []}
    for job_id, job in existing.items():
        p = wanted.get(job_id)
        if p is None:
            scheduler.cancel(job)
            job.delete()
            report["removed"].append(job_id)
        elif (job.meta.get("cron_string") != p.cron or job.func_name != p.func or job.origin != p.queue
              or job.result_ttl != p.result_ttl or job.meta.get("use_local_timezone")):
            scheduler.cancel(job)
            job.delete()
            report["updated"].append(job_id)
    for job_id, p in wanted.items():
        if job_id in existing and job_id not in report["updated"]:
            report["kept"].append(job_id)
            continue
        scheduler.cron(p.cron, func=p.func, id=p.id, queue_name=p.queue, result_ttl=p.result_ttl,
                       timeout=p.timeout, use_local_timezone=False, repeat=None)
        if job_id not in report["updated"]:
            report["added"].append(job_id)
    return report


class PeriodicScheduler(Scheduler):
    """rq-scheduler whose periodic jobs survive a queue backlog, with the schedule reconciled now and then.

    A cron entry is one job hash queued again at every tick. After a run RQ sets that hash to expire after the
    job's result_ttl, and queueing it again keeps the expiry: a tick that waits in a busy queue longer than what
    is left of it (month end keeps every worker on billing for minutes) loses its hash, and rq-scheduler then
    drops the entry from the schedule for good — the heartbeat, the stuck-rows pass and the mail flush would
    stop until a restart. So the hash is made persistent when it is queued (its run sets the expiry again),
    and every RECONCILE_EVERY seconds the schedule is reconciled with app/schedule.py, which puts back an
    entry lost any other way.
    """

    RECONCILE_EVERY = 300.0

    def __init__(self, *args, schedule=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = schedule
        self._reconciled_at = time.monotonic()

    def enqueue_job(self, job):
        self.connection.persist(job.key)
        return super().enqueue_job(job)

    def enqueue_jobs(self):
        if self.schedule is not None and time.monotonic() - self._reconciled_at >= self.RECONCILE_EVERY:
            self._reconciled_at = time.monotonic()
            report = reconcile(self, self.schedule)
            if report["added"] or report["updated"] or report["removed"]:
                log.warning("schedule reconciled again: %s", {k: v for k, v in report.items() if k != "kept"})
        return super().enqueue_jobs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reconcile-only", action="store_true")
    parser.add_argument("--interval", type=int, default=10)
    args = parser.parse_args()
    force_utc()
    from app import logs

    logs.configure()

    from app.config import load_config
    from app.schedule import SCHEDULE

    conn = Redis.from_url(load_config()["REDIS_URL"])
    scheduler = PeriodicScheduler(connection=conn, interval=args.interval, schedule=SCHEDULE)
    report = reconcile(scheduler, SCHEDULE)
    log.info("schedule reconciled: %s", {k: len(v) for k, v in report.items()})
    if not args.reconcile_only:
        scheduler.run()


if __name__ == "__main__":
    from app.config import ConfigError

    try:
        main()
    except ConfigError as err:  # a misconfigured environment: one line naming the fix, not a traceback
        raise SystemExit(f"Error: {err}") from None
