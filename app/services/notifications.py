"""Tenant emails through the outbox: queued idempotently in outbox_emails, sent later by flush_outbox().

A row's dedupe_key names the business fact it announces (e.g. "stage:reminder:tenant:12:invoice:345"), and the
column is unique, so queueing the same email twice — a doubled job, a retried webhook — stores it once. Rows are
sent over SMTP when SMTP_URL is set (failed sends stay pending with attempts/last_error and are retried by the next
flush, up to MAX_ATTEMPTS), otherwise they are marked `logged` and written to the log. Delivery is at least once: a
crash between the SMTP "250" and our commit resends that batch.

Every email has a plain-text body (emails/<kind>.txt, first line "Subject: …") and an HTML alternative rendered
from the same data: emails/<kind>.html where a kind has its own layout, else the text itself set in the common
HTML layout (so the wording of the two can never drift apart). Over SMTP they go as multipart/alternative.
"""
from __future__ import annotations

import json
import logging
import re
import smtplib
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from flask import current_app
from jinja2 import TemplateNotFound
from sqlalchemy import ARRAY, BigInteger, Table, any_, literal, select, text

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import Invoice, InvoiceStatus, OutboxEmail, Role, Tenant, User
from app.services.clock import local_day, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # then the row is marked `failed` and left for a human (visible in outbox_emails)
BATCH = 200


class OutboxStatus:
    PENDING = "pending"
    SENT = "sent"
    LOGGED = "logged"
    FAILED = "failed"  # gave up after MAX_ATTEMPTS


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    html: str | None = None


# -- composing ---------------------------------------------------------------------------------------------

def billing_url() -> str:
    """The absolute URL of the tenant billing page (where Update Payment Method lives)."""
    return current_app.config["APP_BASE_URL"].rstrip("/") + "/admin/billing"


def app_url(path: str) -> str:
    """An absolute URL on this app (APP_BASE_URL + path), for links in emails."""
    return current_app.config["APP_BASE_URL"].rstrip("/") + path


def render_email(template: str, **context: Any) -> Rendered:
    """Render emails/<template>.txt (first line "Subject: …", then the body) and its HTML alternative."""
    context.setdefault("billing_url", billing_url())
    # The Jinja environment directly, not render_template: no request context needed, and a pass that
    # queues thousands of emails skips the per-call context processors and signals.
    env = current_app.jinja_env
    text = env.get_template(f"emails/{template}.txt").render(**context)
    first, _, body = text.lstrip("\n").partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"emails/{template}.txt must start with a 'Subject:' line")
    subject = " ".join(first[len("Subject:"):].split())
    body = body.strip("\n") + "\n"
    own = _html_template(template)
    if own is not None:
        html = own.render(subject=subject, **context)
    else:
        html = env.get_template("emails/_text.html").render(subject=subject, blocks=text_blocks(body), **context)
    return Rendered(subject=subject, body=body, html=html)


def _html_template(template: str):
    """emails/<template>.html if the kind has its own HTML layout, else None (looked up once per app)."""
    found: dict[str, Any] = current_app.extensions.setdefault("email_html_templates", {})
    if template not in found:
        try:
            found[template] = current_app.jinja_env.get_template(f"emails/{template}.html")
        except TemplateNotFound:
            found[template] = None
    return found[template]


_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")


def text_blocks(body: str) -> list[tuple[list[list[tuple[str, str | None]]], list[str]]]:
    """A text body as paragraphs: (its lines as (text, link or None) pieces, the links alone on a line)."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n", body.strip("\n")):
        lines, links = [], []
        for line in paragraph.split("\n"):
            if _URL.fullmatch(line.strip()):
                links.append(line.strip())
                continue
            pieces: list[tuple[str, str | None]] = []
            at = 0
            for m in _URL.finditer(line):
                if m.start() > at:
                    pieces.append((line[at:m.start()], None))
                pieces.append((m.group(0), m.group(0)))
                at = m.end()
            if at < len(line):
                pieces.append((line[at:], None))
            lines.append(pieces)
        blocks.append((lines, links))
    return blocks


def among(column, ids: list[int]):
    """`column IN ids` — on PostgreSQL as `= ANY(:array)`, one parameter instead of one per id."""
    if db.engine.dialect.name == "postgresql":
        return column == any_(literal(list(ids), ARRAY(BigInteger)))
    return column.in_(ids)


def recipients_for(tenants: Iterable[Tenant]) -> dict[int, str]:
    """Map tenant id → To: address list: the billing email, else the tenant's active admins (one query)."""
    tenants = list(tenants)
    out = {t.id: t.billing_email for t in tenants if t.billing_email}
    missing = [t.id for t in tenants if not t.billing_email]
    if missing:
        rows = db.session.execute(
            select(User.tenant_id, User.email)
            .where(among(User.tenant_id, missing), User.role == Role.TENANT_ADMIN, User.active.is_(True))
            .order_by(User.tenant_id, User.id)
            .execution_options(skip_tenant_scope=True)
        ).all()
        for tenant_id, email in rows:
            current = out.get(tenant_id)
            joined = email if not current else f"{current}, {email}"
            if len(joined) <= 254:  # the column's width; the first admins are enough to reach someone
                out[tenant_id] = joined
    return out


