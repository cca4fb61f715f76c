"""The root Integrations page: service tokens, push endpoints and the delivery log (root-only: unmarked views)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.services import integrations as svc

bp = Blueprint("integrations", __name__)


def _page(status: int = 200, *, errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
          new_token: str | None = None, new_secret: tuple[int, str] | None = None):
    return render_template("integrations/index.html", o=svc.overview(), scopes=svc.SCOPES, errors=errors or {},
                           form=form or {}, new_token=new_token, new_secret=new_secret), status


@bp.route("/admin/integrations")
def index():
    return _page()


@bp.route("/admin/integrations/tokens", methods=["POST"])
def create_token():
    form: dict[str, Any] = request.form.to_dict()
    try:
        token, plaintext = svc.create_token(form.get("name", ""), [form.get("scope") or ""],
                                            actor_user_id=current_user.id)
    except svc.IntegrationError as err:
        return _page(422, errors={f"token_{err.field}": err.message}, form=form)
    flash(f"Token “{token.name}” created. Copy it now: it is not shown again.", "success")
    return _page(new_token=plaintext)


@bp.route("/admin/integrations/tokens/<int:token_id>/revoke", methods=["POST"])
def revoke_token(token_id: int):
    token = svc.revoke_token(token_id, actor_user_id=current_user.id)
    if token is None:
        abort(404)
    flash(f"Token “{token.name}” is revoked: requests with it get 401 from now on.", "success")
    return redirect(url_for("integrations.index"), 303)


@bp.route("/admin/integrations/endpoints", methods=["POST"])
def add_endpoint():
    form: dict[str, Any] = request.form.to_dict()
    try:
        endpoint, secret = svc.add_endpoint(form.get("url", ""), form.get("secret") or None,
                                            actor_user_id=current_user.id)
    except svc.IntegrationError as err:
        return _page(422, errors={f"endpoint_{err.field}": err.message}, form=form)
    flash(f"Endpoint {endpoint.url} added: it receives every entitlements change from now on.", "success")
    generated = not (form.get("secret") or "").strip()
    return _page(new_secret=(endpoint.id, secret) if generated else None)


@bp.route("/admin/integrations/endpoints/<int:endpoint_id>/disable", methods=["POST"])
def disable_endpoint(endpoint_id: int):
    endpoint = svc.set_endpoint_enabled(endpoint_id, False, actor_user_id=current_user.id)
    if endpoint is None:
        abort(404)
    flash(f"Endpoint {endpoint.url} is disabled: its queued deliveries wait, new events skip it.", "success")
    return redirect(url_for("integrations.index"), 303)


@bp.route("/admin/integrations/endpoints/<int:endpoint_id>/enable", methods=["POST"])
def enable_endpoint(endpoint_id: int):
    endpoint = svc.set_endpoint_enabled(endpoint_id, True, actor_user_id=current_user.id)
    if endpoint is None:
        abort(404)
    flash(f"Endpoint {endpoint.url} is enabled again: its queued deliveries go out now.", "success")
    return redirect(url_for("integrations.index"), 303)


@bp.route("/admin/integrations/deliveries/<int:delivery_id>/replay", methods=["POST"])
def replay_delivery(delivery_id: int):
    delivery = svc.replay_delivery(delivery_id, actor_user_id=current_user.id)
    if delivery is None:
        abort(404)
    flash(f"Event {delivery.event_id} is queued for delivery again (same id).", "success")
    return redirect(url_for("integrations.index"), 303)
