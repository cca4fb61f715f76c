"""RQ worker: builds the app once, keeps its context pushed, and works the queues."""
from __future__ import annotations

import argparse
import logging

from rq import Worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("queues", nargs="*")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(name)s %(message)s")

    from app import create_app
    from app.extensions import rq

    app = create_app()
    with app.app_context():
        queues = [rq.queue(name) for name in (args.queues or app.config["RQ_QUEUES"])]
        # A short worker TTL lets abandoned jobs (a killed worker) be detected quickly.
        worker = Worker(queues, connection=rq.connection, worker_ttl=60, job_monitoring_interval=15)
        worker.work(burst=args.burst, with_scheduler=False)


if __name__ == "__main__":
    main()
