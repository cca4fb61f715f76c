"""Charging: declines, retries on schedule and on a card change, Stripe faults — and never a double charge."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app import stripe_gateway
from app.extensions import db
from app.models import AttemptStatus, Invoice, InvoiceStatus, Tenant
from app.services import invoicing, payments
from app.services.payments import apply_stripe_invoice, next_retry_at
from tests.billing_support import add_usage, attempts_of, charges_for, invoices_of, stripe_invoices
from tests.factories import make_tenant, tenant_with_card, utc
from tests.support.concurrency import run_concurrently

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

NOW = utc(2026, 11, 1, 0, 30)
EARLY = utc(2026, 9, 1)



@pytest.fixture
def hooks(monkeypatch):
    """Record the cross-module hooks (notifications and dunning) the charge calls, keeping their behaviour."""
    from app.services import dunning, notifications

    calls: dict[str, list] = {"payment_failed": [], "action_required": [], "reevaluate": []}
    for module, name, key in ((notifications, "notify_payment_failed", "payment_failed"),
                              (notifications, "notify_action_required", "action_required"),
                              (dunning, "reevaluate_tenant", "reevaluate")):
        real = getattr(module, name)

        def recorder(arg, *a, _real=real, _key=key, **kw):
            calls[_key].append(arg if isinstance(arg, int) else arg.id)
            return _real(arg, *a, **kw)

        monkeypatch.setattr(module, name, recorder)
    return calls


def invoiced(card: str = "pm_card_visa", **kw) -> tuple[Tenant, Invoice]:
    tenant = tenant_with_card(card, created_at=EARLY, **kw)
    add_usage(tenant.id, date(2026, 10, 5), voice_minutes=650)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    return tenant, inv


# -- declines and the card change ------------------------------------------------------------------------

def test_declined_card_leaves_the_invoice_open_with_the_error_then_a_new_card_pays_it(app, plans, emulator, hooks):
    tenant, inv = invoiced("pm_card_chargeCustomerFail")
    assert inv.status == InvoiceStatus.OPEN and inv.amount_paid == 0
    assert inv.last_payment_error == "Your card was declined." and inv.last_payment_error_code == "generic_decline"
    assert inv.hard_decline is False and inv.next_payment_attempt_at == NOW + timedelta(days=3)
    [attempt] = attempts_of(inv.id)
    assert (attempt.status, attempt.error_code, attempt.decline_code) == ("failed", "card_declined",
                                                                           "generic_decline")
    assert hooks["payment_failed"] == [inv.id]
    assert inv.balance == 2900 + 225

    # The tenant picks a working card in the portal; the card-changed retry charges at once.
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")
    assert payments.retry_open_invoices(tenant.id, now=NOW + timedelta(hours=2)) == 1
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.PAID and inv.amount_paid == inv.amount_due
    assert inv.last_payment_error is None and inv.next_payment_attempt_at is None
    assert [a.status for a in attempts_of(inv.id)] == ["failed", "succeeded"]
    assert [a.trigger for a in attempts_of(inv.id)] == ["scheduled", "card_updated"]
    assert [c["status"] for c in charges_for(emulator, tenant.stripe_customer_id, include_failed=True)] == [
        "failed", "succeeded"]
    assert tenant.id in hooks["reevaluate"]
    assert payments.retry_open_invoices(tenant.id) == 0  # nothing open any more


def test_a_mail_failure_never_undoes_a_recorded_decline_but_fails_a_webhooks_follow_up(app, plans, emulator,
                                                                                      monkeypatch):
    from app.services import notifications

    def mail_down(invoice, *, now=None):
        raise ConnectionError("the outbox is unreachable")

    monkeypatch.setattr(notifications, "notify_payment_failed", mail_down)
    _, inv = invoiced("pm_card_chargeCustomerFail")
    assert inv.status == InvoiceStatus.OPEN and inv.last_payment_error == "Your card was declined."
    assert inv.next_payment_attempt_at == NOW + timedelta(days=3)
    assert [a.status for a in attempts_of(inv.id)] == ["failed"]
    # A webhook handler asks for the error instead, so that its event is tried again.
    with pytest.raises(ConnectionError):
        payments.after_invoice_change(inv, payments.InvoiceChange.PAYMENT_FAILED, NOW, raise_errors=True)


def test_retries_follow_the_schedule_and_stop_after_the_last(app, plans, emulator, hooks):
    _tenant, inv = invoiced("pm_card_chargeCustomerFail")
    assert payments.retry_due_payments(now=NOW + timedelta(days=2, hours=23)) == 0
    expected_next = [NOW + timedelta(days=7), NOW + timedelta(days=12), None]
    for day, nxt in zip((3, 7, 12), expected_next):
        assert payments.retry_due_payments(now=NOW + timedelta(days=day, minutes=5)) == 1
        db.session.refresh(inv)
        assert inv.next_payment_attempt_at == nxt and inv.status == InvoiceStatus.OPEN
    assert payments.retry_due_payments(now=NOW + timedelta(days=40)) == 0
    attempts = attempts_of(inv.id)
    assert [a.trigger for a in attempts] == ["scheduled", "retry", "retry", "retry"]
    assert all(a.status == AttemptStatus.FAILED for a in attempts)
    assert hooks["payment_failed"] == [inv.id]  # the email goes out on the first failure only


def test_retry_days_come_from_config(app, plans, emulator):
    app.config["PAYMENT_RETRY_DAYS"] = [1, 2]
    _tenant, inv = invoiced("pm_card_chargeCustomerFail")
    assert inv.next_payment_attempt_at == NOW + timedelta(days=1)


def test_schedule_arithmetic():
    issued = utc(2026, 11, 1)
    assert next_retry_at(issued, issued, [3, 7, 12]) == utc(2026, 11, 4)
    assert next_retry_at(issued, utc(2026, 11, 5), [12, 3, 7]) == utc(2026, 11, 8)  # a card-change retry on day 4
    assert next_retry_at(issued, utc(2026, 11, 13), [3, 7, 12]) is None
    assert next_retry_at(issued, issued, [3, 7, 12], hard=True) is None


def test_hard_declines_are_not_retried_automatically_but_are_on_a_card_change(app, plans, emulator):
    tenant, inv = invoiced("pm_card_chargeCustomerFail")
    # What a hard decline (e.g. stolen_card) records; the emulator's test cards only decline softly.
    inv.hard_decline, inv.next_payment_attempt_at = True, NOW + timedelta(days=3)
    db.session.commit()
    assert payments.retry_due_payments(now=NOW + timedelta(days=30)) == 0
    assert len(attempts_of(inv.id)) == 1
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")
    assert payments.retry_open_invoices(tenant.id) == 1
    db.session.refresh(inv)
    assert inv.status == InvoiceStatus.PAID and inv.hard_decline is False


def test_authentication_required_sends_the_hosted_link_and_is_not_retried_off_session(app, plans, emulator,
                                                                                        hooks):
    _tenant, inv = invoiced("pm_card_authenticationRequired")
    assert inv.status == InvoiceStatus.OPEN and inv.hosted_invoice_url
    assert [a.status for a in attempts_of(inv.id)] == ["action_required"]
    assert inv.last_payment_error_code == "authentication_required" and inv.next_payment_attempt_at is None
    assert hooks["action_required"] == [inv.id] and hooks["payment_failed"] == []
    assert payments.retry_due_payments(now=NOW + timedelta(days=5)) == 0


# -- never twice ------------------------------------------------------------------------------------------

def test_an_invoice_paid_in_stripe_meanwhile_is_applied_not_charged(app, plans, emulator, hooks):
    tenant, inv = invoiced("pm_card_chargeCustomerFail")
    stripe_gateway.mark_paid_out_of_band(inv.id, inv.stripe_invoice_id)  # e.g. paid by bank transfer
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")
    attempt = payments.charge_invoice(inv.id, trigger="manual", now=NOW + timedelta(days=1))
    assert attempt.status == payments.SKIPPED and "paid" in attempt.error_message
    db.session.refresh(inv)
    assert inv.status == InvoiceStatus.PAID and inv.paid_out_of_band and inv.amount_paid == inv.amount_due
    assert charges_for(emulator, tenant.stripe_customer_id) == []
    assert len(attempts_of(inv.id)) == 1
    assert tenant.id in hooks["reevaluate"]


def test_concurrent_charges_of_one_invoice_charge_once(app, plans, emulator):
    tenant, inv = invoiced("pm_card_chargeCustomerFail")
    emulator.set_default_payment_method(tenant.stripe_customer_id, "pm_card_visa")
    emulator.set_faults(latency_ms=50)
    invoice_id = inv.id
    results = run_concurrently(lambda _: payments.charge_invoice(invoice_id, trigger="manual").status, 6, app=app)
    assert results.count("succeeded") == 1 and results.count("skipped") == 5
    assert len(charges_for(emulator, tenant.stripe_customer_id)) == 1


def test_stripe_unavailable_during_pay_is_an_error_attempt_retried_soon(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    emulator.set_faults(error_next=10, path_contains="/pay")
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.OPEN
    assert [a.status for a in attempts_of(inv.id)] == ["error"]
    assert inv.next_payment_attempt_at == NOW + timedelta(minutes=15)  # the default PAYMENT_RETRY_LATER_SECONDS
    db.session.refresh(tenant)
    assert tenant.billing_error is None  # transient: not the tenant's problem
    emulator.clear_faults()
    assert payments.retry_due_payments(now=NOW + timedelta(minutes=16)) == 1
    db.session.refresh(inv)
    assert inv.status == InvoiceStatus.PAID
    assert len(charges_for(emulator, tenant.stripe_customer_id)) == 1


@pytest.mark.parametrize("config_overrides", [{"PAYMENT_RETRY_LATER_SECONDS": 60}])
def test_the_wait_after_stripe_was_unavailable_is_configurable(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    emulator.set_faults(error_next=10, path_contains="/pay")
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert inv.next_payment_attempt_at == NOW + timedelta(seconds=60)


def test_a_lost_pay_response_is_not_charged_again(app, plans, emulator):
    tenant = tenant_with_card(created_at=EARLY)
    # Every /pay response is lost (Stripe charged; we never hear it, even on the client's retries).
    emulator.set_faults(disconnect_next=10, path_contains="/pay")
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=NOW)
    [inv] = invoices_of(tenant.id)
    assert inv.status == InvoiceStatus.OPEN and [a.status for a in attempts_of(inv.id)] == ["error"]
    emulator.clear_faults()
    assert payments.retry_due_payments(now=NOW + timedelta(minutes=16)) == 0  # re-read: paid, nothing to charge
    db.session.refresh(inv)
    assert inv.status == InvoiceStatus.PAID
    assert len(charges_for(emulator, tenant.stripe_customer_id, include_failed=True)) == 1


def test_an_invoice_stripe_does_not_know_flags_the_tenant(app, plans, emulator):
    tenant = make_tenant(created_at=EARLY)
    inv = Invoice(tenant_id=tenant.id, period_start=date(2026, 10, 1), period_end=date(2026, 10, 31),
                  amount_due=2900, currency="usd", status="open", stripe_invoice_id="in_unknown",
                  issued_at=NOW, due_at=NOW, next_payment_attempt_at=NOW)
    db.session.add(inv)
    db.session.commit()
    assert payments.retry_due_payments(now=NOW) == 0
    db.session.refresh(tenant)
    db.session.refresh(inv)
    assert "in_unknown" in tenant.billing_error and inv.next_payment_attempt_at is None


@pytest.mark.slow
def test_stripe_faults_still_charge_every_invoice_exactly_once(app, plans, emulator):
    tenants = [tenant_with_card(created_at=EARLY) for _ in range(6)]
    for i, t in enumerate(tenants):
        add_usage(t.id, date(2026, 10, 10), voice_minutes=500 + 100 * i, sms_outbound=600)
    ids = [t.id for t in tenants]
    emulator.set_faults(error_rate=0.25, disconnect_rate=0.1, rate_limit_per_s=15, latency_ms=10, seed=7)
    now = NOW
    for _round in range(40):
        for tid in ids:
            invoicing.invoice_and_charge(tid, "2026-10", now=now)
        payments.retry_due_payments(now=now)
        db.session.expire_all()
        if all(i.status == InvoiceStatus.PAID for tid in ids for i in invoices_of(tid)) \
                and all(invoices_of(tid) for tid in ids):
            break
        now += timedelta(minutes=20)
    faults = emulator.faults()
    emulator.clear_faults()
    counters = faults["counters"]
    assert counters["errors_500"] > 0 and counters["disconnects"] > 0 and counters["rate_limited_429"] > 0
    for tenant in tenants:
        [inv] = [i for i in invoices_of(tenant.id) if i.status != InvoiceStatus.VOID]
        assert inv.status == InvoiceStatus.PAID, (tenant.id, inv.status)
        live = [i for i in stripe_invoices(emulator, tenant.stripe_customer_id) if i["status"] != "void"]
        assert [i["id"] for i in live] == [inv.stripe_invoice_id]
        assert len(live[0]["lines"]["data"]) == len(inv.lines)
        charges = charges_for(emulator, tenant.stripe_customer_id)
        assert [c["amount"] for c in charges] == [inv.amount_due], tenant.id
    numbers = sorted(i.number for tid in ids for i in invoices_of(tid) if i.number)
    assert numbers == [f"SP-2026-10-{n:06d}" for n in range(1, 7)]


# -- apply_stripe_invoice ---------------------------------------------------------------------------------

def _row(status: str) -> Invoice:
    return Invoice(tenant_id=1, period_start=date(2026, 10, 1), period_end=date(2026, 10, 31), amount_due=500,
                   amount_paid=0, currency="usd", status=status, paid_out_of_band=False, hard_decline=True,
                   last_payment_error="declined", next_payment_attempt_at=NOW)


@pytest.mark.parametrize("ours, theirs, expected", [
    ("draft", "open", "open"),
    ("open", "paid", "paid"),
    ("open", "void", "void"),
    ("open", "uncollectible", "uncollectible"),
    ("uncollectible", "paid", "paid"),
    ("paid", "open", "paid"),  # a stale event never reopens a paid invoice
    ("void", "open", "void"),
    ("paid", "void", "paid"),  # paid wins
    ("void", "paid", "paid"),
    ("open", "draft", "open"),
])
def test_apply_stripe_invoice_is_monotonic(ours, theirs, expected):
    row = _row(ours)
    apply_stripe_invoice(row, {"id": "in_x", "status": theirs, "amount_paid": 500,
                               "status_transitions": {"paid_at": 1793500000}}, now=NOW)
    assert row.status == expected


def test_apply_stripe_invoice_records_payment_details():
    row = _row("open")
    assert apply_stripe_invoice(row, {"id": "in_x", "status": "paid", "amount_paid": 500,
                                      "amount_paid_off_stripe": 500, "hosted_invoice_url": "https://h/i",
                                      "status_transitions": {"paid_at": 1793500000}}, now=NOW) is True
    assert row.amount_paid == 500 and row.paid_out_of_band and row.paid_at == utc(2026, 11, 1, 2, 26, 40)
    assert row.next_payment_attempt_at is None and row.last_payment_error is None and row.hard_decline is False
    assert row.stripe_invoice_id == "in_x" and row.hosted_invoice_url == "https://h/i"
    assert apply_stripe_invoice(row, {"id": "in_x", "status": "paid", "amount_paid": 500,
                                      "hosted_invoice_url": "https://h/i"}, now=NOW) is False
