"""Sign-in sessions: sign-out ends them server-side, sign-in renews them, and guessing is throttled."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import User, UserSession
from app.proxies import client_address, trusted_networks
from tests.factories import PASSWORD, admin_email, make_tenant
from tests.support.web import csrf_from, login, page_csrf


def signed_in(client) -> bool:
    return client.get("/admin/usage").status_code == 200


def sign_out(client) -> None:
    assert client.post("/logout", data={"csrf_token": page_csrf(client)}).status_code == 302


def test_a_saved_cookie_no_longer_works_after_sign_out(app, client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    saved = client.get_cookie("session").value
    sign_out(client)
    assert not signed_in(client)
    # Someone who copied the cookie before sign-out (a shared computer, a stolen backup) replays it.
    thief = app.test_client()
    thief.set_cookie("session", saved)
    resp = thief.get("/admin/usage")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_sign_out_ends_only_that_browser(app, client, auth, plans):
    tenant = make_tenant()
    phone = app.test_client()
    auth.login(admin_email(tenant))
    login(phone, admin_email(tenant))
    sign_out(client)
    assert not signed_in(client)
    assert signed_in(phone)
    rows = db.session.execute(select(UserSession.revoked_at).order_by(UserSession.id)).scalars().all()
    assert len(rows) == 2 and rows[0] is not None and rows[1] is None


def test_ending_every_session_signs_out_every_browser(app, client, auth, plans):
    from app.services.sessions import end_all_sessions

    tenant = make_tenant()
    phone = app.test_client()
    auth.login(admin_email(tenant))
    login(phone, admin_email(tenant))
    user = db.session.scalar(select(User).where(User.email == admin_email(tenant)))
    assert end_all_sessions(user) == 2
    db.session.commit()
    assert not signed_in(client) and not signed_in(phone)
    assert login(phone, admin_email(tenant)).status_code == 302 and signed_in(phone)  # signing in again works


def test_last_seen_is_written_at_most_once_a_minute(app, plans):
    from app.models import utcnow
    from app.services.sessions import start_session, user_for_session

    tenant = make_tenant()
    user = db.session.scalar(select(User).where(User.email == admin_email(tenant)))
    t0 = utcnow()
    key = start_session(user, now=t0)
    db.session.commit()
    assert user_for_session(key, now=t0 + timedelta(seconds=30)) is not None
    row = db.session.execute(select(UserSession).execution_options(populate_existing=True)).scalar_one()
    assert row.last_seen_at == t0
    assert user_for_session(key, now=t0 + timedelta(seconds=90)) is not None
    row = db.session.execute(select(UserSession).execution_options(populate_existing=True)).scalar_one()
    assert row.last_seen_at == t0 + timedelta(seconds=90)
    # A forged secret for a real session id, or the pre-issue-20 "<user id>:<version>" form, signs nobody in.
    session_id, version, _secret = key.split(":", 2)
    assert user_for_session(f"{session_id}:{version}:forged") is None
    assert user_for_session(f"{user.id}:{version}") is None


def test_sign_in_renews_the_csrf_token_and_drops_the_anonymous_session(client, plans):
    tenant = make_tenant()
    anonymous_token = csrf_from(client.get("/login").get_data(as_text=True))
    with client.session_transaction() as sess:
        sess["planted"] = "by whoever set this browser's cookie"
    resp = client.post("/login", data={"email": admin_email(tenant), "password": PASSWORD,
                                       "csrf_token": anonymous_token})
    assert resp.status_code == 302
    with client.session_transaction() as sess:
        assert "planted" not in sess
    # A token learnt before sign-in (a fixed session, a form cached in the page) no longer works ...
    assert client.post("/logout", data={"csrf_token": anonymous_token}).status_code == 400
    assert signed_in(client)
    # ... the page's new one does.
    new_token = page_csrf(client)
    assert new_token != anonymous_token
    assert client.post("/logout", data={"csrf_token": new_token}).status_code == 302


def test_unknown_and_inactive_addresses_cost_the_same_password_check(app, plans, monkeypatch):
    """The answer's time must not tell whether an address has an account (no timing assertion: count scrypt)."""
    import app.services.tenants as tenants_service

    checked: list[str] = []
    real_check = tenants_service.check_password_hash

    def spy(pwhash: str, password: str) -> bool:
        checked.append(pwhash.split("$", 1)[0])  # "scrypt:32768:8:1": the method and its cost
        return real_check(pwhash, password)

    monkeypatch.setattr(tenants_service, "check_password_hash", spy)
    tenant = make_tenant()
    disabled = make_tenant()
    user = db.session.scalar(select(User).where(User.email == admin_email(disabled)))
    user.active = False
    db.session.commit()

    assert tenants_service.authenticate(admin_email(tenant), "wrong-password") is None
    assert tenants_service.authenticate("nobody@nowhere.example.com", "wrong-password") is None
    assert tenants_service.authenticate(admin_email(disabled), PASSWORD) is None
    assert tenants_service.authenticate(admin_email(tenant), PASSWORD) is not None
    assert len(checked) == 4 and len(set(checked)) == 1 and checked[0].startswith("scrypt:")


