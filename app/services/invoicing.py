"""Monthly invoices: generate from the rollups, push to Stripe, charge — exactly once however often it runs.

Every step is resumable after a crash at any point:
- generation writes header and lines in one transaction; the partial unique index (one non-void invoice per
  tenant and period) turns a racing second writer into "already there";
- the readable number is taken, just before Stripe finalization, from invoice_sequences under a row lock in
  the transaction that stores it, so numbers are gapless per prefix (`SP-YYYY-MM-NNNNNN`, the period's month);
- the Stripe draft, each item and the finalization carry keys derived from our row ids, and stored Stripe ids
  are checked (and Stripe's state re-read) before anything is created again;
- the charge is payments.charge_locked (attempt row committed before the call).
A per-(tenant, period) work lock makes concurrent force-runs of one tenant skip instead of racing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from flask import current_app
from sqlalchemy import and_, exists, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from app import queue
from app import stripe_gateway as gateway
from app.extensions import db
from app.models import (BillingRun, BillingRunOutcome, Invoice, InvoiceLine, InvoiceSequence, InvoiceStatus, Plan,
                        Tenant, owed, utcnow)
from app.services import clock, credits, notifications, payments, plans, pricing
from app.services.credits import credit_balance
from app.services.customers import ensure_customer
from app.services.usage import rollup_day
from app.stripe_gateway import GatewayError, Outcome

log = logging.getLogger(__name__)

NUMBER_PREFIX = "SP"
_CHUNK = 500


class RunResult(StrEnum):
    INVOICED = "invoiced"  # this run generated, finalized or first charged the invoice
    SKIPPED = "skipped"  # nothing to do: already done, running elsewhere, or the tenant did not exist yet
    FAILED = "failed"  # recorded on the tenant (billing_error); the next run resumes where this one stopped


class Reason(StrEnum):
    """Why one tenant's run ended as it did: the code run summaries count (CLI, run-all, force-run)."""

    # invoiced
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    ACTION_REQUIRED = "action_required"
    CHARGE_RETRY = "charge_retry"  # Stripe could not take the charge now; the retry schedule will
    NOT_CHARGED = "not_charged"
    # skipped
    CREATED_AFTER_PERIOD = "created_after_period"
    ALREADY_INVOICED = "already_invoiced"
    ALREADY_RUNNING = "already_running"
    BEING_CHARGED = "being_charged"
    # failed (or a skipped charge)
    STRIPE_UNREACHABLE = "stripe_unreachable"
    STRIPE_BUSY = "stripe_busy"
    NO_STRIPE_CUSTOMER = "no_stripe_customer"
    STRIPE_REFUSED = "stripe_refused"
    ERROR = "error"


#: How each reason reads in a summary ("skipped 2: already invoiced 1, created after the period 1").
REASON_LABELS: dict[str, str] = {
    Reason.PAID: "paid", Reason.PAYMENT_FAILED: "payment declined",
    Reason.ACTION_REQUIRED: "customer must authenticate the payment", Reason.CHARGE_RETRY: "charge to be retried",
    Reason.NOT_CHARGED: "not charged", Reason.CREATED_AFTER_PERIOD: "created after the period",
    Reason.ALREADY_INVOICED: "already invoiced", Reason.ALREADY_RUNNING: "already running elsewhere",
    Reason.BEING_CHARGED: "being charged right now", Reason.STRIPE_UNREACHABLE: "Stripe unreachable",
    Reason.STRIPE_BUSY: "Stripe busy or failing", Reason.NO_STRIPE_CUSTOMER: "no Stripe customer",
    Reason.STRIPE_REFUSED: "refused by Stripe", Reason.ERROR: "error",
}


@dataclass
class InvoiceOutcome:
    """What invoice_and_charge did for one tenant (also the RQ job's result)."""

    tenant_id: int
    period: str
    result: RunResult
    invoice_id: int | None = None
    invoice_status: str | None = None
    payment: str | None = None  # the charge attempt's status, when one was made
    reason: str | None = None  # in words, for people (a decline message, an error)
    code: str | None = None  # a Reason, for counting


