"""Credit notes through Stripe, and the tenant's credit balance (CONTRACT §8.1).

A credit note never edits an invoice's lines or amount_due. Kinds:
- `reduce` (open invoice): lowers what is still owed; to 0 the invoice is paid (Stripe marks it so) and dunning
  is re-derived as after a payment;
- `refund` (paid invoice): refunds that much of the card charge that paid it;
- `account_credit` (paid invoice): adds to the tenant's credit balance (Stripe's customer balance), which Stripe
  applies to the next invoices at finalization, before the card: charge = amount_due − min(credit, amount_due).

Never more than the invoice's amount_due in total: checked here under the invoice's row lock, and by the database
(invoices.amount_credited, CHECK amount_credited <= amount_due), which every note adds to when it is recorded.
The row is committed (status `pending`, its amount reserved) BEFORE Stripe is called with the key
`credit-note-<row id>`, so a crash, a timeout or a lost answer is finished later with the same key — Stripe replays
it, nothing is refunded twice. A note Stripe refuses is marked `failed` and its amount released.

The credit balance is derived, never stored: Σ issued account credits − Σ balance Stripe applied to the tenant's
live invoices (invoices.balance_applied, read from Stripe's starting/ending balance by payments.apply_stripe_invoice).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app import stripe_gateway as gateway
from app.extensions import db
from app.models import (AuditLog, CreditKind, CreditNote, CreditNoteStatus, Invoice, InvoiceStatus, PlanChange, Tenant,
                        User)
from app.services import notifications, payments, plans
from app.services.clock import utcnow
from app.services.dunning import reevaluate_tenant
from app.services.notifications import format_money
from app.stripe_gateway import GatewayError, Outcome

log = logging.getLogger(__name__)

KIND_LABELS = {CreditKind.REDUCE: "reduce what is owed", CreditKind.REFUND: "refund to the card",
               CreditKind.ACCOUNT_CREDIT: "credit to the account"}


class CreditError(ValueError):
    """A credit note that cannot be issued as asked (the message is safe to show); `field` names the input."""

    def __init__(self, message: str, field: str = "amount"):
        super().__init__(message)
        self.field = field


# -- what may be credited ------------------------------------------------------------------------------------

def limits(invoice: Invoice) -> dict[str, int]:
    """How much each kind of credit note may still be for on an invoice now (minor units, 0 = not possible)."""
    left = max(0, invoice.amount_due - (invoice.amount_credited or 0))
    status = InvoiceStatus(invoice.status)
    out = {k.value: 0 for k in CreditKind}
    if not invoice.stripe_invoice_id:
        return out
    if status == InvoiceStatus.OPEN:
        out[CreditKind.REDUCE] = min(left, invoice.balance)
    elif status == InvoiceStatus.PAID:
        out[CreditKind.ACCOUNT_CREDIT] = left
        if not invoice.paid_out_of_band and not invoice.disputed:
            out[CreditKind.REFUND] = min(left, max(0, invoice.amount_paid - (invoice.amount_refunded or 0)))
    return out


def _refusal(invoice: Invoice, kind: CreditKind, amount: int) -> str | None:
    """Why a credit note of this kind and amount cannot be issued on the invoice now, or None."""
    label = invoice.number or f"#{invoice.id}"
    status = InvoiceStatus(invoice.status)
    if not invoice.stripe_invoice_id:
        return f"invoice {label} is not in Stripe yet (still a draft): nothing to credit"
    if kind == CreditKind.REDUCE and status != InvoiceStatus.OPEN:
        return f"invoice {label} is {status}: only an open invoice can be reduced (refund or credit a paid one)"
    if kind in (CreditKind.REFUND, CreditKind.ACCOUNT_CREDIT) and status != InvoiceStatus.PAID:
        return (f"invoice {label} is {status}: only a paid invoice can be refunded or credited"
                + (" (reduce an open one instead)" if status == InvoiceStatus.OPEN else ""))
    if kind == CreditKind.REFUND and invoice.paid_out_of_band:
        return f"invoice {label} was paid outside Stripe: there is no card charge to refund (credit the account)"
    if kind == CreditKind.REFUND and invoice.disputed:
        return f"invoice {label}'s charge is disputed: the bank decides what goes back (no refund now)"
    allowed = limits(invoice)[kind]
    if amount > allowed:
        credited = invoice.amount_credited or 0
        left = max(0, invoice.amount_due - credited)
        what = "left to credit" if allowed == left else {
            CreditKind.REDUCE: "still owed", CreditKind.REFUND: "left to refund on its card charge",
            CreditKind.ACCOUNT_CREDIT: "left to credit"}[kind]
        return (f"{format_money(amount, invoice.currency)} is more than the {format_money(allowed, invoice.currency)} "
                f"{what} on invoice {label} (amount {format_money(invoice.amount_due, invoice.currency)}, "
                f"credited so far {format_money(credited, invoice.currency)})")
    return None


# -- issuing ---------------------------------------------------------------------------------------------------

def issue_credit_note(invoice_id: int, amount: int, kind: str, reason: str, *, actor: User | None = None,
                      request_key: str | None = None, now: datetime | None = None) -> CreditNote:
    """Issue a credit note through Stripe; commits. Returns it `issued`, or `pending` when Stripe did not answer.

    Raises CreditError when it cannot be issued (nothing is left reserved). The same request_key twice returns
    the first note.
    """
    now = now or utcnow()
    try:
        kind_ = CreditKind(kind)
    except ValueError:
        raise CreditError("choose a kind: reduce, refund or account_credit", "kind") from None
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise CreditError("the amount must be a whole number of minor units (cents) above 0", "amount")
    why = (reason or "").strip()
    if not why:
        raise CreditError("a reason is required", "reason")
    if actor is not None and not actor.is_root:
        raise CreditError("only a root admin may issue credit notes", "reason")
    if request_key:
        done = db.session.scalar(select(CreditNote).where(CreditNote.request_key == request_key))
        if done is not None:
            return done
    _finish_earlier(invoice_id, now)

    invoice = _locked(invoice_id)
    refusal = _refusal(invoice, kind_, amount)
    if refusal:
        db.session.rollback()
        raise CreditError(refusal, "amount")
    note = CreditNote(tenant_id=invoice.tenant_id, invoice_id=invoice.id, amount=amount, currency=invoice.currency,
                      kind=kind_.value, reason=why[:2000], status=CreditNoteStatus.PENDING, request_key=request_key,
                      actor_user_id=actor.id if actor else None, created_at=now)
    db.session.add(note)
    invoice.amount_credited = (invoice.amount_credited or 0) + amount  # the database's CHECK has the last word
    try:
        db.session.flush()
        db.session.add(AuditLog(actor_user_id=actor.id if actor else None, tenant_id=invoice.tenant_id,
                                action=f"credit_note_{kind_.value}", reason=why[:2000], created_at=now,
                                details={"credit_note_id": note.id, "invoice_id": invoice.id,
                                         "number": invoice.number, "amount": amount, "currency": invoice.currency,
                                         "status_before": invoice.status}))
        db.session.commit()
    except IntegrityError as err:
        db.session.rollback()
        if request_key:
            done = db.session.scalar(select(CreditNote).where(CreditNote.request_key == request_key))
            if done is not None:  # the same form, submitted twice at once: the first one stands
                return done
        raise CreditError(f"the database refused it: credit notes may not total more than the invoice "
                          f"({err.orig.__class__.__name__})", "amount") from None
    return _complete(note, now)


def _locked(invoice_id: int) -> Invoice:
    invoice = db.session.execute(
        select(Invoice).where(Invoice.id == invoice_id).with_for_update(of=Invoice)
        .execution_options(populate_existing=True)).scalar_one_or_none()
    if invoice is None:
        db.session.rollback()
        raise CreditError(f"invoice {invoice_id} not found", "invoice")
    return invoice


def _finish_earlier(invoice_id: int, now: datetime) -> None:
    """Complete the invoice's interrupted credit notes first: a new one is refused while one is in doubt."""
    pending = list(db.session.scalars(select(CreditNote).where(CreditNote.invoice_id == invoice_id,
                                                               CreditNote.status == CreditNoteStatus.PENDING)
                                      .order_by(CreditNote.id)))
    for note in pending:
        try:
            done = _complete(note, now)
        except CreditError:
            continue  # refused by Stripe: released, nothing in doubt any more
        if done.status == CreditNoteStatus.PENDING:
            raise CreditError(f"credit note #{done.id} on this invoice is still waiting for Stripe; try again when "
                              "Stripe answers (it is completed once, never twice)")
        raise CreditError(f"an earlier credit note on this invoice (#{done.id}, {describe_amount(done)}) had been "
                          "interrupted and is now issued; check the invoice before issuing another")


