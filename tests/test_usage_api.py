"""Usage ingestion through the JSON API, and the daily rollups built from it."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import func, select

from app.extensions import db
from app.models import UsageEvent, UsageRollupDaily
from tests import factories
from tests.factories import make_api_key, utc

# Usage is accepted only for days an invoice can still count (see test_usage_abuse.py), so these tests date
# their events relative to today, for tenants that exist since long before.
DAY = datetime.now(timezone.utc).date() - timedelta(days=2)
EARLY = utc(2020, 1, 1)


def stamp(day: date = DAY, clock: time = time(10)) -> str:
    return datetime.combine(day, clock, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")


def make_tenant(*args, **kw):
    return factories.make_tenant(*args, **{"created_at": EARLY, **kw})


def post_events(client, key, events, **kw):
    return client.post("/api/usage/events", json={"events": events},
                       headers={"Authorization": f"Bearer {key}"}, **kw)


def ev(i, metric="voice_minutes", qty=5, at: str | None = None):
    return {"id": f"e-{i}", "metric": metric, "quantity": qty, "occurred_at": at or stamp()}


def stored_count():
    return db.session.scalar(select(func.count(UsageEvent.id)))


def test_batch_is_stored_and_retry_never_double_counts(client, plans):
    tenant = make_tenant()
    key = make_api_key(tenant)
    batch = [ev(i, qty=i) for i in range(1, 501)]
    first = post_events(client, key, batch)
    assert first.status_code == 201 and first.get_json() == {"accepted": 500, "duplicates": 0}
    again = post_events(client, key, batch)
    assert again.status_code == 200 and again.get_json() == {"accepted": 0, "duplicates": 500}
    assert stored_count() == 500
    assert db.session.scalar(select(func.sum(UsageEvent.quantity))) == sum(range(1, 501))


def test_same_client_ids_from_two_tenants_are_distinct(client, plans):
    a, b = make_tenant(), make_tenant()
    assert post_events(client, make_api_key(a), [ev(1)]).status_code == 201
    assert post_events(client, make_api_key(b), [ev(1)]).status_code == 201
    assert stored_count() == 2


def test_each_bad_input_is_422_with_field_errors_and_nothing_stored(client, plans):
    tenant = make_tenant()
    key = make_api_key(tenant)
    cases = {
        "metric": ev(2, metric="fax_pages"),
        "quantity": ev(3, qty=-1),
        "occurred_at": ev(4, at="yesterday-ish"),
    }
    for field, bad in cases.items():
        resp = post_events(client, key, [ev(1), bad])
        body = resp.get_json()
        assert resp.status_code == 422, field
        assert body["error"]["code"] == "validation_error"
        assert field in body["error"]["fields"]["events"]["1"], body
        assert stored_count() == 0  # the good event of the batch was not stored either


def test_naive_timestamp_and_float_quantity_are_rejected(client, plans):
    tenant = make_tenant()
    key = make_api_key(tenant)
    resp = post_events(client, key, [ev(1, qty=1.5), ev(2, at="2026-10-03T10:00:00")])
    fields = resp.get_json()["error"]["fields"]["events"]
    assert resp.status_code == 422 and "quantity" in fields["0"] and "occurred_at" in fields["1"]


def test_batch_limits_and_malformed_bodies(client, plans):
    tenant = make_tenant()
    key = make_api_key(tenant)
    too_many = post_events(client, key, [ev(i) for i in range(1001)])
    assert too_many.status_code == 422 and "events" in too_many.get_json()["error"]["fields"]
    assert post_events(client, key, []).status_code == 422
    dup = post_events(client, key, [ev(1), ev(1)])
    assert dup.status_code == 422
    not_json = client.post("/api/usage/events", data="events=1", headers={"Authorization": f"Bearer {key}"})
    assert not_json.status_code == 415 and not_json.get_json()["error"]["code"] == "unsupported_media_type"
    broken = client.post("/api/usage/events", data="{", content_type="application/json",
                         headers={"Authorization": f"Bearer {key}"})
    assert broken.status_code == 400 and broken.get_json()["error"]["code"] == "invalid_json"
    assert stored_count() == 0


def test_missing_or_wrong_api_key_is_401(client, plans):
    make_tenant()
    assert client.post("/api/usage/events", json={"events": [ev(1)]}).status_code == 401
    resp = post_events(client, "sp_live_not-a-key", [ev(1)])
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_api_key"


def test_rollup_matches_events_and_late_event_corrects_it(client, plans, app):
    a, b = make_tenant(), make_tenant()
    ka, kb = make_api_key(a), make_api_key(b)
    post_events(client, ka, [ev(1, qty=7), ev(2, qty=3), ev(3, "sms_outbound", 11),
                             ev(4, qty=100, at=stamp(DAY + timedelta(days=1), time(0))),  # next day
                             ev(5, qty=9, at=stamp(DAY - timedelta(days=1), time(23, 59, 59)))])  # previous day
    post_events(client, kb, [ev(1, qty=2)])
    runner = app.test_cli_runner()
    out = runner.invoke(args=["usage", "rollup", "--day", DAY.isoformat()])
    assert out.exit_code == 0, out.output

    def rollups():
        rows = db.session.execute(select(UsageRollupDaily.tenant_id, UsageRollupDaily.metric,
                                         UsageRollupDaily.quantity).where(UsageRollupDaily.day == DAY))
        return {(t, m): q for t, m, q in rows}

    assert rollups() == {(a.id, "voice_minutes"): 10, (a.id, "sms_outbound"): 11, (b.id, "voice_minutes"): 2}
    # A late event for the same day arrives; re-running the rollup corrects the total.
    post_events(client, ka, [ev(6, qty=5, at=stamp(clock=time(23, 59, 59)))])
    runner.invoke(args=["usage", "rollup", "--day", DAY.isoformat()])
    runner.invoke(args=["usage", "rollup", "--day", DAY.isoformat()])  # idempotent
    assert rollups()[(a.id, "voice_minutes")] == 15
    assert db.session.scalar(select(func.count(UsageRollupDaily.id)).where(UsageRollupDaily.day == DAY)) == 3


def test_rollup_day_follows_billing_timezone(client, plans, app):
    app.config["BILLING_TIMEZONE"] = "America/New_York"
    tenant = make_tenant()
    key = make_api_key(tenant)
    # 02:00 UTC on the next day is still DAY in New York.
    assert post_events(client, key, [ev(1, qty=4, at=stamp(DAY + timedelta(days=1), time(2)))]).status_code == 201
    from app.services.usage import rollup_day

    rollup_day(DAY)
    row = db.session.scalars(select(UsageRollupDaily)).one()
    assert row.day == DAY and row.quantity == 4


def test_bad_rollup_day_is_a_clear_cli_error(app):
    out = app.test_cli_runner().invoke(args=["usage", "rollup", "--day", "03/10/2026"])
    assert out.exit_code != 0 and "YYYY-MM-DD" in out.output
