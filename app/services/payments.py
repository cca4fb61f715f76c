"""Charging invoices: one attempt row per Stripe charge, committed before the call, never a double charge.

Two lines of defence against charging twice:
1. a per-invoice work lock (`work_lock`): a PostgreSQL advisory lock on a dedicated connection (released by the
   server if the worker dies), or a Redis lock on other databases; a second concurrent charge simply skips;
2. Stripe idempotency: every pay call carries `pay-attempt-<attempt id>`, and before a new attempt we re-read
   the invoice from Stripe, so one already paid (by a lost response, the hosted page or a webhook) is applied,
   not charged again.

`apply_stripe_invoice` is THE mapping of a Stripe invoice onto our row; webhooks and reconciliation use it too.
`after_invoice_change` is what follows a committed change: the tenant's dunning stage, or an email.
The tenant's own actions (Pay now, the card update's return) are here too, with typed outcomes: the billing
blueprint words them.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from flask import current_app
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.pool import NullPool

from app import stripe_gateway as gateway
from app.extensions import db, rq
from app.models import AttemptStatus, Invoice, InvoiceStatus, PaymentAttempt, Tenant, utcnow
from app.services import dunning, notifications
from app.services.customers import ensure_customer
from app.stripe_gateway import GatewayError, Outcome
from app.stripe_objects import field_of

log = logging.getLogger(__name__)

#: Status of the unsaved PaymentAttempt returned when no charge was made (see charge_invoice).
SKIPPED = "skipped"


def retry_later_delay() -> timedelta:
    """How long a charge Stripe could not take now (5xx, rate limit, timeout) waits for its next try, with a fresh
    attempt after re-reading Stripe's status (PAYMENT_RETRY_LATER_SECONDS, 15 minutes unless configured)."""
    return timedelta(seconds=current_app.config["PAYMENT_RETRY_LATER_SECONDS"])


# Monotonic order of invoice states: a state never moves to a lower rank. Paid outranks void ("paid wins").
_RANK = {InvoiceStatus.DRAFT: 0, InvoiceStatus.OPEN: 1, InvoiceStatus.UNCOLLECTIBLE: 2, InvoiceStatus.VOID: 3,
         InvoiceStatus.PAID: 4}


# -- the per-invoice work lock ---------------------------------------------------------------------------

def _lock_key(name: str) -> int:
    # A stable signed 64-bit key for pg advisory locks; it must never change between releases.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _lock_engine():
    app = current_app._get_current_object()
    engine = app.extensions.get("billing_lock_engine")
    if engine is None:
        # NullPool: the lock's connection is really closed on release, so the server drops the lock with it.
        engine = create_engine(db.engine.url, poolclass=NullPool)
        app.extensions["billing_lock_engine"] = engine
    return engine


@contextmanager
def work_lock(name: str, timeout: int = 900) -> Iterator[bool]:
    """Hold the named billing work lock if it is free; yield whether we hold it (never waits)."""
    if db.engine.dialect.name == "postgresql":
        conn = _lock_engine().connect()
        try:
            got = bool(conn.scalar(text("select pg_try_advisory_lock(:k)"), {"k": _lock_key(name)}))
            yield got
        finally:
            conn.close()  # ends the server session: the advisory lock goes with it
        return
    from redis.exceptions import LockError

    lock = rq.connection.lock(f"servicepro:lock:{name}", timeout=timeout, blocking=False)
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            try:
                lock.release()
            except LockError:
                log.warning("billing lock %s expired before release", name)


def invoice_lock_name(invoice_id: int) -> str:
    return f"invoice-{invoice_id}"


# -- mapping Stripe's invoice onto ours --------------------------------------------------------------------

def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), timezone.utc) if value else None