def _complete(note: CreditNote, now: datetime) -> CreditNote:
    """Call Stripe for a pending note (its own idempotency key) and record the answer; commits."""
    invoice = db.session.get(Invoice, note.invoice_id)
    try:
        remote = gateway.create_credit_note(note.id, invoice.stripe_invoice_id, note.amount, note.kind, note.reason)
    except GatewayError as err:
        if err.outcome == Outcome.RETRY_LATER:
            note.error = f"Stripe did not answer: {err.message}"[:2000]
            db.session.commit()
            log.warning("credit note %s left pending: %s", note.id, err)
            return note
        return _fail(note, err)
    # Stripe has it now: what follows only reads, and a failed read never undoes the note (webhooks and the
    # reconciliation bring the invoice's state later).
    refund_id = refunded = fresh = None
    try:
        if note.kind == CreditKind.REFUND and remote.refunds:
            first = remote.refunds[0]
            refund_id = first.refund if isinstance(first.refund, str) else first.refund.id
            refunded = gateway.refunded_on_charge(refund_id)
        if note.kind == CreditKind.REDUCE:
            fresh = gateway.retrieve_invoice(invoice.stripe_invoice_id)
    except GatewayError as err:
        log.warning("credit note %s issued; reading its effects from Stripe failed: %s", note.id, err)
    invoice = _locked(note.invoice_id)
    status_before = invoice.status
    note = db.session.get(CreditNote, note.id, populate_existing=True)
    if note.status == CreditNoteStatus.ISSUED:  # completed meanwhile by another process
        db.session.commit()
        return note
    note.status = CreditNoteStatus.ISSUED
    note.stripe_credit_note_id = remote.id
    note.number = getattr(remote, "number", None)
    note.issued_at = now
    note.error = None
    if note.kind == CreditKind.REFUND:
        note.stripe_refund_id = refund_id
        by_notes = db.session.scalar(select(func.coalesce(func.sum(CreditNote.amount), 0)).where(
            CreditNote.invoice_id == invoice.id, CreditNote.kind == CreditKind.REFUND,
            CreditNote.status == CreditNoteStatus.ISSUED)) or 0
        invoice.amount_refunded = max(invoice.amount_refunded or 0, int(by_notes), refunded or 0)
    if fresh is not None:
        payments.apply_stripe_invoice(invoice, fresh, now=now)
    _queue_email(note, invoice, now)
    db.session.commit()
    if status_before != invoice.status:
        try:
            reevaluate_tenant(invoice.tenant_id, now=now)
        except Exception:  # noqa: BLE001 - the nightly pass re-derives it anyway
            db.session.rollback()
            log.exception("dunning re-evaluation failed for tenant %s", invoice.tenant_id)
    return note


