"""Reading Stripe objects in either shape: a StripeObject from the API or a webhook's plain dict.

Pure helpers, no Stripe calls: the gateway, payments and webhooks read fields and references through them.
"""
from __future__ import annotations

from typing import Any


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a Stripe object or dict; `default` when the object or the value is missing (None)."""
    if obj is None:
        return default
    if isinstance(obj, dict) or hasattr(obj, "get"):
        value = obj.get(name, default)
    else:
        value = getattr(obj, name, default)
    return default if value is None else value


def id_of(value: Any) -> str | None:
    """The id of an expandable reference ("cus_…" or an expanded {"id": "cus_…"}); None when there is none."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def customer_of(obj: dict) -> str | None:
    """The Stripe customer an object belongs to (a customer object is its own)."""
    return id_of(obj.get("id") if obj.get("object") == "customer" else obj.get("customer"))
