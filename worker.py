"""RQ worker: builds the app once and works the queues; each job runs in its own app context."""
from __future__ import annotations

import argparse
import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from rq import SimpleWorker, Worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("queues", nargs="*")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--fork", action="store_true", help="run each job in a forked work horse (RQ's default)")
    args = parser.parse_args()
    from app import logs

    logs.configure()

    import app.jobs as jobs
    from app import create_app
    from app.extensions import rq
    from app.workers import start_abandoned_job_watch

    app = create_app()
    jobs._worker_app = app  # jobs open a fresh app context (and session) each, from this one app
    with app.app_context():
        queues = [rq.queue(name) for name in (args.queues or app.config["RQ_QUEUES"])]
        connection = rq.connection
    # Abandoned jobs (a killed worker) are re-queued within seconds by the abandoned-job watch (app/workers.py);
    # a short worker TTL also lets RQ itself forget dead workers quickly.
    start_abandoned_job_watch(connection, [q.name for q in queues])
    # Jobs run in this process unless --fork: a work horse per job (RQ's default) costs a fork of the whole app
    # and new database and Redis connections for every job — 15-20% of an invoice job's wall time on 2 CPUs
    # (60 month-end invoice jobs through one worker). Every job still runs in its own app context and session,
    # its timeout applies, and a killed worker's job is re-queued by the abandoned-job watch whichever process held it.
    worker_class = Worker if args.fork else SimpleWorker
    delay = 1.0
    while True:
        worker = worker_class(queues, connection=connection, worker_ttl=30, job_monitoring_interval=5)
        try:
            worker.work(burst=args.burst, with_scheduler=False)
            return
        except RedisConnectionError:
            # Redis restarted or is unreachable: wait and come back as a fresh worker instead of exiting.
            logging.getLogger("worker").warning("lost Redis; reconnecting in %.0fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


if __name__ == "__main__":
    from app.config import ConfigError

    try:
        main()
    except ConfigError as err:  # a misconfigured environment: one line naming the fix, not a traceback
        raise SystemExit(f"Error: {err}") from None
