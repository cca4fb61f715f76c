"""What the three rooms share: a stored event's lifecycle, the event as a handler sees it, a handler's result."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class EventStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


@dataclass(frozen=True)
class Incoming:
    """What a handler gets: the stored event's facts, never an ORM row (handlers commit)."""

    row_id: int
    stripe_event_id: str
    type: str
    obj: dict
    previous: dict
    created: datetime | None
    now: datetime
    livemode: bool | None = None
    account: str | None = None  # set on events of a connected account (Connect)


@dataclass(frozen=True)
class Result:
    status: EventStatus
    note: str | None = None
    tenant_id: int | None = None


def processed(note: str | None = None, tenant_id: int | None = None) -> Result:
    return Result(EventStatus.PROCESSED, note, tenant_id)


def ignored(note: str, tenant_id: int | None = None) -> Result:
    return Result(EventStatus.IGNORED, note, tenant_id)


def failed(note: str) -> Result:
    return Result(EventStatus.FAILED, note[:2000])


#: A handler: one event in, its result out (it commits its own changes).
Handler = Callable[[Incoming], Result]
#: A batch decision for one event type, made with the drainer's own connection (`execute(statement)`): the
#: results of the events it could decide, by row id; the others go to their handler.
QuickDecision = Callable[[Callable[..., Any], list[Incoming]], dict[int, Result]]


def incoming(row_id: int, stripe_event_id: str, type_: str, payload: Any, now: datetime) -> Incoming:
    """The event as a handler sees it, read defensively from a stored payload."""
    payload = payload if isinstance(payload, dict) else {}
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    try:
        created = datetime.fromtimestamp(int(payload["created"]), timezone.utc) if payload.get("created") else None
    except (TypeError, ValueError, OverflowError, OSError):
        created = None
    livemode, account = payload.get("livemode"), payload.get("account")
    obj, previous = data.get("object"), data.get("previous_attributes")
    return Incoming(row_id=row_id, stripe_event_id=stripe_event_id, type=type_,
                    obj=obj if isinstance(obj, dict) else {}, previous=previous if isinstance(previous, dict) else {},
                    created=created, now=now,
                    livemode=livemode if isinstance(livemode, bool) else None,
                    account=account if isinstance(account, str) and account else None)
