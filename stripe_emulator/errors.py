"""Stripe-shaped API errors.

Every failure of the emulated API is raised as :class:`StripeError` and
rendered as Stripe renders it::

    HTTP 402
    {"error": {"type": "card_error", "code": "card_declined",
               "decline_code": "generic_decline",
               "message": "Your card was declined.", ...}}

``saved`` tells the idempotency layer whether the response is stored under
the request's Idempotency-Key.  Stripe stores results "only after the
execution of an endpoint begins": parameter validation failures are not
stored, business outcomes such as card declines are.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

DOC_BASE = "https://stripe.com/docs/error-codes/"


class StripeError(Exception):
    """An API error with its HTTP status and Stripe error object."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        code: Optional[str] = None,
        param: Optional[str] = None,
        decline_code: Optional[str] = None,
        saved: bool = True,
        extra: Optional[Dict[str, Any]] = None,
        headers: Optional[Dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.saved = saved
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self, request_id: Optional[str] = None) -> Dict[str, Any]:
        err: Dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = DOC_BASE + self.code.replace("_", "-")
        if self.param is not None:  # Stripe omits `param` when no parameter is at fault
            err["param"] = self.param
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        err.update(self.extra)
        if request_id:
            err["request_log_url"] = (
                "https://dashboard.stripe.com/test/logs/%s" % request_id
            )
        return {"error": err}


def invalid_request(message: str, param: Optional[str] = None, code: Optional[str] = None,
                    *, saved: bool = True, status: int = 400) -> StripeError:
    """400 invalid_request_error (business rule, saved under idempotency key)."""
    return StripeError(status, "invalid_request_error", message, code=code, param=param, saved=saved)


def param_error(message: str, param: Optional[str] = None, code: str = "parameter_unknown") -> StripeError:
    """400 invalid_request_error from parameter validation (never saved)."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, saved=False)


def unknown_parameter(name: str) -> StripeError:
    return param_error("Received unknown parameter: %s" % name, name, "parameter_unknown")


def missing_parameter(name: str) -> StripeError:
    return param_error("Missing required param: %s." % name, name, "parameter_missing")


def invalid_value(message: str, name: Optional[str]) -> StripeError:
    """400 for a badly typed/enum value ("Invalid integer: abc"), never saved."""
    return StripeError(400, "invalid_request_error", message, param=name, saved=False)


def resource_missing(kind: str, obj_id: str, param: str = "id") -> StripeError:
    """404 "No such customer: 'cus_x'" (kind is Stripe's wording, e.g. "customer")."""
    return StripeError(
        404, "invalid_request_error", "No such %s: '%s'" % (kind, obj_id),
        code="resource_missing", param=param,
    )


def card_error(code: str, message: str, decline_code: Optional[str] = None,
               extra: Optional[Dict[str, Any]] = None, param: Optional[str] = None) -> StripeError:
    """402 card_error (saved under the idempotency key, as Stripe does)."""
    return StripeError(402, "card_error", message, code=code, decline_code=decline_code,
                       param=param, extra=extra)


def api_error(message: str = "An unknown error occurred") -> StripeError:
    return StripeError(500, "api_error", message, saved=False)


def rate_limited() -> StripeError:
    return StripeError(
        429, "invalid_request_error",
        "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        code="rate_limit", saved=False,
    )


def authentication_missing() -> StripeError:
    return StripeError(
        401, "invalid_request_error",
        "You did not provide an API key. You need to provide your API key in the Authorization "
        "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
        "https://stripe.com/docs/api#authentication for details, or we can help at "
        "https://support.stripe.com/.",
        saved=False,
    )


def authentication_invalid(key: str) -> StripeError:
    shown = (key[:8] + "*" * 4 + key[-4:]) if len(key) > 12 else "****"
    return StripeError(
        401, "invalid_request_error", "Invalid API Key provided: %s" % shown, saved=False,
    )


def idempotency_mismatch(key: str) -> StripeError:
    return StripeError(
        400, "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were first "
        "used with. Try using a key other than '%s' if you meant to execute a different request." % key,
        saved=False,
    )


def idempotency_in_use(key: str) -> StripeError:
    return StripeError(
        409, "idempotency_error",
        "There is currently another in-progress request using this Idempotent Key (that probably "
        "means you submitted twice, and the other request is still going through): %s. Please try "
        "again later." % key,
        code="idempotency_key_in_use", saved=False,
    )


def unrecognized_url(method: str, path: str) -> StripeError:
    return StripeError(
        404, "invalid_request_error",
        "Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at "
        "https://support.stripe.com/." % (method.upper(), path),
        saved=False,
    )