class InvoicingError(Exception):
    """A tenant's run cannot go on, for a known reason (a Reason code and a message)."""

    def __init__(self, code: Reason, message: str):
        super().__init__(message)
        self.code = code


def failure_reason(err: BaseException) -> Reason:
    """The Reason code of an exception that stopped a tenant's run."""
    if isinstance(err, InvoicingError):
        return err.code
    if isinstance(err, GatewayError):
        if err.unreachable:
            return Reason.STRIPE_UNREACHABLE
        if err.missing_customer:
            return Reason.NO_STRIPE_CUSTOMER
        return Reason.STRIPE_BUSY if err.outcome == Outcome.RETRY_LATER else Reason.STRIPE_REFUSED
    return Reason.ERROR


def period_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def period_end_utc(year: int, month: int) -> datetime:
    """The UTC instant the month ends in the billing zone (tenants created before it are billed for it)."""
    _first, last = clock.month_bounds(year, month)
    return clock.day_start_utc(last + timedelta(days=1))


def _insert(table):
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def live_invoice(tenant_id: int, year: int, month: int) -> Invoice | None:
    """The tenant's non-void invoice for a month, if any."""
    first, last = clock.month_bounds(year, month)
    return db.session.scalar(select(Invoice).where(
        Invoice.tenant_id == tenant_id, Invoice.period_start == first, Invoice.period_end == last,
        Invoice.status != InvoiceStatus.VOID))


# -- generation ------------------------------------------------------------------------------------------

def generate_invoices(year: int, month: int, *, now: datetime | None = None,
                      tenant_ids: list[int] | None = None) -> int:
    """Write the missing invoices (header + lines) of a month for all or some tenants; return how many were new.

    Lines for every tenant come from one aggregate over the rollups (pricing.period_lines). Each chunk of
    invoices and their lines is one transaction; an invoice someone else wrote meanwhile is left alone.
    """
    now = now or utcnow()
    first, last = clock.month_bounds(year, month)
    computed = pricing.period_lines(first, last, tenant_ids=tenant_ids,
                                    created_before=period_end_utc(year, month))
    if not computed:
        return 0
    have = set(db.session.scalars(select(Invoice.tenant_id).where(
        Invoice.period_start == first, Invoice.period_end == last, Invoice.status != InvoiceStatus.VOID,
        *([Invoice.tenant_id.in_(tenant_ids)] if tenant_ids is not None else []))))
    todo = [tl for tid, tl in sorted(computed.items()) if tid not in have]
    inv_t, line_t = Invoice.__table__, InvoiceLine.__table__
    created = 0
    for start in range(0, len(todo), _CHUNK):
        chunk = todo[start:start + _CHUNK]
        rows = [{"tenant_id": tl.tenant_id, "period_start": first, "period_end": last, "plan_code": tl.plan.code,
                 "amount_due": tl.amount_due, "amount_paid": 0, "currency": tl.plan.currency,
                 "status": InvoiceStatus.DRAFT.value, "created_at": now, "updated_at": now} for tl in chunk]
        stmt = (_insert(inv_t).values(rows)
                .on_conflict_do_nothing(index_elements=["tenant_id", "period_start", "period_end"],
                                        index_where=text("status <> 'void'"))
                .returning(inv_t.c.id, inv_t.c.tenant_id))
        ids = {tenant_id: invoice_id for invoice_id, tenant_id in db.session.execute(stmt)}
        line_rows = [
            {"invoice_id": ids[tl.tenant_id], "metric": ln.metric, "quantity": ln.quantity,
             "used_quantity": ln.used_quantity, "included": ln.included, "unit_price": ln.unit_price,
             "amount": ln.amount, "description": ln.description, "period_start": ln.period_start,
             "period_end": ln.period_end}
            for tl in chunk if tl.tenant_id in ids for ln in tl.lines
        ]
        if line_rows:
            db.session.execute(insert(line_t), line_rows)
        db.session.commit()
        created += len(ids)
    return created


