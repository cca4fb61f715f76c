"""Signing in and out, throttling, CSRF, and who may reach what."""
from __future__ import annotations

from tests.factories import PASSWORD, admin_email, make_root, make_tenant
from tests.support.web import csrf_from, page_csrf


def test_tenant_admin_signs_in_sees_usage_and_signs_out(client, auth, plans):
    tenant = make_tenant("Acme Plumbing")
    resp = auth.login(admin_email(tenant))
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/usage")
    page = client.get("/admin/usage")
    assert page.status_code == 200 and "Acme Plumbing" in page.get_data(as_text=True)
    token = page_csrf(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/usage").status_code == 302  # back to the login page


def test_wrong_password_rerenders_form_with_message(auth, plans):
    tenant = make_tenant()
    resp = auth.login(admin_email(tenant), "not-the-password")
    assert resp.status_code == 422
    assert "don&#39;t match an active account" in resp.get_data(as_text=True)


def test_login_attempts_are_throttled(auth, plans):
    tenant = make_tenant()
    statuses = [auth.login(admin_email(tenant), "wrong-password").status_code for _ in range(12)]
    assert statuses[:10] == [422] * 10
    assert statuses[10] == 429
    # Even the right password is refused while throttled.
    assert auth.login(admin_email(tenant), PASSWORD).status_code == 429


def test_post_without_csrf_token_is_refused(client, auth, plans):
    tenant = make_tenant()
    resp = client.post("/login", data={"email": admin_email(tenant), "password": PASSWORD})
    assert resp.status_code == 400
    assert "security token" in resp.get_data(as_text=True)
    auth.login(admin_email(tenant))
    assert client.post("/logout").status_code == 400  # still signed in afterwards
    assert client.get("/admin/usage").status_code == 200


def test_csrf_token_in_htmx_header_is_accepted(client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    token = page_csrf(client)
    resp = client.post("/logout", headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert resp.status_code == 302


def test_tenant_admin_on_root_routes_gets_403(client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    for path in ("/admin/system-billing", "/admin/tenants", "/admin/tenants/new"):
        assert client.get(path).status_code == 403, path


def test_anonymous_is_sent_to_login(client, auth, plans):
    resp = client.get("/admin/system-billing")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_session_cookie_flags(auth, plans):
    tenant = make_tenant()
    resp = auth.login(admin_email(tenant))
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_disabled_user_loses_session_on_next_request(client, auth, plans, app):
    from app.extensions import db
    from app.models import User

    tenant = make_tenant()
    auth.login(admin_email(tenant))
    assert client.get("/admin/usage").status_code == 200
    user = db.session.query(User).filter_by(email=admin_email(tenant)).one()
    user.active = False
    db.session.commit()
    assert client.get("/admin/usage").status_code == 302


def test_root_creates_tenant_from_page_and_key_is_shown_once(client, auth, plans, app):
    from app.extensions import db
    from app.models import ApiKey, Tenant

    make_root()
    auth.login("root@example.com")
    form = client.get("/admin/tenants/new").get_data(as_text=True)
    token = csrf_from(form)
    bad = client.post("/admin/tenants/new", data={"csrf_token": token, "name": "", "plan": "starter",
                                                   "admin_email": "nope", "admin_password": "short"})
    assert bad.status_code == 422 and "Enter a name." in bad.get_data(as_text=True)
    assert db.session.query(Tenant).count() == 0
    ok = client.post("/admin/tenants/new", data={"csrf_token": token, "name": "Zed Electric", "plan": "pro",
                                                  "admin_email": "boss@zed.example.com",
                                                  "admin_password": "long-enough-pw"})
    body = ok.get_data(as_text=True)
    assert ok.status_code == 200 and "sp_live_" in body
    key = body.split('id="api-key">')[1].split("<")[0]
    stored = db.session.query(ApiKey).one()
    assert key not in stored.key_hash and stored.prefix == key[:12]
    assert client.get("/admin/tenants").get_data(as_text=True).count("sp_live_") == 0
    # The new admin can sign in.
    assert auth.logout().status_code == 302
    assert auth.login("boss@zed.example.com", "long-enough-pw").status_code == 302


def test_tenant_form_refuses_a_malformed_billing_email(client, auth, plans, app):
    from app.extensions import db
    from app.models import Tenant

    make_root()
    auth.login("root@example.com")
    token = page_csrf(client, "/admin/tenants/new")
    form = {"csrf_token": token, "name": "Zed Electric", "plan": "pro", "admin_email": "boss@zed.example.com",
            "admin_password": "long-enough-pw"}
    bad = client.post("/admin/tenants/new", data={**form, "billing_email": "accounts at zed"})
    body = bad.get_data(as_text=True)
    assert bad.status_code == 422 and "Enter a valid billing email address" in body
    assert 'value="accounts at zed"' in body and 'value="Zed Electric"' in body  # the form keeps what was typed
    assert db.session.query(Tenant).count() == 0
    ok = client.post("/admin/tenants/new", data={**form, "billing_email": " Accounts@Zed.example.com "})
    assert ok.status_code == 200
    assert db.session.query(Tenant).one().billing_email == "accounts@zed.example.com"
