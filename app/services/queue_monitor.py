"""A read model of the RQ queues, workers and failed jobs for the root admins' job monitor."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from flask import current_app
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from app.extensions import rq


@dataclass
class QueueStats:
    name: str
    queued: int
    started: int
    failed: int
    scheduled: int


@dataclass
class Snapshot:
    queues: list[QueueStats] = field(default_factory=list)
    workers: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    scheduler_heartbeat_age_s: float | None = None


def snapshot(failed_limit: int = 25) -> Snapshot:
    """Queue depths, live workers, the most recent failed jobs and the scheduler heartbeat."""
    conn = rq.connection
    snap = Snapshot()
    for name in current_app.config["RQ_QUEUES"]:
        queue = Queue(name, connection=conn)
        failed = FailedJobRegistry(queue=queue)
        snap.queues.append(QueueStats(name, queue.count, StartedJobRegistry(queue=queue).count, failed.count,
                                      ScheduledJobRegistry(queue=queue).count))
        for job_id in failed.get_job_ids(0, failed_limit - 1):
            job = Job.fetch(job_id, connection=conn) if Job.exists(job_id, connection=conn) else None
            if job is not None:
                last_line = (job.exc_info or "").strip().splitlines()[-1:] or [""]
                snap.failed.append({"id": job.id, "queue": name, "func": job.func_name, "error": last_line[0][:300],
                                    "ended_at": job.ended_at})
    for worker in Worker.all(connection=conn):
        snap.workers.append({"name": worker.name, "state": worker.get_state(), "host": worker.hostname,
                             "pid": worker.pid, "current_job": worker.get_current_job_id(),
                             "last_heartbeat": worker.last_heartbeat, "queues": ", ".join(worker.queue_names())})
    beat = conn.get("servicepro:scheduler-heartbeat")
    if beat:
        at = datetime.fromisoformat(beat.decode()).replace(tzinfo=timezone.utc)
        snap.scheduler_heartbeat_age_s = round((datetime.now(timezone.utc) - at).total_seconds(), 1)
    return snap


def requeue_failed(job_id: str) -> bool:
    """Put a failed job back on its queue; False when there is no such failed job."""
    conn = rq.connection
    if not Job.exists(job_id, connection=conn):
        return False
    job = Job.fetch(job_id, connection=conn)
    if job.get_status() != "failed":
        return False
    FailedJobRegistry(job.origin, connection=conn).requeue(job_id)
    return True