def apply_stripe_invoice(invoice: Invoice, stripe_invoice: Any, *, now: datetime | None = None) -> bool:
    """Apply a Stripe invoice object's state to our invoice row, monotonically; return True if anything changed.

    The one mapping used by charging, webhooks and reconciliation. `stripe_invoice` is a Stripe object or a
    plain dict (a webhook's data.object). States only move forward: draft → open → uncollectible → void, and
    paid outranks them all ("paid wins"), so a stale or out-of-order object can never reopen a paid or void
    invoice. On paid: amount_paid, paid_at (Stripe's paid_at, else now) and paid_out_of_band are set and the
    retry schedule and last error are cleared. Does not commit and does not call dunning: the caller commits,
    then calls dunning.reevaluate_tenant when the status changed.
    """
    now = now or utcnow()
    changed = False

    def put(attr: str, value: Any) -> None:
        nonlocal changed
        if getattr(invoice, attr) != value:
            setattr(invoice, attr, value)
            changed = True

    stripe_id = field_of(stripe_invoice, "id")
    if stripe_id and invoice.stripe_invoice_id is None:
        put("stripe_invoice_id", stripe_id)
    hosted = field_of(stripe_invoice, "hosted_invoice_url")
    if hosted and invoice.hosted_invoice_url != hosted:
        put("hosted_invoice_url", hosted)
    ending = field_of(stripe_invoice, "ending_balance")
    if ending is not None:  # finalized: the customer credit Stripe applied to it (issue 17; a debit is not ours)
        put("balance_applied", max(0, int(ending) - int(field_of(stripe_invoice, "starting_balance", 0))))

    try:
        new = InvoiceStatus(field_of(stripe_invoice, "status", ""))
    except ValueError:
        return changed
    current = InvoiceStatus(invoice.status)
    if _RANK[new] < _RANK[current] or (new == current and new != InvoiceStatus.PAID):
        return changed
    put("status", new.value)
    if new == InvoiceStatus.PAID:
        transitions = field_of(stripe_invoice, "status_transitions", {}) or {}
        put("amount_paid", int(field_of(stripe_invoice, "amount_paid", invoice.amount_due)))
        if invoice.paid_at is None:
            put("paid_at", _ts(field_of(transitions, "paid_at")) or now)
        off_stripe = int(field_of(stripe_invoice, "amount_paid_off_stripe", 0) or 0)
        if off_stripe > 0 or field_of(stripe_invoice, "paid_out_of_band", False):
            put("paid_out_of_band", True)
        put("next_payment_attempt_at", None)
        put("last_payment_error", None)
        put("last_payment_error_code", None)
        put("hard_decline", False)
        if current != InvoiceStatus.PAID:
            notifications.queue_payment_receipt(invoice, now=now)  # issue 18: in this transaction, never raises
    elif new in (InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE):
        put("next_payment_attempt_at", None)
    return changed


# -- the retry schedule ----------------------------------------------------------------------------------

def next_retry_at(issued_at: datetime, now: datetime, retry_days: list[int], *, hard: bool = False
                  ) -> datetime | None:
    """Return the next scheduled retry after `now` (days after issue), or None for hard declines or past the last."""
    if hard:
        return None
    for days in sorted(retry_days):
        at = issued_at + timedelta(days=days)
        if at > now:
            return at
    return None


# -- charging --------------------------------------------------------------------------------------------

def _skipped(invoice: Invoice, why: str, trigger: str) -> PaymentAttempt:
    # Never added to the session: callers (and the charge job's result) just read .status and .error_message.
    return PaymentAttempt(invoice_id=invoice.id, tenant_id=invoice.tenant_id, trigger=trigger, status=SKIPPED,
                          idempotency_key="", error_message=why)


