"""ServicePro Billing: the application factory."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: configuration, extensions, blueprints, error handlers, commands."""
    from app.config import INSTANCE_DIR, load_config

    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.config.update(load_config(config))
    if not app.config.get("TESTING"):
        from app import logs

        logs.configure()
    register_extensions(app)
    register_blueprints(app)
    register_webhook_endpoint(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def register_extensions(app: Flask) -> None:
    from app import access, tenancy
    from app.services import dunning, entitlements
    from app.extensions import csrf, db, htmx, limiter, login_manager, migrate, rq

    db.init_app(app)
    migrate.init_app(app, db, directory=str(app.root_path + "/../migrations"), render_as_batch=True)
    csrf.init_app(app)
    htmx.init_app(app)
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config["REDIS_URL"])
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # Redis down must not turn sign-in or usage ingestion into 500s: limits then hold per process, in memory.
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    limiter.init_app(app)
    login_manager.init_app(app)
    rq.init_app(app)
    access.init_app(app)
    tenancy.init_app(app)
    dunning.init_app(app)  # the overdue banner's data on every tenant admin page
    entitlements.init_app(app)  # changes of a tenant's entitlements are stamped and pushed (issue 16)
    register_security_headers(app)


def register_security_headers(app: Flask) -> None:
    """CSP that allows only our own scripts, frame denial, HSTS in production (flask-talisman)."""
    from flask_talisman import Talisman

    production = app.config["PRODUCTION"]
    Talisman(
        app,
        force_https=production,
        strict_transport_security=production,
        session_cookie_secure=production,
        frame_options="DENY",
        content_security_policy={
            "default-src": "'self'",
            "script-src": "'self'",
            # Inline style attributes (progress bars, chart bars) are allowed; scripts never are.
            "style-src": "'self' 'unsafe-inline'",
            "img-src": "'self' data:",
            "frame-ancestors": "'none'",
            "base-uri": "'self'",
            "object-src": "'none'",
        },
        referrer_policy="strict-origin-when-cross-origin",
    )

    @app.after_request
    def _vary_on_htmx(response):
        # HTMX requests get fragments, full loads get pages: caches must keep them apart.
        response.vary.add("HX-Request")
        return response


def register_blueprints(app: Flask) -> None:
    from app.api.entitlements import bp as entitlements_api_bp
    from app.api.openapi import bp as openapi_bp
    from app.api.views import bp as api_bp
    from app.ops.views import bp as ops_bp
    from app.auth import password  # noqa: F401 - its forgot / reset / invitation routes join the auth blueprint
    from app.auth.views import bp as auth_bp
    from app.billing.views import bp as billing_bp
    from app.integrations.views import bp as integrations_bp
    from app.system_billing.views import bp as system_billing_bp
    from app.tenants.views import bp as tenants_bp
    from app.webhooks.views import bp as webhooks_bp

    for bp in (auth_bp, tenants_bp, billing_bp, system_billing_bp, api_bp, openapi_bp, webhooks_bp, ops_bp):
        app.register_blueprint(bp)
    for bp in (entitlements_api_bp, integrations_bp):  # issue 16
        app.register_blueprint(bp)
    from app.team.views import bp as team_bp

    app.register_blueprint(team_bp)  # issue 14
    from app.reports.views import bp as reports_bp  # issue 18

    app.register_blueprint(reports_bp)
    from app.billing.plan_change import bp as plan_change_bp  # issue 17
    from app.system_billing.money import bp as money_bp  # issue 17

    for bp in (plan_change_bp, money_bp):
        app.register_blueprint(bp)


def register_webhook_endpoint(app: Flask) -> None:
    """Stripe's deliveries are answered in front of Flask (see app/webhooks/endpoint.py)."""
    from app.webhooks.endpoint import StripeWebhookEndpoint

    app.wsgi_app = StripeWebhookEndpoint(app, app.wsgi_app)


def register_error_handlers(app: Flask) -> None:
    from app.errors import init_app

    init_app(app)


def register_commands(app: Flask) -> None:
    from app.cli import init_app

    init_app(app)