def _fail(note: CreditNote, err: GatewayError) -> CreditNote:
    invoice = _locked(note.invoice_id)
    note = db.session.get(CreditNote, note.id, populate_existing=True)
    if note.status == CreditNoteStatus.PENDING:
        note.status = CreditNoteStatus.FAILED
        note.error = err.message[:2000]
        invoice.amount_credited = max(0, (invoice.amount_credited or 0) - note.amount)
    db.session.commit()
    raise CreditError(f"Stripe refused the credit note: {err.message}", "amount")


def resume_pending(*, tenant_id: int | None = None, now: datetime | None = None) -> int:
    """Complete the credit notes Stripe had not confirmed (same keys: never twice); return how many are issued."""
    now = now or utcnow()
    stmt = select(CreditNote).where(CreditNote.status == CreditNoteStatus.PENDING).order_by(CreditNote.id)
    if tenant_id is not None:
        stmt = stmt.where(CreditNote.tenant_id == tenant_id)
    issued = 0
    for note in list(db.session.scalars(stmt)):
        try:
            issued += _complete(note, now).status == CreditNoteStatus.ISSUED
        except CreditError as err:
            log.warning("pending credit note %s refused by Stripe: %s", note.id, err)
    return issued


def _queue_email(note: CreditNote, invoice: Invoice, now: datetime) -> None:
    tenant = db.session.get(Tenant, invoice.tenant_id, execution_options={"skip_tenant_scope": True})
    money = notifications.format_money
    try:
        with db.session.begin_nested():
            notifications.queue_email(
                tenant, "credit_note", f"credit_note:tenant:{tenant.id}:note:{note.id}", "credit_note", now=now,
                label=note.number or f"#{note.id}", amount=money(note.amount, note.currency), credit_kind=note.kind,
                number=invoice.number or f"#{invoice.id}", period=f"{invoice.period_start:%B %Y}",
                remaining=money(invoice.balance, invoice.currency) if invoice.balance else None,
                reason=note.reason, card=None,
                credit_balance=money(credit_balance(tenant.id), note.currency))
    except Exception:  # noqa: BLE001 - a mail problem must not undo the credit note it announces
        log.exception("could not queue the credit_note email of credit note %s", note.id)


