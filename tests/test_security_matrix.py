"""Security matrices generated from the URL map, so every new route is covered automatically.

- every root-only route, as a tenant admin → 403 and nothing changed;
- every tenant route given another tenant's ids → 404 (or their own data only) and nothing changed;
- every session POST without a CSRF token → refused and nothing changed;
- no GET changes state;
- security headers on pages;
- the API-key revoke route: tenant-only, CSRF-checked; bad query values never 500.
"""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select, text

from app.access import API, PUBLIC, TENANT
from app.extensions import db
from app.models import ApiKey, Invoice, InvoiceLine, User, WebhookEvent
from tests.factories import admin_email, make_api_key, make_root, make_tenant, utc
from tests.support.web import csrf_from, page_csrf

# Routes that authenticate themselves without a session cookie (no CSRF possible or needed).
CSRF_EXEMPT = {"api.usage_events", "webhooks.stripe_webhook"}
# Routes whose POST legitimately changes state before login (sign-in) or ends the session.
SKIP_STATE = {"auth.login", "auth.logout"}


def fingerprint() -> dict[str, str]:
    """A digest of every table's content (order-independent)."""
    db.session.expire_all()
    tables = [r[0] for r in db.session.execute(text(
        "select tablename from pg_tables where schemaname='public' and tablename <> 'alembic_version'"))]
    out = {}
    for t in tables:
        if t == "users":
            q = "select md5(coalesce(string_agg((id, email, role, active, session_version)::text, ',' order by id), '')) from users"
        elif t == "user_sessions":  # last_seen_at is bookkeeping (written at most once a minute by any request)
            q = ("select md5(coalesce(string_agg((id, user_id, revoked_at)::text, ',' order by id), '')) "
                 "from user_sessions")
        else:
            q = f'select md5(coalesce(string_agg(x::text, \',\' order by x::text), \'\')) from "{t}" x'
        out[t] = db.session.scalar(text(q))
    db.session.rollback()
    return out


@pytest.fixture
def world(app, plans):
    """Two tenants with invoices and a stored webhook event; returns ids keyed by what routes ask for."""
    mine, theirs = make_tenant("Mine Co"), make_tenant("Theirs Co")
    invoices = {}
    for tenant in (mine, theirs):
        inv = Invoice(tenant_id=tenant.id, period_start=date(2026, 9, 1), period_end=date(2026, 9, 30),
                      amount_due=2900, currency="usd", status="open", number=f"SP-T-{tenant.id}",
                      issued_at=utc(2026, 10, 1), due_at=utc(2026, 10, 1))
        inv.lines.append(InvoiceLine(metric=None, quantity=1, unit_price=29, amount=2900, description="Plan fee",
                                     period_start=date(2026, 9, 1), period_end=date(2026, 9, 30)))
        db.session.add(inv)
        db.session.flush()
        invoices[tenant.id] = inv.id
    db.session.add(WebhookEvent(stripe_event_id="evt_matrix", type="invoice.paid", payload={}, status="failed",
                                tenant_id=theirs.id))
    db.session.commit()
    event_id = db.session.scalar(text("select id from webhook_events"))
    keys = {t.id: make_api_key(t) for t in (mine, theirs)}
    key_ids = {t_id: db.session.scalar(select(ApiKey.id).where(ApiKey.prefix == key[:12]))
               for t_id, key in keys.items()}
    make_root()
    from app.services.accounts import invite_admin  # issue 14: a pending invitation of the other tenant

    their_admin = db.session.scalar(select(User).where(User.email == admin_email(theirs)))
    invitation = invite_admin(theirs, "their-hire@example.com", inviter=their_admin)
    db.session.commit()
    return {"mine": mine.id, "theirs": theirs.id, "my_invoice": invoices[mine.id], "their_invitation": invitation.id,
            "their_invoice": invoices[theirs.id], "event": event_id, "mine_email": admin_email(mine),
            "my_key": key_ids[mine.id], "their_key": key_ids[theirs.id], "my_key_plaintext": keys[mine.id]}


def other_tenant_args(rule, world) -> dict:
    """Fill a rule's parameters with the OTHER tenant's ids."""
    values = {}
    for arg in rule.arguments:
        if arg in ("tenant_id",):
            values[arg] = world["theirs"]
        elif arg in ("invoice_id", "id"):
            values[arg] = world["their_invoice"]
        elif arg in ("event_id",):
            values[arg] = world["event"]
        elif arg == "filename":
            values[arg] = "app.css"
        elif arg in ("job_id",):
            values[arg] = f"invoice-{world['theirs']}-2026-09"
        elif arg in ("run_id", "token_id", "endpoint_id", "delivery_id"):
            values[arg] = 1  # root-only integrations objects: any id shows the policy
        elif arg == "key_id":
            values[arg] = world["their_key"]
        elif arg == "invitation_id":
            values[arg] = world["their_invitation"]
        elif arg == "token":  # a password-reset or invitation link's token (public routes)
            values[arg] = "t" * 43
        else:
            raise AssertionError(f"add a value for route parameter {arg!r} of {rule.rule} to the matrix")
    return values


def rules_by_policy(app):
    from app.access import view_policy

    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            level, _ = view_policy(rule.endpoint)
            yield rule, level


def build(app, rule, values) -> str:
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **values)


def test_every_root_route_is_403_for_a_tenant_admin(app, client, auth, world):
    auth.login(world["mine_email"])
    token = page_csrf(client)
    checked = 0
    before = fingerprint()
    for rule, level in rules_by_policy(app):
        if level != "root":
            continue
        url = build(app, rule, other_tenant_args(rule, world))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(url, method=method, headers={"X-CSRFToken": token}, data={"csrf_token": token})
            assert resp.status_code == 403, f"{method} {url} → {resp.status_code}"
            checked += 1
    assert checked >= 3
    assert fingerprint() == before