def charge_invoice(invoice_id: int, trigger: str = "retry", *, now: datetime | None = None) -> PaymentAttempt:
    """Charge an open invoice once; return the attempt, or an unsaved one with status "skipped" saying why not."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        raise LookupError(f"invoice {invoice_id} not found")
    with work_lock(invoice_lock_name(invoice_id)) as got:
        if not got:
            return _skipped(invoice, "another charge of this invoice is in progress", trigger)
        db.session.refresh(invoice)
        return charge_locked(invoice, trigger=trigger, now=now)


def charge_locked(invoice: Invoice, *, trigger: str, now: datetime | None = None) -> PaymentAttempt:
    """Charge an invoice whose work lock the caller holds (see charge_invoice)."""
    now = now or utcnow()
    if invoice.status != InvoiceStatus.OPEN or invoice.balance <= 0:
        return _skipped(invoice, f"invoice is {invoice.status}", trigger)
    if not invoice.stripe_invoice_id:
        return _skipped(invoice, "invoice is not in Stripe yet", trigger)
    try:
        current = gateway.retrieve_invoice(invoice.stripe_invoice_id)
    except GatewayError as err:
        if err.outcome == Outcome.RETRY_LATER:
            invoice.next_payment_attempt_at = now + retry_later_delay()
            db.session.commit()
        else:  # Stripe does not know the invoice we recorded: a person must look, retrying will not help
            invoice.next_payment_attempt_at = None
            flag_billing_error(invoice.tenant_id, f"reading invoice {invoice.number or invoice.id} from Stripe: "
                                                  f"{err.message}", now)
        return _skipped(invoice, f"could not read the invoice from Stripe: {err.message}", trigger)
    if apply_stripe_invoice(invoice, current, now=now):
        db.session.commit()
    if invoice.status != InvoiceStatus.OPEN:
        _close_interrupted_attempts(invoice, now)
        after_invoice_change(invoice, InvoiceChange.STATUS, now)
        return _skipped(invoice, f"Stripe already has the invoice {invoice.status}", trigger)

    # Each kind of email goes out once per invoice: on its first decline, on its first authentication request.
    earlier = set(db.session.scalars(select(PaymentAttempt.status).distinct().where(
        PaymentAttempt.invoice_id == invoice.id)))
    # We hold the invoice's lock, so an attempt still pending was interrupted; Stripe has just said the invoice
    # is still open, so it collected nothing. Closed here, it is not re-driven again by the stuck-rows pass.
    if AttemptStatus.PENDING in earlier:
        _close_interrupted_attempts(invoice, now)
    attempt = PaymentAttempt(invoice_id=invoice.id, tenant_id=invoice.tenant_id, trigger=trigger,
                             status=AttemptStatus.PENDING, idempotency_key=f"pending-{uuid.uuid4().hex}",
                             created_at=now)
    db.session.add(attempt)
    db.session.flush()
    # The key comes from the attempt's own id, and the row is committed BEFORE Stripe is called: a crash after the
    # call leaves a pending attempt, and the next charge reads Stripe's invoice first (paid → nothing charged).
    attempt.idempotency_key = f"pay-attempt-{attempt.id}"
    db.session.commit()

    try:
        paid = gateway.pay_invoice(invoice.stripe_invoice_id, attempt.idempotency_key)
    except GatewayError as err:
        return _record_failure(invoice, attempt, err, now, earlier)
    attempt.status = AttemptStatus.SUCCEEDED
    attempt.finished_at = now
    apply_stripe_invoice(invoice, paid, now=now)
    db.session.commit()
    after_invoice_change(invoice, InvoiceChange.STATUS, now)
    return attempt


def _close_interrupted_attempts(invoice: Invoice, now: datetime) -> None:
    # A pending attempt means a run died between calling Stripe and recording the answer; Stripe's invoice
    # state (already applied) is the truth now, so the attempt is closed as interrupted rather than left pending.
    # Called with the invoice's work lock held (no charge of it is in flight).
    db.session.execute(
        update(PaymentAttempt)
        .where(PaymentAttempt.invoice_id == invoice.id, PaymentAttempt.status == AttemptStatus.PENDING)
        .values(status=AttemptStatus.ERROR, finished_at=now, error_code="interrupted",
                error_message=f"interrupted before its outcome was recorded; Stripe reports the invoice "
                              f"{invoice.status}"))
    db.session.commit()


def _record_failure(invoice: Invoice, attempt: PaymentAttempt, err: GatewayError, now: datetime,
                    earlier: set[str]) -> PaymentAttempt:
    attempt.error_code = err.code
    attempt.decline_code = err.decline_code
    attempt.error_message = err.message
    attempt.finished_at = now
    issued = invoice.issued_at or now
    retry_days = current_app.config.get("PAYMENT_RETRY_DAYS", [3, 7, 12])

    if err.outcome == Outcome.PAYMENT_FAILED:
        attempt.status = AttemptStatus.FAILED
        invoice.last_payment_error = err.message
        invoice.last_payment_error_code = err.decline_code or err.code
        invoice.hard_decline = err.hard_decline
        invoice.next_payment_attempt_at = next_retry_at(issued, now, retry_days, hard=err.hard_decline)
        db.session.commit()
        if AttemptStatus.FAILED not in earlier:
            after_invoice_change(invoice, InvoiceChange.PAYMENT_FAILED, now)
    elif err.outcome == Outcome.ACTION_REQUIRED:
        attempt.status = AttemptStatus.ACTION_REQUIRED
        invoice.last_payment_error = err.message
        invoice.last_payment_error_code = err.code or "authentication_required"
        # Off-session retries cannot authenticate; the customer pays on the hosted page (or changes card).
        invoice.next_payment_attempt_at = None
        db.session.commit()
        if AttemptStatus.ACTION_REQUIRED not in earlier:
            after_invoice_change(invoice, InvoiceChange.ACTION_REQUIRED, now)
    elif err.outcome == Outcome.RETRY_LATER:
        attempt.status = AttemptStatus.ERROR
        invoice.next_payment_attempt_at = now + retry_later_delay()
        db.session.commit()
    else:
        attempt.status = AttemptStatus.ERROR
        db.session.commit()
        # Stripe refuses to pay an invoice that got paid or voided meanwhile: that is not a bug.
        try:
            current = gateway.retrieve_invoice(invoice.stripe_invoice_id)
        except GatewayError:
            current = None
        if current is not None and apply_stripe_invoice(invoice, current, now=now) \
                and invoice.status != InvoiceStatus.OPEN:
            db.session.commit()
            after_invoice_change(invoice, InvoiceChange.STATUS, now)
            return attempt
        invoice.next_payment_attempt_at = None
        flag_billing_error(invoice.tenant_id, f"charging invoice {invoice.number or invoice.id}: {err.message}",
                           now)
    return attempt


# -- what follows a change of an invoice -----------------------------------------------------------------

class InvoiceChange(StrEnum):
    """What just happened to an invoice (after_invoice_change says what follows)."""

    STATUS = "status"  # its status moved, or Stripe has it closed: the tenant's dunning stage is derived again
    PAYMENT_FAILED = "payment_failed"  # a charge was declined: the tenant gets the payment-failed email
    ACTION_REQUIRED = "action_required"  # the bank asks for authentication: the tenant gets the hosted-page email


def after_invoice_change(invoice: Invoice, change: InvoiceChange, now: datetime, *,
                         raise_errors: bool = False) -> None:
    """Follow a committed invoice change: derive the tenant's dunning stage again, or email the tenant.

    A charge never fails here: a mail or dunning problem must not undo a recorded charge outcome (the nightly
    pass and the outbox catch up), so the error is logged and the session rolled back. A webhook passes
    `raise_errors=True` so that its event is retried. The outbox's dedupe key (one email per invoice and kind)
    makes a repeated call send nothing.
    """
    email = {InvoiceChange.PAYMENT_FAILED: notifications.notify_payment_failed,
             InvoiceChange.ACTION_REQUIRED: notifications.notify_action_required}.get(change)
    tenant_id = None if email else invoice.tenant_id
    try:
        if email:
            email(invoice, now=now)
        else:
            dunning.reevaluate_tenant(tenant_id, now=now)
    except Exception:  # noqa: BLE001 - see the docstring
        if raise_errors:
            raise
        db.session.rollback()
        if email:
            log.exception("the %s email for invoice %s failed", change.value, invoice.id)
        else:
            log.exception("dunning re-evaluation failed for tenant %s", tenant_id)


def flag_billing_error(tenant_id: int, message: str, now: datetime) -> None:
    """Record a billing failure on the tenant (shown on the root page) and commit."""
    db.session.execute(update(Tenant).where(Tenant.id == tenant_id)
                       .values(billing_error=message[:2000], billing_error_at=now))
    db.session.commit()


def clear_billing_error(tenant_id: int) -> None:
    """Clear the tenant's billing error after a successful run and commit."""
    db.session.execute(update(Tenant).where(Tenant.id == tenant_id, Tenant.billing_error.is_not(None))
                       .values(billing_error=None, billing_error_at=None))
    db.session.commit()