# -- the credit balance ------------------------------------------------------------------------------------------

def credit_balance(tenant_id: int) -> int:
    """The tenant's credit balance now: issued account credits − the balance Stripe applied to live invoices."""
    credited = db.session.scalar(select(func.coalesce(func.sum(CreditNote.amount), 0)).where(
        CreditNote.tenant_id == tenant_id, CreditNote.kind == CreditKind.ACCOUNT_CREDIT,
        CreditNote.status == CreditNoteStatus.ISSUED)) or 0
    applied = db.session.scalar(select(func.coalesce(func.sum(Invoice.balance_applied), 0)).where(
        Invoice.tenant_id == tenant_id, Invoice.status != InvoiceStatus.VOID)) or 0
    return int(credited) - int(applied)


# -- reading -------------------------------------------------------------------------------------------------------

def describe_amount(note: CreditNote) -> str:
    return f"{format_money(note.amount, note.currency)} {KIND_LABELS[CreditKind(note.kind)]}"


def describe(note: CreditNote) -> str:
    """One sentence for the admin who issued it."""
    label = note.number or f"#{note.id}"
    if note.status == CreditNoteStatus.ISSUED:
        return f"Credit note {label} issued: {describe_amount(note)}."
    if note.status == CreditNoteStatus.PENDING:
        return (f"Credit note #{note.id} ({describe_amount(note)}) is recorded, but Stripe did not answer; it is "
                "completed, once, when Stripe answers (the nightly run or the next credit on this invoice).")
    return f"Credit note #{note.id} failed: {note.error}"


def credit_notes_of(invoice_ids: list[int]) -> dict[int, list[CreditNote]]:
    """The credit notes of some invoices (oldest first), keyed by invoice id."""
    out: dict[int, list[CreditNote]] = {}
    if not invoice_ids:
        return out
    for note in db.session.scalars(select(CreditNote).where(CreditNote.invoice_id.in_(invoice_ids))
                                   .order_by(CreditNote.id)):
        out.setdefault(note.invoice_id, []).append(note)
    return out


@dataclass
class TenantMoney:
    """The tenant page's plan-change and credit-note panels (one read model)."""

    tenant: Tenant
    currency: str
    credit_balance: int
    plans: list[Any] = field(default_factory=list)
    plan_changes: list[PlanChange] = field(default_factory=list)
    notes: list[CreditNote] = field(default_factory=list)
    creditable: list[tuple[Invoice, dict[str, int]]] = field(default_factory=list)  # invoice, limits by kind


def tenant_money(tenant_id: int, *, invoices: int = 24) -> TenantMoney:
    """Plans, plan history, credit notes, creditable invoices and the credit balance of one tenant."""
    tenant = db.session.get(Tenant, tenant_id)
    rows = list(db.session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id,
                                                         Invoice.status.in_([InvoiceStatus.OPEN, InvoiceStatus.PAID]))
                                   .order_by(Invoice.period_start.desc(), Invoice.id.desc()).limit(invoices)))
    creditable = [(inv, lim) for inv in rows if any((lim := limits(inv)).values())]
    notes = list(db.session.scalars(select(CreditNote).where(CreditNote.tenant_id == tenant_id)
                                    .order_by(CreditNote.id.desc()).limit(50)))
    return TenantMoney(tenant=tenant, currency=tenant.plan_obj.currency, credit_balance=credit_balance(tenant_id),
                       plans=plans.plan_choices(), plan_changes=plans.history(tenant_id), notes=notes,
                       creditable=creditable)