def generate_invoice(tenant_id: int, year: int, month: int, *, now: datetime | None = None) -> Invoice:
    """Return the tenant's invoice for a month, generating it (header + lines, one transaction) if missing."""
    existing = live_invoice(tenant_id, year, month)
    if existing is not None:
        return existing
    try:
        generate_invoices(year, month, now=now, tenant_ids=[tenant_id])
    except IntegrityError:  # a concurrent writer won the partial unique index: theirs is the invoice
        db.session.rollback()
    invoice = live_invoice(tenant_id, year, month)
    if invoice is None:
        raise LookupError(f"tenant {tenant_id} has nothing to invoice for {period_key(year, month)} "
                          "(unknown, or created after that month)")
    return invoice


def assign_number(invoice: Invoice) -> str:
    """Give the invoice its gapless readable number (in the caller's transaction; commit to keep it)."""
    if invoice.number:
        return invoice.number
    prefix = f"{NUMBER_PREFIX}-{invoice.period_start:%Y-%m}"
    seq = InvoiceSequence.__table__
    db.session.execute(_insert(seq).values(prefix=prefix, last_value=0).on_conflict_do_nothing(
        index_elements=["prefix"]))
    # UPDATE ... RETURNING row-locks the counter until our commit: no two invoices share a value, and a
    # rolled-back transaction gives its value back, so there are no gaps.
    value = db.session.execute(update(seq).where(seq.c.prefix == prefix)
                               .values(last_value=seq.c.last_value + 1).returning(seq.c.last_value)).scalar_one()
    invoice.number = f"{prefix}-{value:06d}"
    return invoice.number


# -- Stripe ----------------------------------------------------------------------------------------------

def finalize_in_stripe(invoice: Invoice, customer_id: str, *, now: datetime | None = None) -> Invoice:
    """Mirror a draft in Stripe (draft, items, number, finalize) and record it open; resumable at any step.

    The caller holds the invoice's work lock. The readable number is assigned just before finalization.
    """
    now = now or utcnow()
    if invoice.status != InvoiceStatus.DRAFT:
        return invoice
    _complete_credit_notes(invoice.tenant_id, now)  # issue 17: the credit Stripe applies at finalization
    period = f"{invoice.period_start:%Y-%m}"
    if invoice.stripe_invoice_id is None:
        try:
            remote = gateway.create_invoice(invoice.id, customer_id, invoice.currency, period, invoice.tenant_id,
                                            None)
        except GatewayError as err:
            if err.outcome == Outcome.BUG:
                # Stripe refused the draft (e.g. the customer is gone): nothing of it exists in Stripe and it has
                # no number, but its idempotency key is spent on the refusal. Drop our draft; the next run
                # writes a fresh one (new id, new key) once the cause is fixed.
                db.session.delete(invoice)
                db.session.commit()
            raise
        invoice.stripe_invoice_id = remote.id
        db.session.commit()
    else:
        remote = gateway.retrieve_invoice(invoice.stripe_invoice_id)
    if remote.status == "draft":
        tz = clock.billing_tz()
        start_ts = int(clock.day_start_utc(invoice.period_start, tz).timestamp())
        end_ts = int(clock.day_start_utc(invoice.period_end + timedelta(days=1), tz).timestamp()) - 1
        for line in invoice.lines:
            if line.stripe_invoice_item_id:
                continue
            item = gateway.add_invoice_item(line.id, customer_id, invoice.stripe_invoice_id, line.amount,
                                            invoice.currency, line.description, start_ts, end_ts)
            line.stripe_invoice_item_id = item.id
            db.session.commit()
        if invoice.number is None:
            assign_number(invoice)
            db.session.commit()
        gateway.label_invoice(invoice.id, invoice.stripe_invoice_id, invoice.number, period)
        remote = gateway.finalize_invoice(invoice.id, invoice.stripe_invoice_id)
    # Compare totals, not amount_due: a customer credit balance in Stripe legitimately lowers amount_due.
    remote_total = int(getattr(remote, "total", None) or remote.amount_due)
    if remote.status != "void" and remote_total != invoice.amount_due:
        raise RuntimeError(f"Stripe invoice {remote.id} totals {remote_total}, ours {invoice.amount_due}")
    if invoice.number is None:  # finalized elsewhere before we numbered it: number it now
        assign_number(invoice)
    invoice.issued_at = invoice.issued_at or now
    invoice.due_at = invoice.due_at or invoice.issued_at + timedelta(
        days=current_app.config.get("INVOICE_DUE_DAYS", 0))
    payments.apply_stripe_invoice(invoice, remote, now=now)
    if invoice.status == InvoiceStatus.OPEN and invoice.next_payment_attempt_at is None:
        invoice.next_payment_attempt_at = now  # charge now; if we die before, the hourly retry picks it up
    notifications.queue_invoice_issued(invoice, now=now)  # issue 18: in this transaction, never raises
    db.session.commit()
    return invoice


