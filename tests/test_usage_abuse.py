"""The usage API under abuse: dates that could never be billed, reused ids, absurd quantities, floods, big
and malformed bodies. Each case answers 4xx in the contract's error shape; nothing of a refused batch is stored."""
from __future__ import annotations

import http.client
import json
import logging
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Invoice, UsageEvent, UsageRollupDaily
from app.services import usage
from app.services.clock import month_bounds
from tests.factories import make_api_key, make_tenant, utc

EARLY = utc(2020, 1, 1)  # tenants that existed long before any usage in these tests


def post(client, key, events):
    return client.post("/api/usage/events", json={"events": events}, headers={"Authorization": f"Bearer {key}"})


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def ev(i, qty=5, at: str | None = None, metric="voice_minutes"):
    at = at or iso(datetime.now(timezone.utc) - timedelta(minutes=1))
    return {"id": f"e-{i}", "metric": metric, "quantity": qty, "occurred_at": at}


def stored() -> int:
    return db.session.scalar(select(func.count(UsageEvent.id)))


def error_of(resp) -> dict:
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]


def occurred_at_errors(resp) -> dict[str, str]:
    return {i: " ".join(f["occurred_at"]) for i, f in error_of(resp)["fields"]["events"].items()}


def invoice(tenant, first: date, last: date, status="open") -> Invoice:
    inv = Invoice(tenant_id=tenant.id, period_start=first, period_end=last, currency="usd", amount_due=0,
                  status=status)
    db.session.add(inv)
    db.session.commit()
    return inv


# -- dates that could never be billed -------------------------------------------------------------------

def test_events_dated_in_the_future_or_long_ago_are_refused_with_the_reason(client, plans):
    tenant = make_tenant(created_at=EARLY)
    key = make_api_key(tenant)
    now = datetime.now(timezone.utc)
    resp = post(client, key, [ev(1), ev(2, at="1970-01-01T00:00:00Z"), ev(3, at="9999-12-31T23:59:59Z"),
                              ev(4, at=iso(now + timedelta(hours=1)))])
    assert resp.status_code == 422 and error_of(resp)["code"] == "validation_error"
    why = occurred_at_errors(resp)
    assert set(why) == {"1", "2", "3"}  # the event of a minute ago is fine
    assert "before" in why["1"] and "previous billing month" in why["1"]
    assert "future" in why["2"] and "300 seconds" in why["2"] and "future" in why["3"]
    assert stored() == 0
    # A client clock a little ahead of ours is tolerated.
    assert post(client, key, [ev(5, at=iso(now + timedelta(minutes=2)))]).status_code == 201


def test_events_in_an_already_invoiced_month_are_refused(client, plans):
    tenant = make_tenant(created_at=EARLY)
    key = make_api_key(tenant)
    at = datetime.now(timezone.utc) - timedelta(minutes=1)
    first, last = month_bounds(at.year, at.month)
    void = invoice(tenant, first, last, status="void")
    assert post(client, key, [ev(1, at=iso(at))]).status_code == 201  # a void invoice does not close the month
    invoice(tenant, first, last, status="paid")
    resp = post(client, key, [ev(2, at=iso(at))])
    assert resp.status_code == 422
    assert occurred_at_errors(resp)["0"].endswith(f"is in {first:%Y-%m}, which has already been invoiced.")
    assert stored() == 1
    # One tenant's invoice closes nothing for another.
    other = make_tenant(created_at=EARLY)
    assert post(client, make_api_key(other), [ev(3, at=iso(at))]).status_code == 201
    assert void.status == "void"


def test_billing_window_boundaries(app, plans):
    now = utc(2026, 11, 15, 12)
    tenant = make_tenant(created_at=EARLY)

    def refused(*moments: datetime, who=tenant) -> dict[str, str]:
        events = [{"id": str(i), "metric": "voice_minutes", "quantity": 1, "occurred_at": m}
                  for i, m in enumerate(moments)]
        return {i: f["occurred_at"][0] for i, f in usage.unbillable_events(who, events, now).items()}

    assert refused(now + timedelta(seconds=300), utc(2026, 10, 1), now) == {}
    assert refused(now + timedelta(seconds=301), utc(2026, 9, 30, 23, 59, 59)).keys() == {"0", "1"}
    app.config["USAGE_MAX_CLOCK_SKEW_SECONDS"] = 3600
    assert refused(now + timedelta(seconds=3599)) == {}
    # Months before the tenant existed are never invoiced, so their usage is refused.
    young = make_tenant(created_at=utc(2026, 11, 3, 9))
    assert refused(utc(2026, 11, 1), who=young) == {}
    why = refused(utc(2026, 10, 31, 23), who=young)["0"]
    assert "2026-11-01" in why and "account was opened" in why
    # Invoiced months follow the billing zone: 03:00 UTC on Nov 1 is still October in New York.
    app.config["BILLING_TIMEZONE"] = "America/New_York"
    invoice(tenant, date(2026, 10, 1), date(2026, 10, 31))
    assert refused(utc(2026, 11, 1, 3))["0"].endswith("is in 2026-10, which has already been invoiced.")
    assert refused(utc(2026, 11, 1, 5)) == {}


