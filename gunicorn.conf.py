"""How the web process serves: read by the Procfile, `make run` (scripts/run.sh), the tests and the benchmarks.

The process faces the internet with no proxy in front (CONTRACT §8.8), so a client that sends slowly, or never
finishes its request, must not hold anything another visitor needs. The gevent worker gives every connection its
own greenlet instead of one of a few threads, so a stalled client holds only a socket and a few kB; the time limits
below drop it in the end. psycopg 3 (since 3.1.14) sees gevent's patching and waits for PostgreSQL cooperatively,
as redis-py and requests (the stripe SDK) do through the patched sockets. The app must therefore be imported in
the worker, after the patching: never set `preload_app` here.

Request bodies are capped by the app (Flask's MAX_CONTENT_LENGTH, 1 MiB, and the webhook endpoint's own cap), which
answers 413 as soon as the headers announce more, without reading it.
"""
from __future__ import annotations

import os
import socket

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

#: A client silent this long in the middle of a request (or not reading our answer) is dropped.
CLIENT_IDLE_TIMEOUT_S = 30.0


class SlowClientSafeWorker(GeventWorker):
    """gunicorn's gevent worker, with an idle timeout on each client socket."""

    def handle(self, listener: socket.socket, client: socket.socket, addr: tuple) -> None:
        """Serve one connection; any read or write that waits longer than CLIENT_IDLE_TIMEOUT_S ends it."""
        # GeventWorker.handle would make the socket block forever; a timeout on a body read surfaces in werkzeug
        # as ClientDisconnected (400), in the webhook endpoint as a short body (400), never as a 500.
        client.settimeout(CLIENT_IDLE_TIMEOUT_S)
        AsyncWorker.handle(self, listener, client, addr)


wsgi_app = "app:create_app()"
bind = [f"0.0.0.0:{os.environ.get('PORT', '5000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = SlowClientSafeWorker
# Concurrent connections per worker, slow ones included; past this a worker stops accepting until one ends.
worker_connections = 1000
# Also the time a client has to send its request line and headers (the worker reads them under this timeout;
# 0 would remove that limit): partial headers ("slowloris") are dropped after it.
keepalive = 5
# A worker whose event loop is blocked this long (a CPU-bound request never yielding) is restarted.
timeout = 30
graceful_timeout = 20
# gunicorn's defaults, written out because they bound what a client can make the server hold before the app runs.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# No `gunicornc` control socket: nothing here uses it, and every gunicorn on a machine (tests, benchmarks,
# `make run`) would otherwise share the one default path under $HOME.
control_socket_disable = True


def on_starting(server) -> None:
    """Check the configuration once in the master: a missing production secret is one line and exit 1.

    Loading it only in the workers would let both fail together, and gunicorn then sometimes adds a traceback of
    its own. Only app.config is imported here (no psycopg), so the workers still import the app after patching.
    """
    from app.config import ConfigError, load_config

    try:
        load_config()
    except ConfigError as err:
        server.log.error("%s", err)
        raise SystemExit(f"Error: {err}") from None
