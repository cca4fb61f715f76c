"""A worker killed with SIGKILL mid-job: its job is detected as abandoned and re-driven within seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rq.registry import StartedJobRegistry

from app.extensions import rq
from app.queue import enqueue_unique

ROOT = Path(__file__).resolve().parent.parent


def start_worker(migrated, redis_url, queue="default"):
    env = dict(os.environ, DATABASE_URL=migrated, REDIS_URL=redis_url, SECRET_KEY="test-secret-key",
               STRIPE_SECRET_KEY="sk_test_emulator", STRIPE_API_BASE="http://127.0.0.1:9")
    return subprocess.Popen([sys.executable, "worker.py", queue], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its work horse (RQ's horse runs in its own session, so killpg misses it)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    os.kill(pid, signal.SIGKILL)
    for child in children.split():
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_killed_worker_job_is_redriven_quickly(app, migrated, redis_url):
    conn = rq.connection
    first = start_worker(migrated, redis_url)
    second = None
    try:
        enqueue_unique("default", "tests.support.jobs.slow_marker", "chaos-job", 4.0, job_id="slow-marker-1")
        assert wait_for(lambda: conn.get("chaos-job:started") == b"1", 20)
        killed_at = time.monotonic()
        kill_tree(first.pid)  # the worker and its work horse die mid-job
        first.wait(5)
        assert conn.get("chaos-job:done") is None
        second = start_worker(migrated, redis_url)
        assert wait_for(lambda: conn.get("chaos-job:done") == b"1", 60), "abandoned job was never re-driven"
        redrive_seconds = time.monotonic() - killed_at
        assert redrive_seconds < 40  # RQ alone would wait for the registry entry to expire (65 s and more)
        assert conn.get("chaos-job:started") == b"2"
        assert StartedJobRegistry("default", connection=conn).count == 0
        print(f"re-drive after SIGKILL: {redrive_seconds:.1f} s (including the 4 s job)")
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
