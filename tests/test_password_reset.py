"""Forgotten passwords (CONTRACT §8.6): an emailed single-use link, an hour long, the same answer for everyone."""
from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AccountToken, AuditLog, OutboxEmail, User, utcnow
from app.services.notifications import flush_outbox
from tests.factories import PASSWORD, admin_email, make_root, make_tenant
from tests.support.web import csrf_from, login

NEW_PASSWORD = "a-brand-new-passphrase"
LINK = re.compile(r"http://127\.0\.0\.1:5000(/password/reset/[A-Za-z0-9_-]+)")


def forgot(client, email: str, headers: dict | None = None):
    token = csrf_from(client.get("/password/forgot").get_data(as_text=True))
    return client.post("/password/forgot", data={"email": email, "csrf_token": token}, headers=headers or {})


def set_password(client, path: str, password: str, confirm: str | None = None, headers: dict | None = None):
    token = csrf_from(client.get(path).get_data(as_text=True))  # every page carries it, the "not valid" one too
    return client.post(path, data={"password": password, "password_confirm": password if confirm is None else confirm,
                                   "csrf_token": token}, headers=headers or {})


def reset_emails(to: str | None = None) -> list[OutboxEmail]:
    query = select(OutboxEmail).where(OutboxEmail.kind == "password_reset").order_by(OutboxEmail.id)
    return [m for m in db.session.scalars(query) if to is None or m.to_address == to]


def link_in(body: str) -> str:
    match = LINK.search(body)
    assert match, body
    return match.group(1)


def signed_in(client) -> bool:
    return client.get("/admin/usage").status_code == 200


def test_the_sign_in_page_offers_a_reset(client):
    page = client.get("/login").get_data(as_text=True)
    assert 'href="/password/forgot"' in page and "Forgot your password?" in page


def test_forgot_email_link_reset_ends_other_sessions_and_the_new_password_signs_in(app, client, auth, plans, smtp_sink):
    tenant = make_tenant()
    email = admin_email(tenant)
    laptop = app.test_client()
    assert login(laptop, email).status_code == 302 and signed_in(laptop)

    resp = forgot(client, email.upper())  # addresses are matched case-insensitively
    assert resp.status_code == 200 and "we have emailed it a link" in resp.get_data(as_text=True)
    [queued] = reset_emails()
    assert queued.to_address == email and queued.tenant_id == tenant.id

    # The real mail path: the outbox is flushed over SMTP and the person clicks the link in the message.
    assert flush_outbox() == 1
    [message] = [m for m in smtp_sink.messages if email in m["X-Envelope-To"]]
    assert message["Subject"] == "Reset your ServicePro password"
    path = link_in(message.get_body(("plain",)).get_content())
    assert f'href="http://127.0.0.1:5000{path}"' in message.get_body(("html",)).get_content()  # the HTML alternative
    plaintext = path.rsplit("/", 1)[1]
    stored = db.session.scalar(select(AccountToken.token_hash))
    assert stored == hashlib.sha256(plaintext.encode()).hexdigest() != plaintext  # only the hash is kept

    page = client.get(path)
    assert page.status_code == 200 and "Choose a new password" in page.get_data(as_text=True)
    # Bad input re-renders the form with the reason, and the link stays usable.
    resp = set_password(client, path, NEW_PASSWORD, "something-else")
    assert resp.status_code == 422 and "don&#39;t match" in resp.get_data(as_text=True)
    resp = set_password(client, path, "short")
    assert resp.status_code == 422 and "at least 8 characters" in resp.get_data(as_text=True)
    assert signed_in(laptop)

    resp = set_password(client, path, NEW_PASSWORD)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/login")
    assert "Sign in with your new password" in client.get("/login").get_data(as_text=True)
    assert not signed_in(laptop)  # the other browser is signed out
    assert auth.login(email, PASSWORD).status_code == 422  # the old password no longer works
    assert auth.login(email, NEW_PASSWORD).status_code == 302 and signed_in(client)
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "user.password_reset"))
    assert audit.tenant_id == tenant.id and audit.details == {"sessions_ended": 1}


def test_a_link_works_once(app, client, plans):
    tenant = make_tenant()
    forgot(client, admin_email(tenant))
    path = link_in(reset_emails()[0].body_text)
    assert set_password(client, path, NEW_PASSWORD).status_code == 303

    again = client.get(path)
    assert again.status_code == 410 and "already used" in again.get_data(as_text=True)
    resp = set_password(client, path, "yet-another-password")
    assert resp.status_code == 410
    assert login(app.test_client(), admin_email(tenant), "yet-another-password").status_code == 422
    assert login(app.test_client(), admin_email(tenant), NEW_PASSWORD).status_code == 302


def test_using_one_link_cancels_the_older_ones(app, client, plans):
    tenant = make_tenant()
    forgot(client, admin_email(tenant))
    forgot(client, admin_email(tenant))
    first, second = (link_in(m.body_text) for m in reset_emails())
    assert first != second
    assert set_password(client, second, NEW_PASSWORD).status_code == 303
    assert client.get(first).status_code == 410


