"""Stripe webhooks: the route. POSTs are answered by app/webhooks/endpoint.py before Flask sees them."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from app.access import PUBLIC, access
from app.extensions import csrf, limiter
from app.webhooks.endpoint import answer

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@limiter.request_filter
def _not_rate_limited() -> bool:
    # Stripe's deliveries are signed; throttling them would only delay payments being recorded.
    return request.blueprint == "webhooks"


@bp.post("/stripe")
@csrf.exempt
@access(PUBLIC)
def stripe_webhook():
    """Receive a Stripe event: verify its signature on the raw body, store it once, queue it, answer at once.

    The WSGI endpoint in front of the app serves these POSTs (same `answer`, none of Flask's per-request
    machinery); this view keeps the route in the URL map, so other methods get Flask's 405 and the access
    policy and security matrices describe it. It answers the same way if the app is served without it.
    """
    status, body = answer(current_app, request.get_data(), request.headers.get("Stripe-Signature"))
    return body, status
