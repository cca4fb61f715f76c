"""Structured logs: every record carries the RQ job id and tenant id it was written for.

LOG_FORMAT=json (the default under gunicorn/workers in production) writes one JSON object per line;
otherwise a readable line with `job=… tenant=…` appended.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
from contextlib import contextmanager

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("servicepro_log_context", default={})


@contextmanager
def log_context(**fields):
    """Attach fields (job_id, tenant_id, …) to every log record written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copy the current log context (and the current RQ job, if any) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = dict(_context.get())
        if "job_id" not in ctx:
            try:
                from rq import get_current_job

                job = get_current_job()
                if job is not None:
                    ctx["job_id"] = job.id
            except Exception:  # noqa: BLE001 - logging must never fail
                pass
        for key in ("job_id", "tenant_id", "request_id"):
            setattr(record, key, ctx.get(key, "-"))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                "logger": record.name, "msg": record.getMessage(), "job_id": getattr(record, "job_id", "-"),
                "tenant_id": getattr(record, "tenant_id", "-"), "process": record.process}
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure(level: str | None = None) -> None:
    """Install the context filter and formatter on the root logger (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(f, ContextFilter) for h in root.handlers for f in h.filters):
        return
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    fmt = os.environ.get("LOG_FORMAT", "text")
    for handler in root.handlers:
        handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s [job=%(job_id)s tenant=%(tenant_id)s]"))
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    for noisy in ("alembic", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
