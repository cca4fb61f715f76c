"""Working the RQ queues inside the test process, so a test sees what the jobs it enqueued did."""
from __future__ import annotations


def run_jobs(queues: tuple[str, ...] = ("billing", "webhooks", "default", "mail")) -> None:
    """Work every queued RQ job in this process until the queues are empty."""
    from rq import SimpleWorker

    from app.extensions import rq

    SimpleWorker([rq.queue(q) for q in queues], connection=rq.connection).work(burst=True)