def _complete_credit_notes(tenant_id: int, now: datetime) -> None:
    """Finish the tenant's credit notes Stripe has not confirmed, so its credit balance is whole; never raises."""
    try:
        credits.resume_pending(tenant_id=tenant_id, now=now)
    except Exception:  # noqa: BLE001 - Stripe applies whatever balance it has; the invoice goes on
        db.session.rollback()
        log.exception("could not complete the pending credit notes of tenant %s", tenant_id)


def _charge_due(invoice: Invoice, now: datetime) -> bool:
    return (invoice.status == InvoiceStatus.OPEN and invoice.balance > 0 and not invoice.hard_decline
            and invoice.next_payment_attempt_at is not None and invoice.next_payment_attempt_at <= now)


# -- one tenant ------------------------------------------------------------------------------------------

def invoice_and_charge(tenant_id: int, period: str, trigger: str = "scheduled", run_id: int | None = None, *,
                       now: datetime | None = None) -> InvoiceOutcome:
    """Generate (or find) a tenant's invoice for a period, finalize it in Stripe and charge it; never raises.

    A failure is recorded on the tenant (billing_error) and returned; success clears it. With run_id the
    BillingRun's progress is counted.
    """
    now = now or utcnow()
    try:
        year, month = clock.parse_period(period)
        outcome = _invoice_and_charge(tenant_id, year, month, trigger, now)
    except Exception as err:  # noqa: BLE001 - one tenant's failure is recorded and never stops the others
        db.session.rollback()
        if isinstance(err, (GatewayError, InvoicingError)):  # classified: the message says it all
            log.warning("invoicing tenant %s for %s failed: %s", tenant_id, period, err)
        else:
            log.exception("invoicing tenant %s for %s failed", tenant_id, period)
        reason = str(err) or err.__class__.__name__
        try:
            payments.flag_billing_error(tenant_id, f"invoice {period}: {reason}", now)
        except Exception:  # noqa: BLE001
            db.session.rollback()
            log.exception("could not record the billing error of tenant %s", tenant_id)
        outcome = InvoiceOutcome(tenant_id, period, RunResult.FAILED, reason=reason, code=failure_reason(err))
    if run_id is not None:
        record_run_progress(run_id, failed=outcome.result == RunResult.FAILED, now=now,
                            result=outcome.result, reason=outcome.code)
    return outcome


