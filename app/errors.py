"""Error handling: one JSON shape for the API, HTML pages for people."""
from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "rate_limited", 500: "internal_error",
}


class ApiError(Exception):
    """An error the JSON API answers with the contract's shape."""

    def __init__(self, status: int, message: str, code: str | None = None, fields: dict | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or CODES.get(status, "error")
        self.fields = fields or {}


def wants_json() -> bool:
    """True for the JSON API and webhook routes, and for clients that ask for JSON."""
    path = request.path
    if path.startswith("/api/") or path.startswith("/webhooks/"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_body(status: int, message: str, code: str | None = None, fields: dict | None = None) -> dict:
    """The contract's one JSON error shape, as a dict."""
    return {"error": {"code": code or CODES.get(status, "error"), "message": message, "fields": fields or {}}}


def json_error(status: int, message: str, code: str | None = None, fields: dict | None = None):
    """Render the contract's one JSON error shape."""
    return jsonify(error_body(status, message, code, fields)), status


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return json_error(err.status, err.message, err.code, err.fields)

    @app.errorhandler(ValidationError)
    def _validation(err: ValidationError):
        fields = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        return json_error(422, "The request has invalid fields.", "validation_error", fields)

    @app.errorhandler(CSRFError)
    def _csrf(err: CSRFError):
        if wants_json():
            return json_error(400, err.description, "csrf_failed")
        return render_template("errors/error.html", status=400, title="Form expired",
                               message="Your form could not be verified (missing or expired security token). "
                                       "Go back, reload the page and try again."), 400

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        status = err.code or 500
        if wants_json():
            resp, status = json_error(status, err.description or err.name)
        else:
            resp = render_template("errors/error.html", status=status, title=err.name, message=err.description)
        if status == 405 and hasattr(err, "valid_methods") and err.valid_methods:
            from flask import make_response

            r = make_response(resp, status)
            r.headers["Allow"] = ", ".join(err.valid_methods)
            return r
        return resp, status

    @app.errorhandler(Exception)
    def _unhandled(err: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        from app.extensions import db

        db.session.rollback()
        if wants_json():
            return json_error(500, "Something went wrong on our side; nothing was changed.")
        return render_template("errors/error.html", status=500, title="Something went wrong",
                               message="Something went wrong on our side. The team has been notified."), 500
