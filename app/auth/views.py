"""Sign in and out."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from app.access import PUBLIC, TENANT, access
from app.extensions import db, limiter
from app.models import utcnow
from app.services.tenants import authenticate

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str | None:
    if not target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and target.startswith("/") else None


def _home_for(user) -> str:
    return url_for("system_billing.index") if user.is_root else url_for("tenants.usage")


@bp.route("/")
@access(PUBLIC)
def index():
    if current_user.is_authenticated:
        return redirect(_home_for(current_user))
    return redirect(url_for("auth.login"))


@bp.route("/login", methods=["GET", "POST"])
@access(PUBLIC)
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"],
               error_message="Too many sign-in attempts. Wait a minute and try again.")
def login():
    errors: dict[str, str] = {}
    email = ""
    if request.method == "POST":
        email = (request.form.get("email") or "").strip()
        password = request.form.get("password") or ""
        if not email:
            errors["email"] = "Enter your email."
        if not password:
            errors["password"] = "Enter your password."
        if not errors:
            user = authenticate(email, password)
            if user is None:
                errors["form"] = "That email and password don't match an active account."
            else:
                login_user(user)
                user.last_login_at = utcnow()
                db.session.commit()
                return redirect(_safe_next(request.args.get("next")) or _home_for(user))
        return render_template("auth/login.html", errors=errors, email=email), 422
    return render_template("auth/login.html", errors=errors, email=email)


@bp.route("/logout", methods=["POST"])
@access(TENANT, billing_ok=True)
def logout():
    logout_user()
    flash("You have been signed out.", "info")
    return redirect(url_for("auth.login"))