def test_every_tenant_route_with_another_tenants_ids_is_404(app, client, auth, world):
    auth.login(world["mine_email"])
    token = page_csrf(client)
    before = fingerprint()
    for rule, level in rules_by_policy(app):
        if level != TENANT or not rule.arguments:
            continue
        url = build(app, rule, other_tenant_args(rule, world))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(url, method=method, headers={"X-CSRFToken": token}, data={"csrf_token": token})
            assert resp.status_code == 404, f"{method} {url} → {resp.status_code}"
    assert fingerprint() == before


def test_tenant_routes_never_show_another_tenants_name(app, client, auth, world):
    auth.login(world["mine_email"])
    for rule, level in rules_by_policy(app):
        if level != TENANT or "GET" not in rule.methods or rule.arguments:
            continue
        for query in ("", f"?tenant_id={world['theirs']}"):
            resp = client.get(build(app, rule, {}) + query)
            assert "Theirs Co" not in resp.get_data(as_text=True), rule.rule


def test_every_session_post_without_csrf_is_refused(app, client, auth, world):
    auth.login("root@example.com")
    before = fingerprint()
    checked = 0
    for rule, level in rules_by_policy(app):
        if "POST" not in rule.methods or rule.endpoint in CSRF_EXEMPT or level == API:
            continue
        url = build(app, rule, other_tenant_args(rule, world))
        resp = client.post(url, data={"reason": "x"})
        assert resp.status_code == 400, f"POST {url} without CSRF → {resp.status_code}"
        checked += 1
    assert checked >= 2
    assert fingerprint() == before


def test_no_get_changes_state(app, client, auth, world):
    auth.login("root@example.com")
    before = fingerprint()
    for rule, level in rules_by_policy(app):
        if "GET" not in rule.methods or level == PUBLIC and rule.endpoint in SKIP_STATE:
            continue
        url = build(app, rule, other_tenant_args(rule, world) if rule.arguments else {})
        client.get(url)
    assert fingerprint() == before


def test_security_headers_on_pages(client, world):
    resp = client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp.split("script-src")[1].split(";")[0]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "HX-Request" in resp.headers.get("Vary", "")


def test_hsts_only_in_production(migrated, redis_url):
    from app import create_app
    from tests.support.config import base_config

    prod = create_app(base_config(migrated, redis_url, PRODUCTION=True))
    resp = prod.test_client().get("/login", headers={"X-Forwarded-Proto": "https"}, base_url="https://localhost")
    assert "Strict-Transport-Security" in resp.headers


def test_restricted_tenant_loses_access_on_next_request(app, client, auth, world):
    from app.models import Tenant

    auth.login(world["mine_email"])
    assert client.get("/admin/usage").status_code == 200
    tenant = db.session.get(Tenant, world["mine"])
    tenant.dunning_stage = "restricted"
    db.session.commit()
    resp = client.get("/admin/usage")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/billing")
    assert client.get("/admin/billing").status_code == 200


def test_healthz_reports_stores_and_queues(client, auth, world):
    assert set(client.get("/healthz").get_json()) == {"status"}  # the details are for root admins only
    auth.login("root@example.com")
    resp = client.get("/healthz")
    body = resp.get_json()
    assert resp.status_code == 200 and body["checks"] == {"database": "ok", "redis": "ok"}
    assert set(body["queues"]) == {"billing", "webhooks", "default", "mail"}
    assert body["oldest_pending_webhook_age_s"] is not None  # the failed event of the fixture


def test_revoking_an_api_key_is_for_a_signed_in_tenant_with_a_csrf_token(app, client, auth, world):
    from app.access import view_policy

    with app.test_request_context():
        assert view_policy("tenants.revoke_key") == (TENANT, False)
    url = f"/admin/api-keys/{world['my_key']}/revoke"

    def revoked() -> bool:
        db.session.expire_all()
        return db.session.get(ApiKey, world["my_key"]).revoked_at is not None

    # Anonymous, with a valid token from the sign-in page: sent to sign in.
    token = csrf_from(client.get("/login").get_data(as_text=True))
    resp = client.post(url, data={"csrf_token": token})
    assert resp.status_code == 302 and "/login" in resp.headers["Location"] and not revoked()
    # The key itself is no credential for the page (no session, so no CSRF token either).
    resp = app.test_client().post(url, headers={"Authorization": f"Bearer {world['my_key_plaintext']}"})
    assert resp.status_code == 400 and not revoked()
    # The tenant's admin: refused without the token (form field or header), done with it.
    auth.login(world["mine_email"])
    assert client.post(url).status_code == 400 and not revoked()
    assert client.post(url, data={"csrf_token": "forged"}).status_code == 400 and not revoked()
    assert client.post(url, headers={"X-CSRFToken": page_csrf(client)}).status_code == 303 and revoked()


@pytest.mark.parametrize("value", ["%C3%A9", "%00", "x" * 500, "", "%FF%FE"])
def test_a_bad_card_updated_link_neither_fails_nor_spends_the_pending_nonce(app, client, auth, world, value):
    auth.login(world["mine_email"])
    with client.session_transaction() as sess:
        sess["card_update_nonce"] = "pending-nonce"
    resp = client.get(f"/admin/billing?card_updated={value}")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/billing")
    with client.session_transaction() as sess:
        assert sess.get("card_update_nonce") == "pending-nonce"  # the real return from the portal still works
