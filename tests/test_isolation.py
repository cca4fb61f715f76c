"""Tenant isolation and entitlements."""
from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.models import DunningStage, UsageRollupDaily
from tests.factories import admin_email, make_api_key, make_root, make_tenant


def test_tenant_admin_asking_for_another_tenants_rows_gets_404(client, auth, plans):
    mine, theirs = make_tenant("Mine"), make_tenant("Theirs")
    auth.login(admin_email(mine))
    resp = client.get(f"/admin/usage?tenant_id={theirs.id}")
    # A tenant admin's tenant_id parameter is ignored: they only ever see their own tenant.
    assert resp.status_code == 200 and "Mine" in resp.get_data(as_text=True)
    assert "Theirs" not in resp.get_data(as_text=True)


def test_scoped_queries_cannot_see_other_tenants_even_by_id(app, plans):
    from flask import g

    mine, theirs = make_tenant("Mine"), make_tenant("Theirs")
    from datetime import date

    db.session.add_all([UsageRollupDaily(tenant_id=t.id, day=date(2026, 10, 1), metric="voice_minutes",
                                         quantity=1) for t in (mine, theirs)])
    db.session.commit()
    other_row_id = db.session.scalar(select(UsageRollupDaily.id).where(UsageRollupDaily.tenant_id == theirs.id))
    with app.test_request_context("/admin/usage"):
        g.scope_tenant_id = mine.id
        db.session.expunge_all()
        rows = db.session.scalars(select(UsageRollupDaily)).all()
        assert [r.tenant_id for r in rows] == [mine.id]
        assert db.session.get(UsageRollupDaily, other_row_id) is None
        from app.models import Tenant

        assert db.session.get(Tenant, theirs.id) is None
    db.session.remove()


def test_entitlements_for_root_and_own_api_key_only(client, auth, plans):
    a, b = make_tenant(), make_tenant()
    key_a = make_api_key(a)
    ok = client.get(f"/api/tenants/{a.id}/entitlements", headers={"Authorization": f"Bearer {key_a}"})
    assert ok.status_code == 200
    assert ok.get_json() == {"telephony": True, "sms_outbound": True, "admin_access": "full"}
    other = client.get(f"/api/tenants/{b.id}/entitlements", headers={"Authorization": f"Bearer {key_a}"})
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/tenants/{a.id}/entitlements").status_code == 401
    make_root()
    auth.login("root@example.com")
    assert client.get(f"/api/tenants/{b.id}/entitlements").status_code == 200
    assert client.get("/api/tenants/999999/entitlements").status_code == 404


def test_entitlements_follow_dunning_stage(app, plans):
    from app.services.entitlements import entitlements_for

    tenant = make_tenant()
    expected = {
        DunningStage.OK: (True, True, "full"),
        DunningStage.REMINDER: (True, True, "full"),
        DunningStage.SUSPENDED: (False, False, "full"),
        DunningStage.RESTRICTED: (False, False, "billing_only"),
    }
    for stage, (tel, sms, admin) in expected.items():
        tenant.dunning_stage = stage
        e = entitlements_for(tenant)
        assert (e.telephony, e.sms_outbound, e.admin_access) == (tel, sms, admin), stage


def test_unknown_api_route_is_json_404_and_html_route_is_page(client, plans):
    resp = client.get("/api/nothing-here")
    assert resp.status_code == 404 and set(resp.get_json()["error"]) == {"code", "message", "fields"}
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "<h1>404" in page.get_data(as_text=True)