def attempt(client, email, password="wrong-password", forwarded_for=None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       headers=headers).status_code


@pytest.mark.parametrize("config_overrides", [{"TRUSTED_PROXIES": "127.0.0.1/32, 10.0.0.0/8"}])
def test_behind_a_trusted_proxy_one_client_cannot_lock_out_the_others(app, client, plans, config_overrides):
    tenant, other = make_tenant(), make_tenant()
    # The load balancer (10.0.0.5) forwards for the guesser; the test client's own address is 127.0.0.1.
    statuses = [attempt(client, admin_email(tenant), forwarded_for="203.0.113.9, 10.0.0.5") for _ in range(11)]
    assert statuses[:10] == [422] * 10 and statuses[10] == 429
    assert attempt(client, admin_email(other), PASSWORD, forwarded_for="198.51.100.4, 10.0.0.5") == 302


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(client, plans):
    tenant = make_tenant()
    statuses = [attempt(client, admin_email(tenant), forwarded_for=f"203.0.113.{n}") for n in range(11)]
    assert statuses[10] == 429  # a made-up header per attempt does not buy a fresh allowance


@pytest.mark.parametrize("config_overrides", [{"TRUSTED_PROXIES": "127.0.0.1", "LOGIN_ACCOUNT_RATE_LIMIT":
                                               "5 per minute"}])
def test_one_account_is_throttled_whatever_the_clients(app, client, plans, config_overrides):
    tenant, other = make_tenant(), make_tenant()
    statuses = [attempt(client, admin_email(tenant), forwarded_for=f"203.0.113.{n}") for n in range(6)]
    assert statuses == [422] * 5 + [429]
    # Even the right password from a fresh address waits, while other accounts are untouched.
    assert attempt(client, admin_email(tenant), PASSWORD, forwarded_for="198.51.100.1") == 429
    assert attempt(client, admin_email(other), PASSWORD, forwarded_for="198.51.100.2") == 302
    # The same for an address without an account: the throttle does not tell which addresses exist.
    unknown = [attempt(client, "nobody@nowhere.example.com", forwarded_for=f"192.0.2.{n}") for n in range(6)]
    assert unknown == [422] * 5 + [429]


@pytest.mark.parametrize("config_overrides", [{"LOGIN_RATE_LIMIT": "3 per minute"}])
def test_successful_sign_ins_do_not_use_up_the_allowance(app, client, plans, config_overrides):
    tenant = make_tenant()
    for _ in range(4):
        assert attempt(client, admin_email(tenant), PASSWORD) == 302
        sign_out(client)
    assert [attempt(client, admin_email(tenant)) for _ in range(4)] == [422, 422, 422, 429]


def test_client_address_trusts_only_configured_proxies():
    proxies = trusted_networks("10.0.0.0/8, 192.0.2.7")
    assert client_address("198.51.100.1", "1.2.3.4", proxies) == "198.51.100.1"  # peer is not a proxy
    assert client_address("10.1.1.1", "1.2.3.4", ()) == "10.1.1.1"  # default: trust nobody
    # Rightmost address that is not ours; what the client wrote to the left of it is ignored.
    assert client_address("10.1.1.1", "6.6.6.6, 1.2.3.4, 192.0.2.7", proxies) == "1.2.3.4"
    assert client_address("10.1.1.1", "junk, 1.2.3.4", proxies) == "1.2.3.4"
    assert client_address("10.1.1.1", "1.2.3.4, junk", proxies) == "10.1.1.1"
    assert client_address("10.1.1.1", "10.2.2.2", proxies) == "10.2.2.2"  # all ours: the farthest hop
    assert client_address("10.1.1.1", None, proxies) == "10.1.1.1"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        trusted_networks("10.0.0.0/8, proxy.internal")
