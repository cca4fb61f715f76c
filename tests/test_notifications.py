"""The mail outbox: idempotent queueing, sending over a real SMTP server, retries, and the payment emails."""
from __future__ import annotations

import logging
from datetime import date

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import OutboxEmail, Tenant
from app.services import notifications
from app.services.notifications import (flush_outbox, format_money, notify_action_required, notify_payment_failed,
                                        parse_smtp_url, queue_email)
from tests.factories import admin_email, make_invoice, make_tenant
from tests.support.services import free_port
from tests.support.stored import outbox


def _body(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def test_payment_failed_email_goes_out_on_the_first_failed_charge(app, plans, smtp_sink):
    tenant = make_tenant("Acme Plumbing")
    inv = make_invoice(tenant, date(2026, 3, 1), amount=12345, number="SP-2026-000042")
    inv.last_payment_error = "Your card was declined."
    db.session.commit()
    notify_payment_failed(inv)
    notify_payment_failed(inv)  # the second failed charge of the same invoice: no second email
    assert flush_outbox() == 1
    [msg] = smtp_sink.messages
    assert msg["To"] == tenant.billing_email
    assert "Payment failed for invoice SP-2026-000042" in msg["Subject"]
    body = _body(msg)
    assert "$123.45" in body and "Your card was declined." in body
    assert "http://127.0.0.1:5000/admin/billing" in body and "Update Payment Method" in body


def test_action_required_email_links_the_hosted_invoice(app, plans, smtp_sink):
    tenant = make_tenant()
    inv = make_invoice(tenant, date(2026, 3, 1))
    inv.hosted_invoice_url = "https://invoice.example/pay/in_123"
    db.session.commit()
    notify_action_required(inv)
    flush_outbox()
    [msg] = smtp_sink.messages
    assert msg["Subject"].startswith("Action required")
    assert "https://invoice.example/pay/in_123" in _body(msg) and "/admin/billing" in _body(msg)


def test_emails_link_to_the_configured_base_url(app, plans):
    app.config["APP_BASE_URL"] = "https://billing.example.com"
    tenant = make_tenant()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    assert "https://billing.example.com/admin/billing" in outbox(tenant.id)[0].body_text


def test_without_billing_email_the_tenant_admins_are_written_to(app, plans, smtp_sink):
    tenant = make_tenant()
    tenant = db.session.get(Tenant, tenant.id)
    tenant.billing_email = None
    db.session.commit()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    flush_outbox()
    assert smtp_sink.subjects(to=admin_email(tenant))


def test_queueing_is_idempotent_per_dedupe_key(app, plans):
    tenant = make_tenant()
    assert queue_email(tenant, "payment_failed", "k:1", "payment_failed", invoice=make_invoice(
        tenant, date(2026, 3, 1)), amount="$1.00", due_on=date(2026, 3, 1), error=None) is True
    inv = db.session.scalars(select(notifications.Invoice)).one()
    assert queue_email(tenant, "payment_failed", "k:1", "payment_failed", invoice=inv, amount="$1.00",
                       due_on=date(2026, 3, 1), error=None) is False
    db.session.commit()
    assert len(outbox()) == 1


def test_without_smtp_url_mail_is_kept_and_logged(app, plans, caplog, monkeypatch):
    # Alembic's fileConfig (run by the session's migrations) disables loggers that existed before it.
    monkeypatch.setattr(notifications.log, "disabled", False)
    tenant = make_tenant()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    with caplog.at_level(logging.INFO, logger="app.services.notifications"):
        assert flush_outbox() == 1
    [row] = outbox()
    assert row.status == "logged" and row.sent_at is not None
    assert "Payment failed" in caplog.text and tenant.billing_email in caplog.text
    assert flush_outbox() == 0  # logged rows are not logged again


def test_smtp_failure_is_retried_on_the_next_flush_not_lost(app, plans, smtp_sink):
    tenant = make_tenant()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    assert flush_outbox() == 0
    [row] = outbox()
    assert (row.status, row.attempts) == ("pending", 1) and "connect" in row.last_error
    assert flush_outbox() == 0
    db.session.refresh(row)
    assert row.attempts == 2
    app.config["SMTP_URL"] = smtp_sink.url  # the server is back
    assert flush_outbox() == 1
    db.session.refresh(row)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert len(smtp_sink.messages) == 1
    assert flush_outbox() == 0 and len(smtp_sink.messages) == 1  # sent once


def test_gives_up_after_max_attempts(app, plans, monkeypatch):
    monkeypatch.setattr(notifications, "MAX_ATTEMPTS", 3)
    tenant = make_tenant()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"
    for _ in range(5):
        flush_outbox()
    [row] = outbox()
    assert (row.status, row.attempts) == ("failed", 3)


def test_a_malformed_row_does_not_block_the_others(app, plans, smtp_sink):
    good, bad = make_tenant(), make_tenant()
    for t in (good, bad):
        notify_payment_failed(make_invoice(t, date(2026, 3, 1)))
    row = db.session.scalars(select(OutboxEmail).where(OutboxEmail.tenant_id == bad.id)).one()
    row.to_address = "not an address <"
    db.session.commit()
    flush_outbox()
    statuses = {r.tenant_id: (r.status, r.attempts) for r in outbox()}
    assert statuses[good.id] == ("sent", 1)
    assert statuses[bad.id] == ("failed", 1)  # it can never be sent: no retries
    assert smtp_sink.subjects(to=good.billing_email)


def test_flush_outbox_job_runs_on_the_mail_queue(app, plans, smtp_sink):
    from rq import SimpleWorker

    from app.extensions import rq
    from app.queue import enqueue_unique

    tenant = make_tenant()
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1)))
    enqueue_unique("mail", "app.jobs.flush_outbox", job_id="outbox-flush-test")
    SimpleWorker([rq.queue("mail")], connection=rq.connection).work(burst=True)
    assert smtp_sink.subjects(to=tenant.billing_email)


def test_parse_smtp_url():
    t = parse_smtp_url("smtp://us%40er:p%3Ass@mail.example.com:2525")
    assert (t.host, t.port, t.username, t.password, t.ssl) == ("mail.example.com", 2525, "us@er", "p:ss", False)
    assert parse_smtp_url("smtps://mail.example.com").port == 465
    assert parse_smtp_url("smtp://localhost").username is None
    with pytest.raises(ValueError):
        parse_smtp_url("http://mail.example.com")


def test_format_money():
    assert format_money(4900, "usd") == "$49.00"
    assert format_money(123456789, "usd") == "$1,234,567.89"
    assert format_money(500, "jpy") == "¥500"
    assert format_money(1050, "sek") == "10.50 SEK"