def outbox_row(tenant_id: int | None, kind: str, dedupe_key: str, to: str, mail: Rendered,
               now: datetime) -> dict[str, Any]:
    """The values of one outbox row (for queue_rows)."""
    return {"tenant_id": tenant_id, "kind": kind, "dedupe_key": dedupe_key, "to_address": to,
            "subject": mail.subject[:255], "body_text": mail.body, "body_html": mail.html,
            "status": OutboxStatus.PENDING, "attempts": 0, "created_at": now}


def queue_rows(rows: list[dict[str, Any]]) -> int:
    """Insert outbox rows, skipping any whose dedupe_key is already queued; return how many were new."""
    return bulk_insert(OutboxEmail.__table__, rows, skip_conflicts_on="dedupe_key")


def bulk_insert(table: Table, rows: list[dict[str, Any]], *, skip_conflicts_on: str | None = None) -> int:
    """Insert many rows in one statement (rows with a conflicting `skip_conflicts_on` are skipped); return count.

    On PostgreSQL the rows travel as one JSON parameter expanded by jsonb_to_recordset: a single short statement
    instead of thousands of bind parameters, which is what keeps a pass that moves 10,000+ tenants fast.
    """
    if not rows:
        return 0
    dialect = db.engine.dialect
    columns = [c for c in table.columns if c.name in rows[0]]
    if dialect.name == "postgresql":
        names = ", ".join(c.name for c in columns)
        spec = ", ".join(f"{c.name} {c.type.compile(dialect=dialect)}" for c in columns)
        conflict = f" ON CONFLICT ({skip_conflicts_on}) DO NOTHING" if skip_conflicts_on else ""
        stmt = text(f"INSERT INTO {table.name} ({names}) SELECT {names} "
                    f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({spec}){conflict}")
        payload = json.dumps([{c.name: row[c.name] for c in columns} for row in rows], default=_json_value)
        return db.session.execute(stmt, {"rows": payload}).rowcount
    if dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise RuntimeError(f"unsupported database {dialect.name}")
    stmt = insert(table)
    if skip_conflicts_on:
        stmt = stmt.on_conflict_do_nothing(index_elements=[skip_conflicts_on])
    return sum(db.session.execute(stmt.values(row)).rowcount for row in rows)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a bulk insert")


def queue_email(tenant: Tenant, kind: str, dedupe_key: str, template: str, *, now: datetime | None = None,
                **context: Any) -> bool:
    """Queue one email to a tenant unless its dedupe_key was queued before; True when newly queued."""
    now = now or utcnow()
    to = recipients_for([tenant]).get(tenant.id)
    if not to:
        log.warning("no recipient for tenant %s: %s email not queued", tenant.id, kind)
        return False
    mail = render_email(template, tenant=tenant, **context)
    return queue_rows([outbox_row(tenant.id, kind, dedupe_key, to, mail, now)]) == 1


# -- the hooks called by payments/webhooks ---------------------------------------------------------------

def _invoice_tenant(invoice: Invoice) -> Tenant:
    return db.session.get(Tenant, invoice.tenant_id, execution_options={"skip_tenant_scope": True})


def _invoice_context(invoice: Invoice, now: datetime) -> dict[str, Any]:
    return {"invoice": invoice, "amount": format_money(invoice_balance(invoice), invoice.currency),
            "due_on": local_day(invoice.due_at) if invoice.due_at else local_day(now),
            "error": invoice.last_payment_error}


def invoice_balance(invoice: Invoice) -> int:
    """What is still owed on an invoice (after payments and credits, app.models.owed; never negative)."""
    return max(0, (invoice.amount_due or 0) - (invoice.amount_paid or 0) - (invoice.amount_credited or 0)
               - (invoice.balance_applied or 0))


def notify_payment_failed(invoice, *, now: datetime | None = None) -> None:
    """Queue the payment-failed email (with the portal link) for an invoice's first failed charge; commits."""
    now = now or utcnow()
    tenant = _invoice_tenant(invoice)
    queue_email(tenant, "payment_failed", f"payment_failed:tenant:{tenant.id}:invoice:{invoice.id}",
                "payment_failed", now=now, **_invoice_context(invoice, now))
    db.session.commit()


def notify_action_required(invoice, *, now: datetime | None = None) -> None:
    """Queue the authentication-required email with the hosted invoice link; commits."""
    now = now or utcnow()
    tenant = _invoice_tenant(invoice)
    queue_email(tenant, "action_required", f"action_required:tenant:{tenant.id}:invoice:{invoice.id}",
                "action_required", now=now, **_invoice_context(invoice, now))
    db.session.commit()


# -- invoices issued and payments received (called by invoicing and payments) ------------------------------

_CARD_BRANDS = {"amex": "American Express", "diners": "Diners Club", "discover": "Discover", "jcb": "JCB",
                "mastercard": "Mastercard", "unionpay": "UnionPay", "visa": "Visa"}


def invoice_pdf_url(invoice: Invoice) -> str:
    """The absolute link to an invoice's PDF (tenant admins of its tenant, after sign-in)."""
    return app_url(f"/admin/billing/invoices/{invoice.id}.pdf")


def _document_context(invoice: Invoice, now: datetime) -> dict[str, Any]:
    return {"invoice": invoice, "number": invoice.number or f"#{invoice.id}",
            "period": f"{invoice.period_start:%B %Y}", "period_start": invoice.period_start,
            "period_end": invoice.period_end, "pdf_url": invoice_pdf_url(invoice),
            "invoice_url": app_url(f"/admin/billing/invoices/{invoice.id}"),
            "hosted_invoice_url": invoice.hosted_invoice_url}


def queue_invoice_issued(invoice: Invoice, *, now: datetime | None = None) -> bool:
    """Queue the invoice-issued email in the caller's transaction (it commits it); True if newly queued.

    Never raises: a mail problem must not undo the invoice it announces.
    """
    if invoice.id is None or invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.PAID):
        return False
    now = now or utcnow()

    def context() -> dict[str, Any]:
        return {**_document_context(invoice, now), "amount": format_money(invoice.amount_due, invoice.currency),
                "due_on": local_day(invoice.due_at or now), "paid": invoice.status == InvoiceStatus.PAID,
                "lines": [(line.description, format_money(line.amount, invoice.currency)) for line in invoice.lines]}

    return _queue_for_invoice(invoice, "invoice_issued", context, now)


