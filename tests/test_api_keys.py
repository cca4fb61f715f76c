"""API keys: a tenant admin revokes one (refused at once), and sees when each was last used."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from app.extensions import db
from app.models import ApiKey, AuditLog, utcnow
from tests.factories import admin_email, make_api_key, make_tenant
from tests.support.web import page_csrf


def entitlements(app, tenant, key):
    """An API call with this key, from a client that has no session."""
    return app.test_client().get(f"/api/tenants/{tenant.id}/entitlements", headers={"Authorization": f"Bearer {key}"})


def key_row(plaintext_prefix: str) -> ApiKey:
    return db.session.execute(select(ApiKey).where(ApiKey.prefix == plaintext_prefix[:12])
                              .execution_options(populate_existing=True)).scalar_one()


def test_tenant_admin_revokes_a_key_and_it_is_refused_at_once(app, client, auth, plans):
    tenant = make_tenant("Acme Plumbing")
    leaked, spare = make_api_key(tenant), make_api_key(tenant)
    assert entitlements(app, tenant, leaked).status_code == 200
    auth.login(admin_email(tenant))
    page = client.get("/admin/api-keys").get_data(as_text=True)
    leaked_id = key_row(leaked).id
    action = f"/admin/api-keys/{leaked_id}/revoke"
    assert f'action="{action}"' in page  # the Revoke button of that row

    resp = client.post(action, data={"csrf_token": page_csrf(client, "/admin/api-keys")})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/api-keys")

    refused = entitlements(app, tenant, leaked)
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    assert entitlements(app, tenant, spare).status_code == 200  # the tenant's other keys keep working
    page = client.get("/admin/api-keys").get_data(as_text=True)
    assert "is revoked" in page and re.search(rf'id="api-key-{leaked_id}">.*?Revoked \d{{4}}-', page, re.S)
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "api_key.revoke"))
    assert audit.tenant_id == tenant.id and audit.details["key_id"] == leaked_id

    # Revoking again is harmless and keeps the first time.
    first_time = key_row(leaked).revoked_at
    client.post(action, data={"csrf_token": page_csrf(client, "/admin/api-keys")})
    assert key_row(leaked).revoked_at == first_time


def test_another_tenants_key_cannot_be_revoked(app, client, auth, plans):
    mine, theirs = make_tenant(), make_tenant()
    their_key = make_api_key(theirs)
    auth.login(admin_email(mine))
    resp = client.post(f"/admin/api-keys/{key_row(their_key).id}/revoke",
                       data={"csrf_token": page_csrf(client, "/admin/api-keys")})
    assert resp.status_code == 404
    assert key_row(their_key).revoked_at is None
    assert entitlements(app, theirs, their_key).status_code == 200


def test_last_used_is_recorded_at_most_once_a_minute_and_shown(app, client, auth, plans):
    from app.services.tenants import use_api_key

    tenant = make_tenant()
    key = make_api_key(tenant)
    assert key_row(key).last_used_at is None
    assert entitlements(app, tenant, key).status_code == 200
    first = key_row(key).last_used_at
    assert first is not None and abs(utcnow() - first) < timedelta(minutes=1)

    assert use_api_key(key, now=first + timedelta(seconds=30)) is not None
    assert key_row(key).last_used_at == first  # no write within the minute
    assert use_api_key(key, now=first + timedelta(seconds=61)) is not None
    assert key_row(key).last_used_at == first + timedelta(seconds=61)

    auth.login(admin_email(tenant))
    page = client.get("/admin/api-keys").get_data(as_text=True)
    shown = (first + timedelta(seconds=61)).strftime("%Y-%m-%d %H:%M UTC")
    assert shown in page and key[:12] in page


def test_operator_revokes_a_key_from_the_cli(app, plans):
    tenant = make_tenant()
    key = make_api_key(tenant)
    key_id = key_row(key).id
    runner = app.test_cli_runner()
    out = runner.invoke(args=["tenants", "revoke-api-key", "--key-id", str(key_id)])
    assert out.exit_code == 0, out.output
    assert f"API key {key_id} ({key[:12]}" in out.output and "revoked at" in out.output
    assert entitlements(app, tenant, key).status_code == 401
    missing = runner.invoke(args=["tenants", "revoke-api-key", "--key-id", "999999"])
    assert missing.exit_code == 2 and "no API key with id 999999" in missing.output