# -- retries ---------------------------------------------------------------------------------------------

def _charge_each(invoice_ids: list[int], trigger: str, now: datetime | None) -> int:
    made = 0
    for invoice_id in invoice_ids:
        try:
            attempt = charge_invoice(invoice_id, trigger=trigger, now=now)
        except Exception:  # noqa: BLE001 - one invoice's failure never stops the others
            db.session.rollback()
            log.exception("charging invoice %s failed", invoice_id)
            continue
        made += attempt.status != SKIPPED
    return made


def retry_due_payments(now: datetime | None = None) -> int:
    """Charge every open invoice whose next attempt is due (hard declines excluded); return attempts made."""
    now = now or utcnow()
    ids = list(db.session.scalars(
        select(Invoice.id).where(Invoice.status == InvoiceStatus.OPEN, Invoice.next_payment_attempt_at <= now,
                                 Invoice.hard_decline.is_(False), Invoice.stripe_invoice_id.is_not(None))
        .order_by(Invoice.next_payment_attempt_at, Invoice.id)))
    return _charge_each(ids, "retry", now)


def retry_open_invoices(tenant_id: int, trigger: str = "card_updated", *, now: datetime | None = None) -> int:
    """Charge all of a tenant's open invoices now, oldest first (after a card change); return attempts made."""
    ids = list(db.session.scalars(
        select(Invoice.id).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN,
                                 Invoice.stripe_invoice_id.is_not(None))
        .order_by(Invoice.period_start, Invoice.id)))
    return _charge_each(ids, trigger, now)


