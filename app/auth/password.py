"""Forgotten passwords and invitations: emailed single-use links that set a password (CONTRACT §8.6)."""
from __future__ import annotations

import hashlib

from flask import current_app, flash, redirect, render_template, request, url_for

from app.access import PUBLIC, access
from app.auth.views import _home_for, bp, sign_in
from app.extensions import db, limiter
from app.models import TokenPurpose, utcnow
from app.services.accounts import (FormError, LinkError, LinkProblem, accept_invitation, check_link, email_error,
                                   normalize_email, request_password_reset, reset_password)

_THROTTLED = "Too many requests from here. Wait a minute and try again."


def _email_key() -> str:
    """The throttling key of the address a reset request names (hashed: no addresses in Redis)."""
    return "password-account:" + hashlib.sha256(normalize_email(request.form.get("email")).encode()).hexdigest()


def _token_key() -> str:
    """The throttling key of the link being redeemed."""
    token = (request.view_args or {}).get("token", "")
    return "password-token:" + hashlib.sha256(token.encode()).hexdigest()


def _refused(response) -> bool:
    return response.status_code >= 400  # a wrong link or a password to correct counts; success does not


def _client_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _account_limit() -> str:
    return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]


@bp.route("/password/forgot", methods=["GET", "POST"])
@access(PUBLIC)
# Throttled like sign-in, per client and per address: every request counts, since every answer is the same.
@limiter.limit(_client_limit, methods=["POST"], error_message=_THROTTLED)
@limiter.limit(_account_limit, key_func=_email_key, methods=["POST"], error_message=_THROTTLED)
def forgot_password():
    email = ""
    errors: dict[str, str] = {}
    if request.method == "POST":
        email = normalize_email(request.form.get("email"))
        problem = email_error(email)
        if problem:
            errors["email"] = problem
            return render_template("auth/forgot.html", errors=errors, email=email, sent=False), 422
        request_password_reset(email)
        db.session.commit()
        # The same page whether or not the address has an account.
        return render_template("auth/forgot.html", errors=errors, email="", sent=True)
    return render_template("auth/forgot.html", errors=errors, email=email, sent=False)


def _link_problem(problem: LinkProblem, purpose: TokenPurpose):
    status = 404 if problem == LinkProblem.UNKNOWN else 410
    return render_template("auth/link_problem.html", problem=problem.value, purpose=purpose.value), status


def _throttled_link(view):
    """Throttle a link's POSTs like sign-in, per client and per link; only refused attempts count."""
    view = limiter.limit(_account_limit, key_func=_token_key, methods=["POST"], deduct_when=_refused,
                         error_message=_THROTTLED)(view)
    return limiter.limit(_client_limit, methods=["POST"], deduct_when=_refused, error_message=_THROTTLED)(view)


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
@access(PUBLIC)
@_throttled_link
def reset_password_page(token: str):
    return _set_password(token, TokenPurpose.PASSWORD_RESET)


@bp.route("/invitations/<token>", methods=["GET", "POST"])
@access(PUBLIC)
@_throttled_link
def accept_invitation_page(token: str):
    return _set_password(token, TokenPurpose.INVITATION)


def _set_password(token: str, purpose: TokenPurpose):
    """One page for both links: a form that sets the password, then sign-in (reset) or the tenant (invitation)."""
    now = utcnow()
    try:
        link = check_link(token, purpose, now=now)
    except LinkError as err:
        return _link_problem(err.problem, purpose)
    if request.method == "GET":
        return render_template("auth/set_password.html", link=link, purpose=purpose.value, errors={})
    password = request.form.get("password") or ""
    confirm = request.form.get("password_confirm") or ""
    try:
        if purpose == TokenPurpose.PASSWORD_RESET:
            user = reset_password(token, password, confirm, now=now)
        else:
            user = accept_invitation(token, password, confirm, now=now)
    except LinkError as err:
        db.session.rollback()
        return _link_problem(err.problem, purpose)
    except FormError as err:
        db.session.rollback()
        return render_template("auth/set_password.html", link=link, purpose=purpose.value, errors=err.errors), 422
    if purpose == TokenPurpose.PASSWORD_RESET:
        db.session.commit()
        flash("Your password is changed and every other session is signed out. Sign in with your new password.",
              "success")
        return redirect(url_for("auth.login"), 303)
    sign_in(user)  # commits the new admin with their first session
    flash(f"Welcome to {link.tenant.name} on ServicePro.", "success")
    return redirect(_home_for(user), 303)
