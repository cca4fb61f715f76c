"""Operations endpoints for load balancers and alerts."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, jsonify
from flask_login import current_user
from sqlalchemy import func, select, text

from app import queue
from app.access import PUBLIC, access
from app.extensions import db, rq
from app.models import WebhookEvent

bp = Blueprint("ops", __name__)


@bp.route("/healthz")
@access(PUBLIC)
def healthz():
    """`{"status"}`, 503 when a store is down; root admins also get checks, queue depths and ages."""
    now = datetime.now(timezone.utc)
    report: dict = {"status": "ok", "checks": {}}
    try:
        db.session.execute(text("select 1"))
        oldest = db.session.scalar(select(func.min(WebhookEvent.received_at))
                                   .where(WebhookEvent.status.in_(("pending", "failed"))))
        report["checks"]["database"] = "ok"
        report["oldest_pending_webhook_age_s"] = round((now - oldest).total_seconds(), 1) if oldest else None
    except Exception as err:  # noqa: BLE001 - a health check reports, it does not raise
        db.session.rollback()
        report["checks"]["database"] = f"error: {type(err).__name__}"
        report["status"] = "degraded"
    try:
        rq.connection.ping()
        report["checks"]["redis"] = "ok"
        report["queues"] = queue.queue_depths()
        report["scheduler_heartbeat_age_s"] = queue.scheduler_heartbeat_age(now)
    except Exception as err:  # noqa: BLE001
        report["checks"]["redis"] = f"error: {type(err).__name__}"
        report["status"] = "degraded"
    code = 200 if report["status"] == "ok" else 503
    if not getattr(current_user, "is_root", False) and not _service_token_presented():
        # Queue depths and ages tell an outsider how busy and how far behind billing is: status only.
        return jsonify({"status": report["status"]}), code
    return jsonify(report), code


def _service_token_presented() -> bool:
    """Whether the request carries a live service token (monitoring may read the details with one)."""
    from flask import request

    from app.services.integrations import use_token

    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return False
    try:
        return use_token(header[7:].strip()) is not None
    except Exception:  # noqa: BLE001 - the database may be the thing that is down; then status only
        db.session.rollback()
        return False


@bp.route("/admin/jobs")
def jobs():
    """Root admins' job monitor: queues, workers, failed jobs, scheduler heartbeat."""
    from flask import render_template

    return render_template("ops/jobs.html", snap=queue.snapshot())


@bp.route("/admin/jobs/failed/<job_id>/requeue", methods=["POST"])
def requeue_job(job_id: str):
    from flask import flash, redirect, url_for

    if queue.requeue_failed(job_id):
        flash(f"Job {job_id} is queued again.", "success")
    else:
        flash(f"No failed job {job_id} to requeue.", "error")
    return redirect(url_for("ops.jobs"), 303)
