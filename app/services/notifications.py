"""Tenant emails through the outbox. (Being built: see issue 6.)"""
from __future__ import annotations

from datetime import datetime


def notify_payment_failed(invoice, *, now: datetime | None = None) -> None:
    """Queue the payment-failed email (with the portal link) for an invoice's first failed charge."""
    return None


def notify_action_required(invoice, *, now: datetime | None = None) -> None:
    """Queue the authentication-required email with the hosted invoice link."""
    return None