def queue_payment_receipt(invoice: Invoice, *, now: datetime | None = None) -> bool:
    """Queue the receipt for a just-paid invoice (amount, number, card) in the caller's transaction.

    Never raises. The card is read from Stripe (the charge that paid the invoice); without it the receipt says
    "your payment method on file".
    """
    if invoice.id is None or invoice.status != InvoiceStatus.PAID or not invoice.amount_paid:
        return False
    now = now or utcnow()

    def context() -> dict[str, Any]:
        return {**_document_context(invoice, now), "amount": format_money(invoice.amount_paid, invoice.currency),
                "paid_on": local_day(invoice.paid_at or now), "out_of_band": bool(invoice.paid_out_of_band),
                "card": None if invoice.paid_out_of_band else _paid_card(invoice)}

    return _queue_for_invoice(invoice, "payment_receipt", context, now)


def _paid_card(invoice: Invoice) -> str | None:
    """"Visa ending in 4242": the card whose charge paid the invoice, or None when Stripe cannot say."""
    if not invoice.stripe_invoice_id:
        return None
    try:
        card = gateway.paid_card(invoice.stripe_invoice_id)
    except Exception:  # noqa: BLE001 - the receipt goes out without the card rather than not at all
        log.warning("could not read the card that paid invoice %s", invoice.id, exc_info=True)
        return None
    if card is None:
        return None
    brand, last4 = card
    return f"{_CARD_BRANDS.get(brand, brand.title())} ending in {last4}"


def _queue_for_invoice(invoice: Invoice, kind: str, context, now: datetime) -> bool:
    db.session.flush()  # the caller's own changes fail here as they would have at its commit, not in our savepoint
    try:
        values, tenant = context(), _invoice_tenant(invoice)  # before the savepoint: the card may take a Stripe call
        with db.session.begin_nested():
            return queue_email(tenant, kind, f"{kind}:tenant:{tenant.id}:invoice:{invoice.id}", kind, now=now,
                               **values)
    except Exception:  # noqa: BLE001 - the savepoint is rolled back; the caller's transaction goes on
        log.exception("could not queue the %s email of invoice %s", kind, invoice.id)
        return False


# -- sending ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    ssl: bool


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse smtp://user:pass@host:port (or smtps:// for implicit TLS); ValueError when malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError(f"SMTP_URL must look like smtp://user:pass@host:port, got {url!r}")
    ssl = parts.scheme == "smtps"
    return SmtpTarget(host=parts.hostname, port=parts.port or (465 if ssl else 25),
                      username=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password else None, ssl=ssl)


