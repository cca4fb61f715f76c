"""Stripe webhooks: verify, store, enqueue, answer."""
from __future__ import annotations

from flask import Blueprint, request

from app.access import PUBLIC, access
from app.errors import ApiError
from app.extensions import csrf, limiter
from app.services import webhooks

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@limiter.request_filter
def _not_rate_limited() -> bool:
    # Stripe's deliveries are signed; throttling them would only delay payments being recorded (and skipping the
    # limiter's per-request bookkeeping keeps the endpoint fast).
    return request.blueprint == "webhooks"


@bp.post("/stripe")
@csrf.exempt
@access(PUBLIC)
def stripe_webhook():
    """Receive a Stripe event: verify its signature on the raw body, store it once, queue it, answer at once."""
    try:
        received = webhooks.receive(request.get_data(), request.headers.get("Stripe-Signature"))
    except webhooks.InvalidEvent as err:
        raise ApiError(400, str(err), err.code) from err
    return {"received": True, "duplicate": received.duplicate}, 200
