"""The team page (CONTRACT §8.6): invite another admin, accept by setting a password, edit the billing email."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from app.extensions import db
from app.models import AccountToken, AuditLog, OutboxEmail, Role, Tenant, User, utcnow
from app.services.notifications import flush_outbox, recipients_for
from tests.factories import admin_email, make_tenant
from tests.support.queues import run_jobs
from tests.support.web import csrf_from, login, page_csrf

LINK = re.compile(r"http://127\.0\.0\.1:5000(/invitations/[A-Za-z0-9_-]+)")
NEW_PASSWORD = "joining-the-team-2026"


def post(client, path: str, **data):
    return client.post(path, data={**data, "csrf_token": page_csrf(client, "/admin/team")})


def admin_of(tenant: Tenant) -> User:
    return db.session.scalar(select(User).where(User.email == admin_email(tenant)))


def invitation_emails() -> list[OutboxEmail]:
    return list(db.session.scalars(select(OutboxEmail).where(OutboxEmail.kind == "invitation")
                                   .order_by(OutboxEmail.id)))


def link_in(body: str) -> str:
    match = LINK.search(body)
    assert match, body
    return match.group(1)


def accept(client, path: str, password: str = NEW_PASSWORD, confirm: str | None = None):
    token = csrf_from(client.get(path).get_data(as_text=True))
    return client.post(path, data={"password": password, "password_confirm": password if confirm is None else confirm,
                                   "csrf_token": token})


def test_an_invited_colleague_sets_a_password_and_is_an_admin_of_that_tenant(app, client, auth, plans, smtp_sink):
    tenant = make_tenant("Dunmore Roofing")
    assert auth.login(admin_email(tenant)).status_code == 302
    page = client.get("/admin/team").get_data(as_text=True)
    assert admin_email(tenant) in page and "UTC" in page  # the admin, with the time of their last sign-in
    assert 'href="/admin/team"' in page  # the nav link

    resp = post(client, "/admin/team/invite", email="  Sam@Example.com ")
    assert resp.status_code == 303
    page = client.get("/admin/team").get_data(as_text=True)
    assert "Invitation sent to sam@example.com" in page and 'id="team-invitations"' in page
    assert "sam@example.com" in page.split('id="team-invitations"')[1]

    assert flush_outbox() == 1
    [message] = smtp_sink.messages
    assert message["X-Envelope-To"] == "sam@example.com"
    assert message["Subject"] == f"{admin_email(tenant)} invited you to Dunmore Roofing on ServicePro"
    path = link_in(message.get_body(("plain",)).get_content())
    assert "Set your password to join" in message.get_body(("html",)).get_content()

    sam = app.test_client()
    page = sam.get(path)
    assert page.status_code == 200 and "Set your password to join Dunmore Roofing" in page.get_data(as_text=True)
    resp = accept(sam, path, NEW_PASSWORD, "typo")
    assert resp.status_code == 422 and "don&#39;t match" in resp.get_data(as_text=True)
    resp = accept(sam, path)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/usage")
    assert sam.get("/admin/usage").status_code == 200  # signed in at once

    user = db.session.scalar(select(User).where(User.email == "sam@example.com"))
    assert (user.tenant_id, user.role, user.active) == (tenant.id, Role.TENANT_ADMIN, True)
    assert user.last_login_at is not None
    page = sam.get("/admin/team").get_data(as_text=True)
    assert "No pending invitations." in page and admin_email(tenant) in page
    assert accept(app.test_client(), path, "another-password").status_code == 410  # the link worked once
    assert login(app.test_client(), "sam@example.com", NEW_PASSWORD).status_code == 302
    actions = set(db.session.scalars(select(AuditLog.action).where(AuditLog.tenant_id == tenant.id)))
    assert {"team.invite", "team.invitation_accepted"} <= actions


def test_an_address_that_already_signs_in_anywhere_cannot_be_invited(app, client, auth, plans):
    tenant, other = make_tenant(), make_tenant()
    auth.login(admin_email(tenant))
    for email, message in ((admin_email(other), "already has a ServicePro account"),
                           (admin_email(tenant).upper(), "already has a ServicePro account"),
                           ("not-an-address", "valid email address"), ("", "Enter an email address")):
        resp = post(client, "/admin/team/invite", email=email)
        assert resp.status_code == 422 and message in resp.get_data(as_text=True), email
    assert invitation_emails() == [] and db.session.scalar(select(AccountToken.id)) is None


def test_a_tenant_admin_sees_and_touches_only_their_own_team(app, client, auth, plans):
    from app.services.accounts import invite_admin

    mine, theirs = make_tenant("Mine Co"), make_tenant("Theirs Co")
    secret = invite_admin(theirs, "their-hire@example.com", inviter=admin_of(theirs))
    db.session.commit()
    auth.login(admin_email(mine))

    for query in ("", f"?tenant_id={theirs.id}"):
        page = client.get(f"/admin/team{query}").get_data(as_text=True)
        assert "their-hire@example.com" not in page and admin_email(theirs) not in page and "Theirs Co" not in page
    for action in ("resend", "cancel"):
        assert post(client, f"/admin/team/invitations/{secret.id}/{action}").status_code == 404
    db.session.expire_all()
    row = db.session.get(AccountToken, secret.id)
    assert row.cancelled_at is None and len(invitation_emails()) == 1
    # Inviting the same address into my own tenant is my own, separate invitation.
    assert post(client, "/admin/team/invite", email="their-hire@example.com").status_code == 303
    assert db.session.scalar(select(db.func.count(AccountToken.id)).where(AccountToken.tenant_id == mine.id)) == 1


def test_cancelling_or_resending_kills_the_old_link(app, client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    post(client, "/admin/team/invite", email="first@example.com")
    post(client, "/admin/team/invite", email="second@example.com")
    first, second = (db.session.scalar(select(AccountToken).where(AccountToken.email == e))
                     for e in ("first@example.com", "second@example.com"))
    first_link, second_link = (link_in(m.body_text) for m in invitation_emails())

    assert post(client, f"/admin/team/invitations/{first.id}/cancel").status_code == 303
    resp = client.get(first_link)
    assert resp.status_code == 410 and "cancelled" in resp.get_data(as_text=True)
    assert "first@example.com" not in client.get("/admin/team").get_data(as_text=True)
    assert post(client, f"/admin/team/invitations/{first.id}/cancel").status_code == 404  # already cancelled

    assert post(client, f"/admin/team/invitations/{second.id}/resend").status_code == 303
    assert client.get(second_link).status_code == 410
    newest = link_in(invitation_emails()[-1].body_text)
    assert newest != second_link
    assert accept(app.test_client(), newest).status_code == 303


def test_an_invitation_expires_after_seven_days(app, client, auth, plans):
    from app.services.accounts import invite_admin

    tenant = make_tenant()
    now = utcnow()
    invite_admin(tenant, "late@example.com", inviter=admin_of(tenant), now=now - timedelta(days=7, minutes=1))
    db.session.commit()
    path = link_in(invitation_emails()[0].body_text)
    resp = client.get(path)
    assert resp.status_code == 410 and "expired" in resp.get_data(as_text=True)
    assert accept(client, path).status_code == 410
    assert db.session.scalar(select(User.id).where(User.email == "late@example.com")) is None
    auth.login(admin_email(tenant))
    assert "Expired" in client.get("/admin/team").get_data(as_text=True)  # and can be resent from there


def test_an_invited_address_that_signed_up_elsewhere_meanwhile_is_told_so(app, client, plans):
    from app.services.accounts import invite_admin

    tenant, other = make_tenant(), make_tenant()
    invite_admin(tenant, "popular@example.com", inviter=admin_of(tenant))
    invite_admin(other, "popular@example.com", inviter=admin_of(other))
    db.session.commit()
    first, second = (link_in(m.body_text) for m in invitation_emails())
    assert accept(app.test_client(), first).status_code == 303
    resp = accept(client, second)
    assert resp.status_code == 410 and "already has a ServicePro account" in resp.get_data(as_text=True)
    assert db.session.scalar(select(User.tenant_id).where(User.email == "popular@example.com")) == tenant.id


def test_a_restricted_tenant_can_still_run_its_team(app, client, auth, plans):
    tenant = make_tenant(dunning_stage="restricted")
    auth.login(admin_email(tenant))
    assert client.get("/admin/team").status_code == 200
    assert post(client, "/admin/team/invite", email="payer@example.com").status_code == 303


def test_the_billing_email_is_edited_audited_and_sent_to_stripe(app, client, auth, plans, emulator):
    from app.services.customers import ensure_customer

    tenant = make_tenant()
    customer_id = ensure_customer(tenant.id)
    old = tenant.billing_email
    auth.login(admin_email(tenant))
    assert old in client.get("/admin/team").get_data(as_text=True)

    resp = post(client, "/admin/team/billing-email", billing_email="not an address")
    assert resp.status_code == 422 and "valid email address" in resp.get_data(as_text=True)
    assert 'value="not an address"' in resp.get_data(as_text=True)  # the form keeps what was typed
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).billing_email == old

    resp = post(client, "/admin/team/billing-email", billing_email="Accounts@Dunmore.example.com")
    assert resp.status_code == 303
    assert "Billing emails now go to accounts@dunmore.example.com" in client.get("/admin/team").get_data(as_text=True)
    db.session.expire_all()
    tenant = db.session.get(Tenant, tenant.id)
    assert tenant.billing_email == "accounts@dunmore.example.com"
    assert recipients_for([tenant]) == {tenant.id: "accounts@dunmore.example.com"}  # dunning emails follow
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "tenant.billing_email_changed"))
    assert audit.details == {"from": old, "to": "accounts@dunmore.example.com"}
    assert audit.actor_user_id == admin_of(tenant).id

    run_jobs(("billing",))
    assert emulator.stripe_client().v1.customers.retrieve(customer_id).email == "accounts@dunmore.example.com"


def test_the_billing_email_is_saved_when_stripe_is_down(app, client, auth, plans):
    from rq.registry import FailedJobRegistry

    from app.extensions import rq

    tenant = make_tenant(stripe_customer_id="cus_unreachable")  # STRIPE_API_BASE: nothing listens
    auth.login(admin_email(tenant))
    resp = post(client, "/admin/team/billing-email", billing_email="new-billing@example.com")
    assert resp.status_code == 303  # Stripe is only told by the job
    run_jobs(("billing",))
    # The job failed where an operator sees it (Jobs page, requeue); it re-reads the address when it runs.
    assert f"customer-email-{tenant.id}" in FailedJobRegistry(queue=rq.queue("billing")).get_job_ids()
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).billing_email == "new-billing@example.com"


def test_the_billing_email_edit_says_so_when_the_job_queue_is_down(app, client, auth, plans):
    tenant = make_tenant(stripe_customer_id="cus_somewhere")
    auth.login(admin_email(tenant))
    token = page_csrf(client, "/admin/team")
    app.config["REDIS_URL"] = "redis://127.0.0.1:9/0"
    app.extensions.pop("redis_connection", None)
    resp = client.post("/admin/team/billing-email", data={"billing_email": "queue-down@example.com",
                                                          "csrf_token": token})
    assert resp.status_code == 303
    page = client.get("/admin/team").get_data(as_text=True)
    assert "could not be redirected just now" in page
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).billing_email == "queue-down@example.com"