def test_a_late_event_for_an_open_month_is_rolled_up_at_once(client, plans):
    # The nightly rollup rebuilds only the last two days; an older day must not wait forever.
    tenant = make_tenant(created_at=EARLY)
    key = make_api_key(tenant)
    at = datetime.now(timezone.utc) - timedelta(days=3)
    assert post(client, key, [ev(1, qty=7, at=iso(at)), ev(2, qty=1)]).status_code == 201
    assert post(client, key, [ev(3, qty=5, at=iso(at))]).status_code == 201
    rows = db.session.execute(select(UsageRollupDaily.day, UsageRollupDaily.quantity)).all()
    assert rows == [(at.date(), 12)]  # the recent event waits for the nightly rollup as before


# -- ids and quantities ------------------------------------------------------------------------------------

def test_zero_quantity_cannot_claim_an_id_and_a_reused_id_with_other_data_is_a_conflict(client, plans):
    tenant = make_tenant(created_at=EARLY)
    key = make_api_key(tenant)
    zero = post(client, key, [ev(1, qty=0)])
    assert zero.status_code == 422 and "quantity" in error_of(zero)["fields"]["events"]["0"]
    real = ev(1, qty=40)
    assert post(client, key, [real]).status_code == 201
    assert post(client, key, [real]).get_json() == {"accepted": 0, "duplicates": 1}  # a true retry
    for changed in ({**real, "quantity": 41}, {**real, "metric": "sms_outbound"},
                    {**real, "occurred_at": iso(datetime.now(timezone.utc) - timedelta(minutes=5))}):
        resp = post(client, key, [ev(2), changed])
        err = error_of(resp)
        assert resp.status_code == 409 and err["code"] == "event_id_conflict"
        assert list(err["fields"]["events"]) == ["1"] and "already recorded" in err["fields"]["events"]["1"]["id"][0]
    assert stored() == 1  # the new event of each conflicting batch was not stored either
    # The same instant written in another zone is the same event.
    moment = datetime.fromisoformat(real["occurred_at"])
    same = {**real, "occurred_at": moment.astimezone(timezone(timedelta(hours=-5))).isoformat()}
    assert post(client, key, [same]).status_code == 200


def test_an_id_claimed_before_the_fix_surfaces_as_a_conflict(client, plans):
    tenant = make_tenant(created_at=EARLY)
    real = ev(1, qty=90)
    usage.record_events(tenant, [{**real, "quantity": 0,
                                  "occurred_at": datetime.fromisoformat(real["occurred_at"])}])
    resp = post(client, make_api_key(tenant), [real])
    assert resp.status_code == 409 and "quantity 0" in error_of(resp)["fields"]["events"]["0"]["id"][0]


def test_quantities_are_bounded_per_event(client, plans):
    tenant = make_tenant(created_at=EARLY)
    key = make_api_key(tenant)
    for bad in (usage.MAX_EVENT_QUANTITY + 1, 10**30, True, -1):
        resp = post(client, key, [ev(1, qty=bad)])
        assert resp.status_code == 422 and "quantity" in error_of(resp)["fields"]["events"]["0"], bad
    assert post(client, key, [ev(1, qty=usage.MAX_EVENT_QUANTITY)]).status_code == 201


