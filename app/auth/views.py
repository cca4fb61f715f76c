"""Sign in and out."""
from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app.access import PUBLIC, TENANT, access
from app.extensions import db, limiter
from app.models import utcnow
from app.services.sessions import end_session, start_session
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


def _account_key() -> str:
    """The throttling key of the account a sign-in attempt names (hashed: no addresses in Redis)."""
    email = (request.form.get("email") or "").strip().lower()
    return "login-account:" + hashlib.sha256(email.encode()).hexdigest()


def _failed(response) -> bool:
    return response.status_code != 302  # only a successful sign-in redirects; everything else counts


_THROTTLED = "Too many sign-in attempts. Wait a minute and try again."


def sign_in(user) -> None:
    """Start a fresh server-side session for `user` in this browser and commit."""
    if current_user.is_authenticated:
        end_session(current_user.get_id())  # someone else was signed in here: their session ends, not lingers
    # A fresh session: nothing of the anonymous one survives sign-in, its CSRF token included.
    session.clear()
    g.pop("csrf_token", None)
    now = utcnow()
    start_session(user, now=now, user_agent=request.user_agent.string, ip_address=request.remote_addr)
    login_user(user)
    user.last_login_at = now
    db.session.commit()


@bp.route("/login", methods=["GET", "POST"])
@access(PUBLIC)
# Per client (request.remote_addr, from X-Forwarded-For only behind TRUSTED_PROXIES) and per account, so
# neither one address nor many addresses can guess freely; the same answer for known and unknown accounts.
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"], deduct_when=_failed,
               error_message=_THROTTLED)
@limiter.limit(lambda: current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"], key_func=_account_key, methods=["POST"],
               deduct_when=_failed, error_message=_THROTTLED)
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
                sign_in(user)
                return redirect(_safe_next(request.args.get("next")) or _home_for(user))
        return render_template("auth/login.html", errors=errors, email=email), 422
    return render_template("auth/login.html", errors=errors, email=email)


@bp.route("/logout", methods=["POST"])
@access(TENANT, billing_ok=True)
def logout():
    end_session(current_user.get_id())  # this browser only: the user's other sessions stay signed in
    db.session.commit()
    logout_user()
    session.clear()
    g.pop("csrf_token", None)
    flash("You have been signed out.", "info")
    return redirect(url_for("auth.login"))
