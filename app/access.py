"""Who may reach which route: deny by default, decided in one place for every request.

Every view is root-only unless marked otherwise with @access(...). Tenant admins of a restricted tenant
reach only views also marked billing_ok. API-key views authenticate themselves (see app/api/auth.py).
"""
from __future__ import annotations

from typing import Callable

from flask import Flask, abort, current_app, flash, g, redirect, request, url_for
from flask_login import current_user

from app.extensions import login_manager

PUBLIC, TENANT, API = "public", "tenant", "api"


def access(level: str, *, billing_ok: bool = False) -> Callable:
    """Mark a view as reachable by `level` ("public", "tenant" or "api"); unmarked views are root-only."""

    def deco(view):
        view._access = level
        view._billing_ok = billing_ok
        return view

    return deco


def view_policy(endpoint: str | None) -> tuple[str, bool]:
    """Return (level, billing_ok) for an endpoint; unknown or unmarked endpoints are root-only."""
    if endpoint is None:
        return PUBLIC, True  # 404s are answered by the error handler
    if endpoint == "static" or endpoint.endswith(".static"):
        return PUBLIC, True
    view = current_app.view_functions.get(endpoint)
    return getattr(view, "_access", "root"), getattr(view, "_billing_ok", False)


@login_manager.user_loader
def load_user(session_key: str):
    """The user of a live server-side session (app/services/sessions.py); None signs the browser out."""
    from app.services.sessions import user_for_session

    return user_for_session(session_key)


def _deny_unauthenticated():
    from app.errors import json_error, wants_json

    if wants_json():
        return json_error(401, "Sign in first.", "unauthorized")
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


def enforce_access():
    """before_request: authenticate, authorize by the view's policy, confine restricted tenants."""
    level, billing_ok = view_policy(request.endpoint)
    g.scope_tenant_id = None
    if level in (PUBLIC, API):
        return None
    if not current_user.is_authenticated:
        return _deny_unauthenticated()
    if current_user.is_root:
        return None
    if level != TENANT:
        abort(403, "This page is for platform administrators.")
    g.scope_tenant_id = current_user.tenant_id
    tenant = current_user.tenant
    from app.models import DunningStage

    if tenant.dunning_stage == DunningStage.RESTRICTED and not billing_ok:
        from app.errors import json_error, wants_json

        message = ("Your account is restricted because of an unpaid balance. Only billing is available until "
                   "the overdue invoices are paid.")
        if wants_json():
            return json_error(403, message, "account_restricted")
        flash(message, "restricted")  # base.html lets the overdue banner say it, once
        if request.headers.get("HX-Request"):
            from flask import make_response

            resp = make_response("", 204)
            resp.headers["HX-Redirect"] = url_for("billing.index")
            return resp
        return redirect(url_for("billing.index"))
    return None


def may_visit(endpoint: str) -> bool:
    """Whether the signed-in user may open an endpoint's page (the navigation shows only those)."""
    level, billing_ok = view_policy(endpoint)
    if level in (PUBLIC, API):
        return True
    if not current_user.is_authenticated:
        return False
    if current_user.is_root:
        return True
    if level != TENANT:
        return False
    from app.models import DunningStage

    return billing_ok or current_user.tenant.dunning_stage != DunningStage.RESTRICTED


def _fresh_request_state() -> None:
    # A request reuses an already-pushed app context (tests, CLI-driven requests): never let a previous
    # request's signed-in user or tenant scope carry over through `g`.
    g.pop("_login_user", None)
    g.pop("scope_tenant_id", None)
    g.pop("csrf_token", None)  # Flask-WTF caches the session's token in g


def init_app(app: Flask) -> None:
    from app.proxies import TrustedProxies, trusted_networks

    # Who is calling: behind configured proxies, request.remote_addr (throttling, session records) is the
    # client's address taken from X-Forwarded-For; otherwise the header is ignored.
    networks = trusted_networks(app.config.get("TRUSTED_PROXIES"))
    if networks:
        app.wsgi_app = TrustedProxies(app.wsgi_app, networks)
    app.before_request(_fresh_request_state)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = "basic"
    app.before_request(enforce_access)
    app.jinja_env.globals["may_visit"] = may_visit
