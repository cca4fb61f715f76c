"""Structured logs carry the job and tenant they were written for."""
from __future__ import annotations

import io
import json
import logging

from app.logs import ContextFilter, JsonFormatter, log_context


def test_json_log_lines_carry_job_and_tenant_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("servicepro.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with log_context(job_id="invoice-7-2026-10", tenant_id=7):
            logger.info("charged %s", "SP-2026-10-000001")
        logger.info("outside any job")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["msg"] == "charged SP-2026-10-000001"
    assert (inside["job_id"], inside["tenant_id"]) == ("invoice-7-2026-10", 7)
    assert (outside["job_id"], outside["tenant_id"]) == ("-", "-")
