"""Real servers for the test suite: PostgreSQL, Redis and an SMTP sink, started and stopped by the tests."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import Message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        path = shutil.which("initdb")
        if not path:
            raise RuntimeError("PostgreSQL server binaries not found (run `make test`, which installs them)")
        return os.path.dirname(path)
    return os.path.dirname(found[-1])


@contextmanager
def postgres_server():
    """Start a throw-away PostgreSQL cluster on a free port; yield its SQLAlchemy URL base (no database)."""
    bindir = _pg_bin()
    root = tempfile.mkdtemp(prefix="sp-pg-")
    datadir = os.path.join(root, "data")
    port = free_port()
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        # PostgreSQL refuses to run as root: run it as the unprivileged postgres (or nobody) user.
        user = "postgres"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user, pw = "nobody", pwd.getpwnam("nobody")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", user, "--"]
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    subprocess.run(prefix + [f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                             "--no-sync"], check=True, stdout=subprocess.DEVNULL, env=env)
    opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB")
    subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", datadir, "-o", opts, "-l", os.path.join(root, "log"),
                             "-w", "start"], check=True, stdout=subprocess.DEVNULL, env=env)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}", port
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server():
    """Start redis-server on a free port; yield (url, port)."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="sp-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0", port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps every message it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.port = free_port()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                msg = message_from_bytes(envelope.content, policy=policy.default)
                msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                with sink._lock:
                    sink.messages.append(msg)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> "SmtpSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def subjects(self, to: str | None = None) -> list[str]:
        with self._lock:
            return [m["Subject"] for m in self.messages if to is None or to in m["X-Envelope-To"]]
