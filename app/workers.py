"""Worker-side reliability: job leases and the watch that re-queues jobs a killed worker abandoned.

RQ only notices a killed worker when its started-registry entry expires (job_monitoring_interval + 60 s). To
re-drive abandoned work within seconds, every running job holds a short Redis lease refreshed by a heartbeat
thread; a job in a started registry without a live lease (and started more than LEASE_TTL ago) was abandoned
and is put back on its queue. Jobs are idempotent by business key, so running one again is safe.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

from redis import Redis

log = logging.getLogger(__name__)

LEASE_TTL = 10  # seconds without a heartbeat before a running job counts as abandoned
HEARTBEAT_EVERY = 3
WATCH_EVERY = 5


def lease_key(job_id: str) -> str:
    return f"servicepro:lease:{job_id}"


@contextmanager
def job_lease():
    """Hold a lease on the current RQ job (if any) while the body runs."""
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        yield
        return
    with lease(current.connection, lease_key(current.id), name=f"lease-{current.id}"):
        yield


@contextmanager
def lease(conn: Redis, key: str, *, name: str = "lease"):
    """Hold `key` in Redis while the body runs: set at once, refreshed by a heartbeat thread, deleted after.

    The key outlives a killed process by at most LEASE_TTL seconds, which is how others tell it is gone.
    """
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_EVERY):
            try:
                conn.set(key, "1", ex=LEASE_TTL)
            except Exception:  # noqa: BLE001 - Redis blips must not kill the job
                pass

    try:
        conn.set(key, "1", ex=LEASE_TTL)
    except Exception:  # noqa: BLE001
        pass
    thread = threading.Thread(target=beat, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        try:
            conn.delete(key)
        except Exception:  # noqa: BLE001
            pass


def requeue_abandoned_jobs(conn: Redis, queue_names: list[str], *, now: float | None = None) -> list[str]:
    """Requeue jobs that sit in a started registry without a live lease; return their ids."""
    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.registry import StartedJobRegistry

    now = now or time.time()
    redriven: list[str] = []
    for name in queue_names:
        queue = Queue(name, connection=conn)
        registry = StartedJobRegistry(queue=queue)
        for entry in conn.zrange(registry.key, 0, -1):
            entry = entry.decode()
            job_id = entry.split(":", 1)[0]
            if conn.exists(lease_key(job_id)):
                continue
            try:
                job = Job.fetch(job_id, connection=conn)
            except NoSuchJobError:
                conn.zrem(registry.key, entry)
                continue
            started = job.started_at.timestamp() if job.started_at else 0
            if now - started < LEASE_TTL + HEARTBEAT_EVERY:
                continue  # just started: its first heartbeat may not be visible yet
            conn.zrem(registry.key, entry)
            job.set_status(JobStatus.QUEUED)
            queue.enqueue_job(job)
            redriven.append(job_id)
            log.warning("re-drove abandoned job %s (queue %s)", job_id, name)
    return redriven


def start_abandoned_job_watch(conn: Redis, queue_names: list[str]) -> threading.Thread:
    """Run requeue_abandoned_jobs every few seconds in the worker's main process (one at a time via a lock).

    Not to be confused with app/services/stuck_rows.py, which re-drives database rows whose job was lost.
    """

    def loop():
        while True:
            time.sleep(WATCH_EVERY)
            try:
                if conn.set("servicepro:abandoned-jobs-lock", "1", nx=True, ex=WATCH_EVERY):
                    requeue_abandoned_jobs(conn, queue_names)
            except Exception:  # noqa: BLE001 - keep watching through Redis restarts
                log.debug("abandoned-job watch failed", exc_info=True)

    thread = threading.Thread(target=loop, name="abandoned-job-watch", daemon=True)
    thread.start()
    return thread
