"""GET /api/entitlements for other services: service tokens, ETag revalidation, pagination, the root page and CLI."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import AuditLog, IntegrationEndpoint, ServiceToken, Tenant
from app.services.integrations import create_token, revoke_token, use_token
from tests.factories import admin_email, make_api_key, make_root, make_tenant
from tests.support.web import csrf_from, page_csrf

FIELDS = {"tenant_id", "telephony", "sms_outbound", "admin_access", "dunning_stage", "updated_at"}


@pytest.fixture
def token(app, plans) -> str:
    return create_token("telephony", ["entitlements:read"])[1]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def set_tenant(tenant_id: int, **values) -> None:
    tenant = db.session.get(Tenant, tenant_id)
    for name, value in values.items():
        setattr(tenant, name, value)
    db.session.commit()


def test_a_service_token_reads_a_tenant_and_revalidates_with_304_until_it_changes(client, token):
    tenant = make_tenant("Calls Co")
    url = f"/api/entitlements?tenant_id={tenant.id}"

    first = client.get(url, headers=bearer(token))
    assert first.status_code == 200
    doc = first.get_json()
    assert set(doc) == FIELDS
    assert doc | {"updated_at": None} == {"tenant_id": tenant.id, "telephony": True, "sms_outbound": True,
                                          "admin_access": "full", "dunning_stage": "ok", "updated_at": None}
    etag = first.headers["ETag"]
    assert etag and "no-cache" in first.headers["Cache-Control"]

    again = client.get(url, headers={**bearer(token), "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag

    set_tenant(tenant.id, name="Calls Company", overdue_days=20)  # nothing a service can see
    assert client.get(url, headers={**bearer(token), "If-None-Match": etag}).status_code == 304

    set_tenant(tenant.id, dunning_stage="suspended")
    changed = client.get(url, headers={**bearer(token), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    now = changed.get_json()
    assert (now["telephony"], now["sms_outbound"], now["admin_access"], now["dunning_stage"]) == (
        False, False, "full", "suspended")
    assert now["updated_at"] > doc["updated_at"]


def test_tenant_api_keys_unknown_or_revoked_tokens_and_anonymous_callers_are_refused(app, client, auth, token):
    tenant = make_tenant("Keys Co")
    url = f"/api/entitlements?tenant_id={tenant.id}"

    def error(resp, status: int, code: str) -> None:
        assert resp.status_code == status, resp.get_data(as_text=True)
        body = resp.get_json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
        assert body["error"]["code"] == code

    error(client.get(url), 401, "unauthorized")
    error(client.get(url, headers=bearer(make_api_key(tenant))), 403, "service_token_required")
    error(client.get(url, headers=bearer("sp_svc_made-up")), 401, "invalid_token")
    error(client.get(url, headers={"Authorization": f"Basic {token}"}), 401, "unauthorized")
    # A root admin's browser session is no service token either.
    make_root()
    auth.login("root@example.com")
    error(client.get(url), 401, "unauthorized")

    token_id = db.session.scalar(select(ServiceToken.id))
    assert client.get(url, headers=bearer(token)).status_code == 200
    revoke_token(token_id)
    error(client.get(url, headers=bearer(token)), 401, "invalid_token")


def test_a_token_without_the_scope_is_forbidden(client, token):
    tenant = make_tenant()
    db.session.execute(text("UPDATE service_tokens SET scopes = 'something:else'"))
    db.session.commit()
    resp = client.get(f"/api/entitlements?tenant_id={tenant.id}", headers=bearer(token))
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "insufficient_scope"


def test_unknown_tenants_and_bad_arguments_answer_in_the_error_shape(client, token):
    make_tenant()
    assert client.get("/api/entitlements?tenant_id=999999", headers=bearer(token)).status_code == 404
    for query, field in (("tenant_id=abc", "tenant_id"), ("tenant_id=0", "tenant_id"), ("limit=0", "limit"),
                         ("limit=5000", "limit"), ("cursor=bm9wZQ", "cursor"), ("cursor=%FF%FE", "cursor"),
                         ("changed_since=yesterday", "changed_since"),
                         ("changed_since=2026-01-01T00:00:00", "changed_since"),  # no zone: ambiguous
                         ("tenant_id=1&changed_since=2026-01-01T00:00:00Z", "tenant_id"), ("colour=red", "colour")):
        resp = client.get(f"/api/entitlements?{query}", headers=bearer(token))
        assert resp.status_code == 422, query
        assert field in resp.get_json()["error"]["fields"], (query, resp.get_json())


def test_the_list_pages_through_every_tenant_in_a_stable_order_and_filters_by_change(client, token):
    ids = {make_tenant().id for _ in range(7)}
    seen, cursor, pages = [], None, 0
    while True:
        resp = client.get("/api/entitlements?limit=3" + (f"&cursor={cursor}" if cursor else ""), headers=bearer(token))
        assert resp.status_code == 200 and resp.headers["ETag"]
        page = resp.get_json()
        seen += [doc["tenant_id"] for doc in page["data"]]
        assert all(set(doc) == FIELDS for doc in page["data"])
        pages += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3 and len(seen) == len(set(seen)) == 7 and set(seen) == ids

    # changed_since: only the tenant whose entitlements changed at or after that instant.
    whole = client.get("/api/entitlements?limit=100", headers=bearer(token))
    mark = max(doc["updated_at"] for doc in whole.get_json()["data"])
    changed = sorted(ids)[3]
    set_tenant(changed, status="disabled")
    since = client.get("/api/entitlements", query_string={"changed_since": mark}, headers=bearer(token)).get_json()
    fresh = [d for d in since["data"] if d["updated_at"] > mark]
    assert [d["tenant_id"] for d in fresh] == [changed]
    assert fresh[0]["telephony"] is False and fresh[0]["admin_access"] == "billing_only"
    # The changed tenant moved to the end of the stable order.
    everyone = client.get("/api/entitlements?limit=100", headers=bearer(token)).get_json()["data"]
    assert everyone[-1]["tenant_id"] == changed
    # "+00:00" typed into a URL arrives as a space: still understood.
    plus = client.get(f"/api/entitlements?changed_since={mark.replace('Z', '+00:00')}", headers=bearer(token))
    assert plus.status_code == 200
    assert [d["tenant_id"] for d in plus.get_json()["data"] if d["updated_at"] > mark] == [changed]
    # The list revalidates too.
    def revalidate(etag: str) -> int:
        return client.get("/api/entitlements?limit=100", headers={**bearer(token), "If-None-Match": etag}).status_code

    assert revalidate(whole.headers["ETag"]) == 200
    assert revalidate(client.get("/api/entitlements?limit=100", headers=bearer(token)).headers["ETag"]) == 304


def test_last_used_is_recorded_at_most_once_a_minute(app, token):
    from app.services.clock import utcnow

    row = db.session.scalar(select(ServiceToken))
    assert row.last_used_at is None
    t0 = utcnow()
    assert use_token(token, now=t0).name == "telephony"
    db.session.expire_all()
    assert db.session.scalar(select(ServiceToken.last_used_at)) == t0
    use_token(token, now=t0 + timedelta(seconds=59))
    db.session.expire_all()
    assert db.session.scalar(select(ServiceToken.last_used_at)) == t0
    use_token(token, now=t0 + timedelta(seconds=61))
    db.session.expire_all()
    assert db.session.scalar(select(ServiceToken.last_used_at)) == t0 + timedelta(seconds=61)
    assert use_token("sp_svc_nope") is None


def test_flask_integrations_commands_issue_a_token_shown_once_and_add_an_endpoint(app, client, plans):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["integrations", "token", "create", "--name", "sms gateway", "--scope",
                                 "entitlements:read"])
    assert result.exit_code == 0, result.output
    plaintext = result.output.strip().splitlines()[-1]
    assert plaintext.startswith("sp_svc_")
    stored = db.session.scalar(select(ServiceToken))
    assert stored.name == "sms gateway" and plaintext not in (stored.token_hash, stored.prefix)
    tenant = make_tenant()
    assert client.get(f"/api/entitlements?tenant_id={tenant.id}", headers=bearer(plaintext)).status_code == 200

    bad = runner.invoke(args=["integrations", "token", "create", "--name", "x", "--scope", "billing:write"])
    assert bad.exit_code == 2
    listed = runner.invoke(args=["integrations", "token", "list"])
    assert "sms gateway" in listed.output and plaintext not in listed.output

    added = runner.invoke(args=["integrations", "endpoint", "add", "--url", "https://sms.example.com/hook",
                                "--secret", "whsec_shared"])
    assert added.exit_code == 0, added.output
    endpoint = db.session.scalar(select(IntegrationEndpoint))
    assert (endpoint.url, endpoint.secret, endpoint.active) == ("https://sms.example.com/hook", "whsec_shared", True)
    refused = runner.invoke(args=["integrations", "endpoint", "add", "--url", "ftp://x", "--secret", "s"])
    assert refused.exit_code == 2 and "http" in refused.output

    revoked = runner.invoke(args=["integrations", "token", "revoke", "--id", str(stored.id)])
    assert revoked.exit_code == 0
    assert client.get(f"/api/entitlements?tenant_id={tenant.id}", headers=bearer(plaintext)).status_code == 401


def test_the_integrations_page_creates_revokes_adds_and_disables(app, client, auth, plans):
    make_root()
    auth.login("root@example.com")
    page = client.get("/admin/integrations")
    assert page.status_code == 200 and "Service tokens" in page.get_data(as_text=True)
    token = page_csrf(client, "/admin/integrations")

    missing = client.post("/admin/integrations/tokens", data={"csrf_token": token, "name": " ",
                                                               "scope": "entitlements:read"})
    assert missing.status_code == 422 and "Give the token a name" in missing.get_data(as_text=True)

    created = client.post("/admin/integrations/tokens", data={"csrf_token": token, "name": "telephony",
                                                               "scope": "entitlements:read"})
    html = created.get_data(as_text=True)
    assert created.status_code == 200
    import re

    plaintext = re.search(r'id="new-service-token">(sp_svc_[^<]+)<', html).group(1)
    tenant = make_tenant()
    assert client.get(f"/api/entitlements?tenant_id={tenant.id}", headers=bearer(plaintext)).status_code == 200
    assert plaintext not in client.get("/admin/integrations").get_data(as_text=True)  # shown once
    assert "Last used" in html

    token_id = db.session.scalar(select(ServiceToken.id))
    resp = client.post(f"/admin/integrations/tokens/{token_id}/revoke", data={"csrf_token": token})
    assert resp.status_code == 303
    assert client.get(f"/api/entitlements?tenant_id={tenant.id}", headers=bearer(plaintext)).status_code == 401

    bad = client.post("/admin/integrations/endpoints", data={"csrf_token": token, "url": "not a url"})
    assert bad.status_code == 422 and "absolute http" in bad.get_data(as_text=True)
    added = client.post("/admin/integrations/endpoints", data={"csrf_token": token,
                                                               "url": "https://voice.example.com/hook"})
    secret = re.search(r'id="new-endpoint-secret">([^<]+)<', added.get_data(as_text=True)).group(1)
    endpoint = db.session.scalar(select(IntegrationEndpoint))
    assert added.status_code == 200 and endpoint.secret == secret and secret.startswith("whsec_")
    resp = client.post(f"/admin/integrations/endpoints/{endpoint.id}/disable", data={"csrf_token": token})
    assert resp.status_code == 303
    db.session.expire_all()
    assert db.session.get(IntegrationEndpoint, endpoint.id).disabled_at is not None
    resp = client.post(f"/admin/integrations/endpoints/{endpoint.id}/enable", data={"csrf_token": token})
    assert resp.status_code == 303
    db.session.expire_all()
    assert db.session.get(IntegrationEndpoint, endpoint.id).active
    assert client.post("/admin/integrations/endpoints/999/disable", data={"csrf_token": token}).status_code == 404
    # Without the CSRF token nothing happens.
    assert client.post(f"/admin/integrations/tokens/{token_id}/revoke").status_code == 400
    actions = [a.action for a in db.session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions == ["service_token.create", "service_token.revoke", "integration_endpoint.add",
                       "integration_endpoint.disable", "integration_endpoint.enable"]


def test_the_integrations_page_is_for_root_admins_only(client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    assert client.get("/admin/integrations").status_code == 403
    csrf = csrf_from(client.get("/admin/usage").get_data(as_text=True))
    assert client.post("/admin/integrations/tokens", data={"csrf_token": csrf, "name": "x",
                                                           "scope": "entitlements:read"}).status_code == 403
    assert db.session.scalar(select(ServiceToken.id)) is None


def test_the_openapi_document_describes_the_route(client):
    doc = client.get("/api/openapi.json").get_json()
    op = doc["paths"]["/api/entitlements"]["get"]
    assert op["security"] == [{"serviceToken": []}]
    assert {p["name"] for p in op["parameters"]} >= {"tenant_id", "cursor", "changed_since", "limit", "If-None-Match"}
    assert {"200", "304", "401", "403", "404", "422"} <= set(op["responses"])
    assert "EntitlementsEvent" in doc["components"]["schemas"]


def test_generated_requests_never_5xx_and_answers_match_the_schema(app, token):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from tests.support.fuzz import CHECKS

    make_tenant()
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operation = schema["/api/entitlements"]["GET"]
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        statuses.append(case.call_and_validate(headers=bearer(token), checks=CHECKS).status_code)

    fuzz()
    assert statuses and max(statuses) < 500 and 200 in statuses