def test_a_link_expires_after_an_hour(app, client, plans):
    from app.services.accounts import request_password_reset

    tenant = make_tenant()
    now = utcnow()
    assert request_password_reset(admin_email(tenant), now=now - timedelta(minutes=59))
    assert request_password_reset(admin_email(tenant), now=now - timedelta(minutes=61))
    db.session.commit()
    fresh, stale = (link_in(m.body_text) for m in reset_emails())

    resp = client.get(stale)
    assert resp.status_code == 410 and "expired" in resp.get_data(as_text=True)
    assert set_password(client, stale, NEW_PASSWORD).status_code == 410
    assert login(app.test_client(), admin_email(tenant), PASSWORD).status_code == 302  # unchanged
    assert set_password(client, fresh, NEW_PASSWORD).status_code == 303


def test_an_unknown_link_is_not_found(client):
    resp = client.get("/password/reset/not-a-real-token")
    assert resp.status_code == 404 and "not valid" in resp.get_data(as_text=True)


def test_unknown_and_inactive_addresses_get_the_same_answer_and_no_email(app, client, plans, monkeypatch):
    import app.services.accounts as accounts

    work: list[str] = []
    real_render, real_token = accounts.render_email, accounts._new_token
    monkeypatch.setattr(accounts, "render_email", lambda *a, **k: work.append("render") or real_render(*a, **k))
    monkeypatch.setattr(accounts, "_new_token", lambda: work.append("token") or real_token())

    known, disabled_user, disabled_tenant = make_tenant(), make_tenant(), make_tenant()
    db.session.scalar(select(User).where(User.email == admin_email(disabled_user))).active = False
    disabled_tenant.status = "disabled"
    db.session.commit()

    answers = []
    for email in (admin_email(known), "nobody@nowhere.example.com", admin_email(disabled_user),
                  admin_email(disabled_tenant)):
        resp = forgot(client, email)
        answers.append((resp.status_code, resp.get_data(as_text=True)))
    assert len(set(answers)) == 1 and answers[0][0] == 200
    # The same token and email work whether or not the address has an account (no timing assertion: count it).
    assert work == ["token", "render"] * 4
    assert [m.to_address for m in reset_emails()] == [admin_email(known)]
    assert db.session.scalar(select(db.func.count(AccountToken.id))) == 1


def test_a_malformed_address_is_a_form_error(client):
    resp = forgot(client, "not-an-address")
    assert resp.status_code == 422 and "valid email address" in resp.get_data(as_text=True)
    assert reset_emails() == []


def test_a_root_admin_can_reset_too(app, client, auth, plans):
    make_root()
    forgot(client, "root@example.com")
    [mail] = reset_emails()
    assert mail.tenant_id is None
    assert set_password(client, link_in(mail.body_text), NEW_PASSWORD).status_code == 303
    assert auth.login("root@example.com", NEW_PASSWORD).status_code == 302


@pytest.mark.parametrize("config_overrides", [{"LOGIN_RATE_LIMIT": "3 per minute",
                                                "LOGIN_ACCOUNT_RATE_LIMIT": "2 per hour",
                                                "TRUSTED_PROXIES": "127.0.0.1/32"}])
def test_reset_requests_are_throttled_per_client_and_per_address(app, client, plans, config_overrides):
    tenant = make_tenant()
    # One client, many addresses: the fourth request in a minute is refused.
    statuses = [forgot(client, f"someone{n}@example.com", {"X-Forwarded-For": "203.0.113.1"}).status_code
                for n in range(4)]
    assert statuses == [200, 200, 200, 429]
    # One address from many clients: the third request is refused, and no third email is queued.
    statuses = [forgot(client, admin_email(tenant), {"X-Forwarded-For": f"198.51.100.{n}"}).status_code
                for n in range(3)]
    assert statuses == [200, 200, 429]
    assert len(reset_emails()) == 2
    # Another client and another address are unaffected.
    assert forgot(client, "other@example.com", {"X-Forwarded-For": "192.0.2.7"}).status_code == 200


@pytest.mark.parametrize("config_overrides", [{"LOGIN_RATE_LIMIT": "3 per minute"}])
def test_guessing_at_reset_links_is_throttled(app, client, config_overrides):
    statuses = [set_password(client, f"/password/reset/guess-{n}", NEW_PASSWORD).status_code for n in range(4)]
    assert statuses == [404, 404, 404, 429]


@pytest.mark.parametrize("config_overrides", [{"LOGIN_ACCOUNT_RATE_LIMIT": "2 per hour",
                                                "TRUSTED_PROXIES": "127.0.0.1/32"}])
def test_one_invitation_link_tried_from_many_clients_is_throttled_per_link(app, client, config_overrides):
    statuses = [set_password(client, "/invitations/guess", NEW_PASSWORD, headers={"X-Forwarded-For": f"198.51.100.{n}"})
                .status_code for n in range(3)]
    assert statuses == [404, 404, 429]
    assert set_password(client, "/invitations/another", NEW_PASSWORD).status_code == 404  # another link: its own