# -- the tenant's own actions: Pay now, and the card update's return (app/billing words what they did) -----------

def can_pay_now(invoice: Invoice) -> bool:
    """Whether the tenant can retry an invoice's charge from the billing page."""
    return invoice.status == InvoiceStatus.OPEN and invoice.balance > 0 and bool(invoice.stripe_invoice_id)


class PayNowResult(StrEnum):
    PAID = "paid"
    ALREADY_PAID = "already_paid"
    NOTHING_TO_PAY = "nothing_to_pay"  # void, uncollectible, not in Stripe yet, or nothing left to pay
    DECLINED = "declined"
    ACTION_REQUIRED = "action_required"  # the bank asks the customer to authenticate on the hosted page
    RETRY_LATER = "retry_later"  # Stripe could not take it now; the retry schedule will
    NOT_CHARGED = "not_charged"  # skipped (another charge in progress, Stripe unreadable, …)
    UNREACHABLE = "unreachable"  # the attempt itself failed (Stripe or the database): nothing was charged
    NOT_PAID = "not_paid"


@dataclass(frozen=True)
class PayNowOutcome:
    """What a tenant's "Pay now" did."""

    result: PayNowResult
    invoice: Invoice | None
    detail: str | None = None  # the decline, or why nothing was charged

    @property
    def ok(self) -> bool:
        return self.result in (PayNowResult.PAID, PayNowResult.ALREADY_PAID)