def _invoice_and_charge(tenant_id: int, year: int, month: int, trigger: str, now: datetime) -> InvoiceOutcome:
    period = period_key(year, month)
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} not found")
    if tenant.created_at >= period_end_utc(year, month):
        return InvoiceOutcome(tenant_id, period, RunResult.SKIPPED, reason="tenant created after the period",
                              code=Reason.CREATED_AFTER_PERIOD)
    existing = live_invoice(tenant_id, year, month)
    if existing is not None and existing.status != InvoiceStatus.DRAFT and not _charge_due(existing, now):
        return _done(tenant_id, period, RunResult.SKIPPED, existing, Reason.ALREADY_INVOICED, "already done")

    with payments.work_lock(f"invoice-run-{tenant_id}-{period}") as got_run:
        if not got_run:
            return InvoiceOutcome(tenant_id, period, RunResult.SKIPPED, reason="already running",
                                  code=Reason.ALREADY_RUNNING)
        customer_id = _customer(tenant)
        invoice = generate_invoice(tenant_id, year, month, now=now)
        with payments.work_lock(payments.invoice_lock_name(invoice.id)) as got:
            if not got:
                return _done(tenant_id, period, RunResult.SKIPPED, invoice, Reason.BEING_CHARGED,
                             "being charged right now")
            db.session.refresh(invoice)
            status_before = invoice.status
            finalize_in_stripe(invoice, customer_id, now=now)
            payments.clear_billing_error(tenant_id)
            attempt = None
            if _charge_due(invoice, now):
                attempt = payments.charge_locked(invoice, trigger=trigger, now=now)
            charged = attempt is not None and attempt.status != payments.SKIPPED
            worked = invoice.status != status_before or charged
    if not worked:
        if attempt is not None and attempt.error_message and invoice.status == InvoiceStatus.OPEN:
            # The charge was due but not made (Stripe could not be read): say so, not "already done".
            code = Reason.CHARGE_RETRY if invoice.next_payment_attempt_at else Reason.STRIPE_REFUSED
            return _done(tenant_id, period, RunResult.SKIPPED, invoice, code, attempt.error_message)
        return _done(tenant_id, period, RunResult.SKIPPED, invoice, Reason.ALREADY_INVOICED, "already done")
    outcome = _done(tenant_id, period, RunResult.INVOICED, invoice,
                    _invoiced_reason(invoice, attempt if charged else None))
    if charged:
        outcome.payment = attempt.status
        if attempt.error_message:
            outcome.reason = attempt.error_message
    return outcome


def _customer(tenant: Tenant) -> str:
    """The tenant's Stripe customer, created if missing; InvoicingError when Stripe will not create it."""
    try:
        return ensure_customer(tenant.id)
    except GatewayError as err:
        if err.unreachable or err.outcome == Outcome.RETRY_LATER:
            raise
        raise InvoicingError(Reason.NO_STRIPE_CUSTOMER, f"could not create the Stripe customer: {err.message}"
                             ) from err


def _invoiced_reason(invoice: Invoice, attempt) -> Reason:
    if invoice.status == InvoiceStatus.PAID or (attempt is not None and attempt.status == "succeeded"):
        return Reason.PAID
    return {"failed": Reason.PAYMENT_FAILED, "action_required": Reason.ACTION_REQUIRED,
            "error": Reason.CHARGE_RETRY}.get(attempt.status if attempt is not None else "", Reason.NOT_CHARGED)


def _done(tenant_id: int, period: str, result: RunResult, invoice: Invoice, code: Reason,
          reason: str | None = None) -> InvoiceOutcome:
    return InvoiceOutcome(tenant_id, period, result, invoice.id, invoice.status, reason=reason, code=code)


# -- all tenants -----------------------------------------------------------------------------------------

def billable_tenant_ids(year: int, month: int, *, only_due: bool = False) -> list[int]:
    """Tenants that existed by the month's end; only_due keeps those whose invoice is missing or still a draft."""
    first, last = clock.month_bounds(year, month)
    stmt = select(Tenant.id).where(Tenant.created_at < period_end_utc(year, month)).order_by(Tenant.id)
    if only_due:
        stmt = stmt.where(~exists().where(and_(
            Invoice.tenant_id == Tenant.id, Invoice.period_start == first, Invoice.period_end == last,
            Invoice.status.not_in([InvoiceStatus.VOID, InvoiceStatus.DRAFT]))))
    return list(db.session.scalars(stmt))