def test_one_tenants_overflowing_sums_never_stop_another_tenants_rollup(app, plans, caplog):
    day = date(2026, 10, 3)
    at = utc(2026, 10, 3, 12)
    tenants = [make_tenant(created_at=EARLY) for _ in range(5)]
    bad = tenants[2]
    # Rows stored before quantities were bounded: together they exceed a 64-bit integer.
    usage.record_events(bad, [{"id": f"x{i}", "metric": "voice_minutes", "quantity": 4 * 10**18,
                               "occurred_at": at} for i in range(3)])
    for n, t in enumerate(tenants):
        usage.record_events(t, [{"id": "ok", "metric": "sms_outbound", "quantity": n + 1, "occurred_at": at}])
    with caplog.at_level(logging.ERROR, logger="app.services.usage"):
        usage.rollup_day(day)
        usage.rollup_day(day)  # idempotent, in the fallback too
    rows = db.session.execute(select(UsageRollupDaily.tenant_id, UsageRollupDaily.metric,
                                     UsageRollupDaily.quantity)).all()
    assert sorted(rows) == sorted((t.id, "sms_outbound", n + 1) for n, t in enumerate(tenants) if t is not bad)
    assert f"tenant {bad.id}" in caplog.text and "2026-10-03" in caplog.text


# -- floods and bodies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_overrides", [{"USAGE_RATE_LIMIT": "3 per minute"}])
def test_each_api_key_is_rate_limited(client, plans):
    tenant = make_tenant(created_at=EARLY)
    key, second_key = make_api_key(tenant), make_api_key(tenant)
    assert [post(client, key, [ev(i)]).status_code for i in range(3)] == [201] * 3
    # The same key sent another way shares its budget.
    limited = client.post("/api/usage/events", json={"events": [ev(9)]}, headers={"X-API-Key": key})
    err = error_of(limited)
    assert limited.status_code == 429 and err["code"] == "rate_limited" and "3 per minute" in err["message"]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert post(client, second_key, [ev(4)]).status_code == 201  # another key has its own budget
    assert stored() == 4


def test_a_body_over_the_cap_is_413_before_it_is_parsed(client, plans):
    key = make_api_key(make_tenant(created_at=EARLY))
    junk = b"[" * (usage_body_cap() + 1)  # would be a 400 (or worse) if it were parsed
    resp = client.post("/api/usage/events", data=junk, content_type="application/json",
                       headers={"Authorization": f"Bearer {key}"})
    err = error_of(resp)
    assert resp.status_code == 413 and err["code"] == "payload_too_large" and "1 MiB" in err["message"]


def test_a_chunked_body_over_the_cap_is_413_too(live_server, plans):
    key = make_api_key(make_tenant(created_at=EARLY))
    host, port = live_server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b" " * 65536 for _ in range(usage_body_cap() // 65536 + 2))
    conn.request("POST", "/api/usage/events", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and body["error"]["code"] == "payload_too_large", body


def usage_body_cap() -> int:
    from app.schemas.usage import MAX_BODY_BYTES

    return MAX_BODY_BYTES


MALFORMED_BODIES = {
    "far future with a zone": {"events": [ev(1, at="9999-12-31T23:59:59-05:00")]},
    "far past with a zone": {"events": [ev(1, at="0001-01-01T00:00:00+05:00")]},
    "nested lists": b"[" * 100_000,
    "nested events": b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested object in an event": b'{"events": [{"id": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}",
    "huge integer": b'{"events": [{"id": "a", "metric": "voice_minutes", "quantity": ' + b"9" * 5000 + b"}]}",
    "NaN quantity": b'{"events": [{"id": "a", "metric": "voice_minutes", "quantity": NaN}]}',
    "lone surrogate in id": {"events": [ev("\udc00")]},
    "NUL in id": {"events": [ev("\x00")]},
    "id not a string": {"events": [{**ev(1), "id": 12}]},
    "occurred_at a number": {"events": [{**ev(1), "occurred_at": 1_700_000_000}]},
    "impossible date": {"events": [ev(1, at="2026-02-30T10:00:00Z")]},
    "offset out of range": {"events": [ev(1, at="2026-10-03T10:00:00+25:00")]},
    "events is an object": {"events": {"0": ev(1)}},
    "events is null": {"events": None},
    "body is a number": 7,
    "body is a string": "events",
    "body is null": None,
    "not UTF-8": b'{"events": [{"id": "\xff\xfe"}]}',
}


@pytest.mark.parametrize("name", list(MALFORMED_BODIES))
def test_every_malformed_body_is_a_4xx_in_the_error_shape(client, plans, name):
    key = make_api_key(make_tenant(created_at=EARLY))
    body = MALFORMED_BODIES[name]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = client.post("/api/usage/events", data=data, content_type="application/json",
                       headers={"Authorization": f"Bearer {key}"})
    assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.get_data(as_text=True)[:300])
    error_of(resp)
    assert stored() == 0