def _message(row: OutboxEmail, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = row.to_address
    msg["Subject"] = row.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="servicepro.local")
    msg["X-ServicePro-Key"] = row.dedupe_key
    msg.set_content(row.body_text)
    if row.body_html:
        msg.add_alternative(row.body_html, subtype="html")  # multipart/alternative: text first, HTML preferred
    return msg


def _connect(target: SmtpTarget) -> smtplib.SMTP:
    cls = smtplib.SMTP_SSL if target.ssl else smtplib.SMTP
    conn = cls(target.host, target.port, timeout=15)
    if not target.ssl:
        conn.ehlo()
        if conn.has_extn("starttls"):
            conn.starttls()
            conn.ehlo()
    if target.username:
        conn.login(target.username, target.password or "")
    return conn


def _due_rows() -> list[OutboxEmail]:
    stmt = (select(OutboxEmail).where(OutboxEmail.status == OutboxStatus.PENDING)
            .order_by(OutboxEmail.id).limit(BATCH).execution_options(skip_tenant_scope=True))
    if db.engine.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)  # two flushers never send the same row
    return list(db.session.scalars(stmt))


def _record_failure(row: OutboxEmail, error: str, *, permanent: bool = False) -> None:
    row.attempts += 1
    row.last_error = error[:2000]
    if permanent or row.attempts >= MAX_ATTEMPTS:
        row.status = OutboxStatus.FAILED
        log.error("giving up on email %s (%s) after %s attempts: %s", row.id, row.dedupe_key, row.attempts, error)


def flush_outbox(*, now: datetime | None = None) -> int:
    """Send (or, without SMTP_URL, log) every pending outbox email; return how many went out."""
    smtp_url = current_app.config.get("SMTP_URL")
    target = parse_smtp_url(smtp_url) if smtp_url else None
    sender = current_app.config.get("MAIL_FROM") or "billing@servicepro.example.com"
    done = 0
    while rows := _due_rows():
        stamp = now or utcnow()
        if target is None:
            for row in rows:
                log.info("email (no SMTP_URL) to=%s subject=%r key=%s\n%s", row.to_address, row.subject,
                         row.dedupe_key, row.body_text)
                row.status, row.sent_at = OutboxStatus.LOGGED, stamp
                row.attempts += 1
                done += 1
            db.session.commit()
            continue
        sent, stalled = _send_batch(target, sender, rows, stamp)
        db.session.commit()
        done += sent
        if stalled:
            break  # something failed: the next flush retries it rather than hammering the server now
    return done


def _send_batch(target: SmtpTarget, sender: str, rows: list[OutboxEmail], stamp: datetime) -> tuple[int, bool]:
    """Send rows over one SMTP connection; return (sent, whether anything is left pending)."""
    try:
        conn = _connect(target)
    except (OSError, smtplib.SMTPException) as err:
        for row in rows:
            _record_failure(row, f"connect: {err!r}")
        log.warning("SMTP unavailable (%s); %s emails stay queued", err, len(rows))
        return 0, True
    sent, stalled = 0, False
    try:
        for row in rows:
            to_addrs = [a.strip() for a in row.to_address.split(",") if a.strip()]
            try:
                message = _message(row, sender)
            except Exception as err:  # noqa: BLE001 - a malformed row never gets better: give up on it now
                _record_failure(row, f"cannot build message: {err!r}", permanent=True)
                continue
            try:
                conn.send_message(message, to_addrs=to_addrs)
            except (OSError, smtplib.SMTPException) as err:
                _record_failure(row, repr(err))
                stalled = True
                if isinstance(err, (OSError, smtplib.SMTPServerDisconnected)):
                    break  # the connection is gone: the rest wait for the next flush, untouched
            else:
                row.status, row.sent_at, row.last_error = OutboxStatus.SENT, stamp, None
                row.attempts += 1
                sent += 1
    finally:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
    return sent, stalled


# -- formatting -------------------------------------------------------------------------------------------

_EXPONENTS = {"jpy": 0, "krw": 0, "vnd": 0, "clp": 0, "isk": 0, "ugx": 0, "xaf": 0, "xof": 0, "bhd": 3, "kwd": 3,
              "jod": 3, "omr": 3, "tnd": 3}
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "cad": "CA$", "aud": "A$", "jpy": "¥"}


def format_money(minor: int, currency: str) -> str:
    """Format minor units for people, e.g. 4900 usd → "$49.00"."""
    from decimal import Decimal

    cur = (currency or "usd").lower()
    exp = _EXPONENTS.get(cur, 2)
    major = Decimal(int(minor)).scaleb(-exp)
    text = f"{major:,.{exp}f}"
    symbol = _SYMBOLS.get(cur)
    return f"{symbol}{text}" if symbol else f"{text} {cur.upper()}"
