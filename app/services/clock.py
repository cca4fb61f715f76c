"""Time in the billing zone. Services take `now`; these helpers only convert."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from flask import current_app

from app.models.base import utcnow  # the one definition (models need it for column defaults)


def billing_tz() -> ZoneInfo:
    """The zone that defines billing days and months (BILLING_TIMEZONE)."""
    return ZoneInfo(current_app.config.get("BILLING_TIMEZONE", "UTC"))


def local_day(moment: datetime, tz: ZoneInfo | None = None) -> date:
    """The billing-zone calendar day of an aware instant."""
    return moment.astimezone(tz or billing_tz()).date()


def today(now: datetime | None = None) -> date:
    """Today's date in the billing zone."""
    return local_day(now or utcnow())


def day_start_utc(day: date, tz: ZoneInfo | None = None) -> datetime:
    """The UTC instant at which a billing-zone day begins."""
    return datetime.combine(day, time.min, tzinfo=tz or billing_tz()).astimezone(timezone.utc)


def month_bounds(year: int, month: int) -> tuple[date, date]:
    """First and last day (inclusive) of a calendar month."""
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def previous_month(day: date) -> tuple[int, int]:
    """(year, month) of the month before the one containing `day`."""
    return (day.year - 1, 12) if day.month == 1 else (day.year, day.month - 1)


def parse_period(text: str) -> tuple[int, int]:
    """Parse YYYY-MM into (year, month); ValueError when malformed."""
    try:
        year_s, month_s = text.split("-")
        year, month = int(year_s), int(month_s)
        date(year, month, 1)
    except (ValueError, AttributeError):
        raise ValueError(f"period must look like YYYY-MM, got {text!r}") from None
    return year, month