def pay_now(invoice_id: int, *, now: datetime | None = None) -> PayNowOutcome:
    """Charge one open invoice right now (trigger "pay_now") if it can be paid; never raises."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is not None and not can_pay_now(invoice):
        return PayNowOutcome(PayNowResult.ALREADY_PAID if invoice.status == InvoiceStatus.PAID
                             else PayNowResult.NOTHING_TO_PAY, invoice)
    try:
        attempt = charge_invoice(invoice_id, trigger="pay_now", now=now)
    except Exception:  # noqa: BLE001 - the page must answer even when Stripe or the database hiccups
        db.session.rollback()
        log.exception("pay now of invoice %s failed", invoice_id)
        return PayNowOutcome(PayNowResult.UNREACHABLE, db.session.get(Invoice, invoice_id))
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice_id)
    status = attempt.status
    if invoice is not None and invoice.status == InvoiceStatus.PAID:
        return PayNowOutcome(PayNowResult.PAID if status != SKIPPED else PayNowResult.ALREADY_PAID, invoice)
    result = {AttemptStatus.FAILED: PayNowResult.DECLINED, AttemptStatus.ACTION_REQUIRED: PayNowResult.ACTION_REQUIRED,
              AttemptStatus.ERROR: PayNowResult.RETRY_LATER, SKIPPED: PayNowResult.NOT_CHARGED}.get(
        status, PayNowResult.NOT_PAID)
    return PayNowOutcome(result, invoice, attempt.error_message)


def _open_invoice_ids(tenant_id: int) -> list[int]:
    return list(db.session.scalars(
        select(Invoice.id).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)
        .order_by(Invoice.period_start, Invoice.id).limit(50)))


def _default_card(tenant_id: int) -> str | None:
    """The tenant's default payment method in Stripe; None when unknown (no customer, or Stripe unreachable)."""
    customer = db.session.scalar(select(Tenant.stripe_customer_id).where(Tenant.id == tenant_id))
    if not customer:
        return None
    try:
        return gateway.default_payment_method(customer)
    except Exception:  # noqa: BLE001 - only used to tell what changed; never blocks the card update
        return None


def payment_portal_url(tenant_id: int, return_url: str) -> str:
    """A fresh Stripe Customer Portal session (payment-method update) for a tenant; creates the customer if needed."""
    return gateway.portal_session_url(ensure_customer(tenant_id), return_url)


def card_update_snapshot(tenant_id: int) -> dict[str, Any]:
    """What the tenant had before going to the portal (default card, open invoices): the return's outcome
    compares with it, so it tells what actually changed (a webhook may have charged in between)."""
    return {"card": _default_card(tenant_id), "open": _open_invoice_ids(tenant_id)}


class CardUpdateResult(StrEnum):
    UNCHANGED = "unchanged"  # back from the portal with the same default card
    UNREACHABLE = "unreachable"  # the card is saved; charging the open invoices failed (the retries follow)
    NOTHING_DUE = "nothing_due"
    ALL_PAID = "all_paid"
    STILL_OPEN = "still_open"


@dataclass(frozen=True)
class CardUpdateOutcome:
    """What charging a tenant's open invoices after a card update did."""

    result: CardUpdateResult
    still_open: int = 0  # open invoices left
    error: str | None = None  # the latest payment error among them

    @property
    def ok(self) -> bool:
        return self.result in (CardUpdateResult.NOTHING_DUE, CardUpdateResult.ALL_PAID)


def retry_after_card_update(tenant_id: int, before: Mapping[str, Any] | None = None, *,
                            now: datetime | None = None) -> CardUpdateOutcome:
    """Charge a tenant's open invoices at once after a card change; the outcome is true to what happened since
    `before` (card_update_snapshot at the portal's opening). Never raises."""
    before = before or {}
    card_before = before.get("card")
    if card_before and _default_card(tenant_id) == card_before:
        return CardUpdateOutcome(CardUpdateResult.UNCHANGED, len(_open_invoice_ids(tenant_id)))
    were_open = set(before.get("open") or []) | set(_open_invoice_ids(tenant_id))
    try:
        retry_open_invoices(tenant_id, trigger="card_updated", now=now)
    except Exception:  # noqa: BLE001 - the new card is saved either way; the scheduled retries will follow
        db.session.rollback()
        log.exception("retrying tenant %s's open invoices failed", tenant_id)
        return CardUpdateOutcome(CardUpdateResult.UNREACHABLE)
    db.session.expire_all()
    still_open = list(db.session.scalars(
        select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)
        .order_by(Invoice.period_start)))
    if not still_open:
        return CardUpdateOutcome(CardUpdateResult.ALL_PAID if were_open else CardUpdateResult.NOTHING_DUE)
    errors = [inv.last_payment_error for inv in still_open if inv.last_payment_error]
    return CardUpdateOutcome(CardUpdateResult.STILL_OPEN, len(still_open), errors[-1] if errors else None)
