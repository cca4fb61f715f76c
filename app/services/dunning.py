"""Dunning: overdue days, the stage ladder and its effects. (Being built: see issue 6.)"""
from __future__ import annotations

from datetime import date, datetime


def reevaluate_tenant(tenant_id: int, *, as_of: date | None = None, now: datetime | None = None) -> None:
    """Re-derive one tenant's overdue days and dunning stage right now (called after any payment)."""
    return None