def run_monthly_tick(as_of: date | None = None, *, now: datetime | None = None) -> int:
    """Rebuild yesterday's rollups, then fan out one invoice job per tenant not yet invoiced for last month.

    Runs daily: it asks the database what is due, so a missed or doubled tick is harmless. Returns the number
    of jobs enqueued.
    """
    now = now or utcnow()
    as_of = as_of or clock.today(now)
    rollup_day(as_of - timedelta(days=1), now=now)
    _daily_money_upkeep(as_of, now)  # issue 17
    year, month = clock.previous_month(as_of)
    period = period_key(year, month)
    due = billable_tenant_ids(year, month, only_due=True)
    if not due:
        return 0
    generate_invoices(year, month, now=now, tenant_ids=due)  # set-based; the jobs find their invoice written
    for tenant_id in due:
        queue.enqueue_invoice(tenant_id, period, "scheduled")
    return len(due)


def _daily_money_upkeep(as_of: date, now: datetime) -> None:
    """Plans dated today take effect (tenants.plan), and interrupted credit notes are completed; never raises."""
    try:
        plans.sync_current_plans(as_of)
        db.session.commit()
    except Exception:  # noqa: BLE001 - tomorrow's tick tries again; invoicing must go on
        db.session.rollback()
        log.exception("could not bring tenants onto the plans in force on %s", as_of)
    try:
        credits.resume_pending(now=now)
    except Exception:  # noqa: BLE001
        db.session.rollback()
        log.exception("could not complete the pending credit notes")


def created_after_count(year: int, month: int) -> int:
    """How many tenants were created after a month ended (never billed for it)."""
    return db.session.scalar(select(func.count(Tenant.id)).where(Tenant.created_at >= period_end_utc(year, month))
                             ) or 0


def start_billing_run(period: str, *, started_by: int | None = None, now: datetime | None = None) -> BillingRun:
    """Force-run every tenant for a period: record a BillingRun and fan out one job per tenant.

    Progress: `done` counts tenants finished without error (invoiced or already done), `failed` those that
    failed; the run is finished (finished_at set) when done + failed = total. Each finished tenant is also
    counted by result and reason (billing_run_outcomes), and so are, at once, the tenants created after the
    period (not part of `total`: there is nothing to run for them).
    """
    now = now or utcnow()
    year, month = clock.parse_period(period)
    period = period_key(year, month)
    tenant_ids = billable_tenant_ids(year, month)
    run = BillingRun(period=period, total=len(tenant_ids), done=0, failed=0, started_by=started_by,
                     started_at=now, finished_at=None if tenant_ids else now)
    db.session.add(run)
    db.session.flush()
    later = created_after_count(year, month)
    if later:
        db.session.add(BillingRunOutcome(run_id=run.id, result=RunResult.SKIPPED.value,
                                         reason=Reason.CREATED_AFTER_PERIOD.value, tenants=later))
    db.session.commit()
    for tenant_id in tenant_ids:
        queue.enqueue_invoice(tenant_id, period, "manual", run_id=run.id)
    return run


def record_run_progress(run_id: int, *, failed: bool, now: datetime | None = None, result: str | None = None,
                        reason: str | None = None) -> None:
    """Count one finished tenant on a BillingRun (atomically; by result and reason too); finish it after the last."""
    now = now or utcnow()
    runs = BillingRun.__table__
    column = runs.c.failed if failed else runs.c.done
    db.session.execute(update(runs).where(runs.c.id == run_id).values({column: column + 1}))
    db.session.execute(update(runs).where(runs.c.id == run_id, runs.c.finished_at.is_(None),
                                          runs.c.done + runs.c.failed >= runs.c.total).values(finished_at=now))
    outcomes = BillingRunOutcome.__table__
    result = str(result or (RunResult.FAILED if failed else RunResult.INVOICED))
    reason = str(reason or (Reason.ERROR if failed else result))
    stmt = _insert(outcomes).values(run_id=run_id, result=result, reason=reason, tenants=1)
    db.session.execute(stmt.on_conflict_do_update(index_elements=["run_id", "result", "reason"],
                                                  set_={"tenants": outcomes.c.tenants + 1}))
    db.session.commit()


