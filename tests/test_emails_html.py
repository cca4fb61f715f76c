"""Invoice and receipt emails, and the HTML alternative of every kind, as a real SMTP server receives them."""
from __future__ import annotations

import html as html_lib
import re
from datetime import date, timedelta

from sqlalchemy import select

from app.extensions import db
from app.models import Invoice, OutboxEmail
from app.services import invoicing, notifications
from app.services.dunning import reevaluate_tenant, run_pass
from app.services.notifications import flush_outbox, notify_action_required, notify_payment_failed
from tests.billing_support import add_usage
from tests.factories import at, make_invoice, make_tenant, tenant_with_card, utc

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)


def parts(msg) -> tuple[str, str]:
    """The text and HTML bodies of a multipart/alternative message."""
    assert msg.get_content_type() == "multipart/alternative", msg.get_content_type()
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]  # the richest last, as mail clients expect
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def visible(html: str) -> str:
    """What a reader of the HTML sees, whitespace collapsed."""
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def mail_to(sink, address: str) -> list:
    return [m for m in sink.messages if address in m["To"]]


def test_issuing_and_paying_an_invoice_sends_the_invoice_then_the_receipt(app, plans, emulator, smtp_sink):
    tenant = tenant_with_card(name="Acme & Sons <Plumbing>", created_at=EARLY)
    add_usage(tenant.id, date(2026, 10, 5), voice_minutes=1323)  # 823 billable × $0.015 = $12.345 → $12.35
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    invoice = db.session.get(Invoice, outcome.invoice_id)
    assert invoice.status == "paid" and invoice.amount_due == 4135
    flush_outbox()
    issued, receipt = mail_to(smtp_sink, tenant.billing_email)

    pdf_url = f"http://127.0.0.1:5000/admin/billing/invoices/{invoice.id}.pdf"
    assert issued["Subject"] == f"Invoice {invoice.number} for October 2026: $41.35, due 2026-11-01"
    text, html = parts(issued)
    assert "Hello Acme & Sons <Plumbing>," in text
    for fact in ("Invoice: " + invoice.number, "Amount: $41.35", "Period: 2026-10-01 to 2026-10-31",
                 "Due date: 2026-11-01", f"{invoice.lines[0].description}: $29.00",
                 f"{invoice.lines[1].description}: $12.35", invoice.hosted_invoice_url, pdf_url):
        assert fact in text, fact
    assert "Hello Acme &amp; Sons &lt;Plumbing&gt;," in html  # escaped in the HTML
    assert f'href="{pdf_url}"' in html and f'href="{html_lib.escape(invoice.hosted_invoice_url)}"' in html
    seen = visible(html)
    for fact in ("Invoice " + invoice.number, "Amount $41.35", "Due date 2026-11-01", "Total $41.35"):
        assert fact in seen, fact

    assert receipt["Subject"] == f"Receipt: {dollars(invoice.amount_paid)} paid for invoice {invoice.number}"
    text, html = parts(receipt)
    paid_on = invoice.paid_at.date().isoformat()  # Stripe's time of payment (the emulator's clock)
    for fact in ("Amount paid: $41.35", f"Invoice: {invoice.number} (October 2026)", f"Paid on: {paid_on}",
                 "Paid with: Visa ending in 4242", pdf_url):
        assert fact in text, fact
    seen = visible(html)
    for fact in ("Amount paid $41.35", f"Invoice {invoice.number} (October 2026)", "Paid with Visa ending in 4242"):
        assert fact in seen, fact

    # Running the month again announces nothing twice.
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW + timedelta(hours=1))
    assert flush_outbox() == 0 and len(mail_to(smtp_sink, tenant.billing_email)) == 2


def test_a_declined_charge_sends_the_invoice_and_the_failure_but_no_receipt(app, plans, emulator, smtp_sink):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", created_at=EARLY)
    invoice = db.session.get(Invoice, invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW).invoice_id)
    flush_outbox()
    issued, failed = mail_to(smtp_sink, tenant.billing_email)
    assert issued["Subject"].startswith(f"Invoice {invoice.number} for October 2026: $29.00")
    assert "We charge the card on file automatically" in parts(issued)[0]
    text, html = parts(failed)
    assert failed["Subject"].startswith(f"Payment failed for invoice {invoice.number}")
    assert "$29.00" in text and "$29.00" in visible(html)
    assert 'href="http://127.0.0.1:5000/admin/billing"' in html and "Update Payment Method" in html


def test_a_mail_problem_never_undoes_the_invoice_or_its_payment(app, plans, emulator, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(notifications, "render_email", broken)
    tenant = tenant_with_card(created_at=EARLY)
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    db.session.expire_all()
    assert outcome.result == "invoiced" and db.session.get(Invoice, outcome.invoice_id).status == "paid"
    assert db.session.scalars(select(OutboxEmail)).all() == []


def test_without_smtp_the_outbox_keeps_both_bodies(app, plans):
    tenant = make_tenant("Outbox Co")
    notify_payment_failed(make_invoice(tenant, date(2026, 3, 1), amount=12345, number="SP-HTML-1"))
    [row] = db.session.scalars(select(OutboxEmail)).all()
    assert "$123.45" in row.body_text and "$123.45" in visible(row.body_html)
    assert row.body_html.lstrip().startswith("<!doctype html>")


def sentences(text: str) -> list[str]:
    """The text body's words, line by line, URLs left out (the HTML shows those as buttons)."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("http")]


def test_every_dunning_and_payment_email_has_an_html_alternative_saying_the_same(app, plans, smtp_sink):
    amount = 4900
    tenant = make_tenant("Ladder & Co")
    invoice = make_invoice(tenant, at(date(2026, 3, 2)), amount=amount, number="SP-LADDER-1")
    invoice.hosted_invoice_url = "https://invoice.example/pay/in_1"
    db.session.commit()
    notify_payment_failed(invoice)
    notify_action_required(invoice)
    for days in (14, 30, 45):
        day = date(2026, 3, 2) + timedelta(days=days)
        run_pass(day, now=at(day, 2))
    invoice = db.session.get(Invoice, invoice.id)
    invoice.status, invoice.amount_paid, invoice.paid_at = "paid", amount, at(date(2026, 4, 20))
    db.session.commit()
    reevaluate_tenant(tenant.id, now=at(date(2026, 4, 20), 3))
    flush_outbox()
    messages = mail_to(smtp_sink, tenant.billing_email)
    assert [m["Subject"].split()[0] for m in messages] == ["Payment", "Action", "Payment", "Service", "Account",
                                                          "Thank"]  # failed, 3-D Secure, the ladder, restored
    for msg in messages:
        text, html = parts(msg)
        seen = visible(html)
        assert "Ladder &amp; Co" in html and "Ladder & Co" in seen
        assert 'href="http://127.0.0.1:5000/admin/billing"' in html
        if msg["Subject"].startswith(("Payment failed", "Action required")):
            continue  # their own HTML layout: a button instead of the link line
        for line in sentences(text):
            assert line in seen, (msg["Subject"], line)