# -- summaries (the CLI and the run-all result) -------------------------------------------------------------

@dataclass
class RunSummary:
    """Tenants per result and reason: what a run did, and why nothing happened where nothing did."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # result → reason → tenants

    def add(self, result: str, reason: str | None, tenants: int = 1) -> None:
        by_reason = self.counts.setdefault(str(result), {})
        key = str(reason or result)
        by_reason[key] = by_reason.get(key, 0) + tenants

    def total(self, result: str) -> int:
        return sum(self.counts.get(str(result), {}).values())

    def reasons(self, result: str) -> list[tuple[str, str, int]]:
        """(code, label, tenants) for one result, most frequent first."""
        items = sorted(self.counts.get(str(result), {}).items(), key=lambda kv: (-kv[1], kv[0]))
        return [(code, REASON_LABELS.get(code, code.replace("_", " ")), n) for code, n in items]

    def count(self, reason: str) -> int:
        return sum(by.get(str(reason), 0) for by in self.counts.values())

    def text(self) -> str:
        """One line: "invoiced 3 (paid 2, payment declined 1), skipped 1 (already invoiced 1), failed 0"."""
        parts = []
        for result in RunResult:
            detail = ", ".join(f"{label} {n}" for _code, label, n in self.reasons(result))
            parts.append(f"{result.value} {self.total(result)}" + (f" ({detail})" if detail else ""))
        return ", ".join(parts)


def summarize(outcomes: list[InvoiceOutcome], *, created_after: int = 0) -> RunSummary:
    """Count a run's outcomes by result and reason (plus tenants created after the period, never run)."""
    summary = RunSummary()
    for o in outcomes:
        summary.add(o.result, o.code)
    if created_after:
        summary.add(RunResult.SKIPPED, Reason.CREATED_AFTER_PERIOD, created_after)
    return summary


def run_summary(run_id: int) -> RunSummary:
    """A billing run's counts by result and reason so far."""
    summary = RunSummary()
    for result, reason, tenants in db.session.execute(
            select(BillingRunOutcome.result, BillingRunOutcome.reason, BillingRunOutcome.tenants)
            .where(BillingRunOutcome.run_id == run_id)):
        summary.add(result, reason, tenants)
    return summary


# -- the billing status API ------------------------------------------------------------------------------

@dataclass
class BillingStatus:
    tenant: Tenant
    plan: Plan
    balance_due: int
    currency: str
    next_invoice_date: date
    invoices: list[Invoice] = field(default_factory=list)
    credit_balance: int = 0  # issue 17: account credit that pays the next invoices before the card


def billing_status(tenant: Tenant, *, now: datetime | None = None, limit: int = 6) -> BillingStatus:
    """A tenant's billing status: plan, balance of open invoices, next invoice date, last invoices."""
    now = now or utcnow()
    balance = open_balance(tenant.id)
    invoices = list(db.session.scalars(
        select(Invoice).where(Invoice.tenant_id == tenant.id, Invoice.status != InvoiceStatus.DRAFT)
        .order_by(Invoice.period_start.desc(), Invoice.id.desc()).limit(limit)))
    today = clock.today(now)
    _first, last = clock.month_bounds(today.year, today.month)
    plan = tenant.plan_obj
    return BillingStatus(tenant=tenant, plan=plan, balance_due=max(int(balance), 0), currency=plan.currency,
                         next_invoice_date=last + timedelta(days=1), invoices=invoices,
                         credit_balance=max(0, credit_balance(tenant.id)))


def open_balance(tenant_id: int) -> int:
    """What a tenant still owes on its open invoices, after credits (app.models.owed)."""
    return int(db.session.scalar(
        select(func.coalesce(func.sum(owed(Invoice)), 0))
        .where(Invoice.tenant_id == tenant_id, Invoice.status == InvoiceStatus.OPEN)) or 0)
