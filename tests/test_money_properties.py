"""Money properties over random months of invoices, credit notes and plan changes, through the real Stripe emulator.

After every step, whatever the sequence:
- money is conserved: Σ card charges − Σ refunds in Stripe = Σ (amount_paid − amount_refunded) of our invoices;
- the credit balance is never negative, and equals the credit Stripe holds for the customer;
- no invoice is credited past its amount_due, and its amount_credited is the sum of its credit notes;
- every cent of a paid invoice is accounted for: amount_due = paid by card + credit balance applied + reduced;
- an open invoice owes here exactly what Stripe says remains.
A model written from CONTRACT §8.1 ("card charge = amount_due − min(credit_balance, amount_due)") predicts each
charge. `assert_money_invariants` is meant for other scenario runs too (e.g. the chaos run).
"""
from __future__ import annotations

from datetime import date

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.extensions import db
from app.models import CreditNote, Invoice, Tenant
from app.services import credits, invoicing, plans as plan_service
from app.services.credits import CreditError
from tests.billing_support import charges_for
from tests.factories import tenant_with_card, utc

MONTHS = [(2026, 10), (2026, 11), (2026, 12), (2027, 1), (2027, 2)]


def assert_money_invariants(emulator, tenant_ids: list[int]) -> None:
    """The money invariants of CONTRACT §8.1 for some tenants, against what Stripe holds."""
    client = emulator.stripe_client()
    db.session.expire_all()
    for tenant in db.session.scalars(select(Tenant).where(Tenant.id.in_(tenant_ids))):
        charges = charges_for(emulator, tenant.stripe_customer_id)
        refunded = sum(c["amount_refunded"] for c in charges)
        invoices = list(db.session.scalars(select(Invoice).where(Invoice.tenant_id == tenant.id)))
        ours = sum(i.amount_paid - i.amount_refunded for i in invoices if not i.paid_out_of_band)
        assert sum(c["amount"] for c in charges) - refunded == ours, "charged − refunded ≠ paid"
        balance = credits.credit_balance(tenant.id)
        assert balance >= 0
        assert balance == max(0, -int(client.v1.customers.retrieve(tenant.stripe_customer_id).balance or 0))
        for inv in invoices:
            noted = db.session.scalar(select(func.coalesce(func.sum(CreditNote.amount), 0)).where(
                CreditNote.invoice_id == inv.id, CreditNote.status != "failed"))
            assert 0 <= inv.amount_credited == noted <= inv.amount_due
            if inv.status == "paid":
                reduced = db.session.scalar(select(func.coalesce(func.sum(CreditNote.amount), 0)).where(
                    CreditNote.invoice_id == inv.id, CreditNote.kind == "reduce", CreditNote.status != "failed"))
                assert inv.amount_due == inv.amount_paid + inv.balance_applied + reduced
            if inv.status == "open":
                remote = client.v1.invoices.retrieve(inv.stripe_invoice_id)
                assert inv.balance == remote.amount_remaining


step = st.one_of(
    st.tuples(st.just("invoice")),
    st.tuples(st.just("invoice")),
    st.tuples(st.just("credit"), st.sampled_from(["refund", "account_credit", "account_credit"]), st.floats(0.05, 1.3)),
    st.tuples(st.just("reduce"), st.floats(0.05, 1.3)),
    st.tuples(st.just("plan"), st.sampled_from(["starter", "pro", "enterprise"]), st.integers(1, 28)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=5, max_size=12))
def test_money_is_conserved_whatever_happens(app, plans, emulator, steps):
    emulator.reset()
    payer = tenant_with_card(plan="starter", created_at=utc(2026, 9, 1))
    decliner = tenant_with_card("pm_card_chargeCustomerFail", plan="starter", created_at=utc(2026, 9, 1))
    model_credit = 0  # the contract's credit balance of the paying tenant
    month = 0
    for s in steps:
        if s[0] == "invoice" and month < len(MONTHS):
            year, mon = MONTHS[month]
            period = f"{year:04d}-{mon:02d}"
            now = utc(*(MONTHS[month + 1] if month + 1 < len(MONTHS) else (2027, 3)), 1, 1)
            before = len(charges_for(emulator, payer.stripe_customer_id))
            invoicing.invoice_and_charge(payer.id, period, now=now)
            invoicing.invoice_and_charge(decliner.id, period, now=now)
            inv = invoicing.live_invoice(payer.id, year, mon)
            applied = min(model_credit, inv.amount_due)  # CONTRACT §8.1
            model_credit -= applied
            charged = [c["amount"] for c in charges_for(emulator, payer.stripe_customer_id)][before:]
            assert charged == ([inv.amount_due - applied] if inv.amount_due - applied else [])
            if applied:
                event("credit balance applied")
            month += 1
        elif s[0] == "credit":
            paid = [i for i in _invoices(payer.id) if i.status == "paid"]
            if paid:
                inv = paid[-1]
                amount = max(1, int(credits.limits(inv)[s[1]] * s[2]) or int(inv.amount_due * s[2]))
                try:
                    credits.issue_credit_note(inv.id, amount, s[1], "property run")
                    event(f"issued {s[1]}")
                    if s[1] == "account_credit":
                        model_credit += amount
                except CreditError:
                    pass
        elif s[0] == "reduce":
            open_ = [i for i in _invoices(decliner.id) if i.status == "open"]
            if open_:
                inv = open_[0]
                try:
                    credits.issue_credit_note(inv.id, max(1, int(inv.balance * s[1])), "reduce", "property run")
                    event("issued reduce")
                except CreditError:
                    pass
        elif s[0] == "plan" and month < len(MONTHS):
            year, mon = MONTHS[month]
            for tenant in (payer, decliner):
                try:
                    plan_service.change_plan(tenant.id, s[1], date(year, mon, s[2]), now=utc(year, mon, 1))
                except plan_service.PlanChangeError:
                    pass
        assert_money_invariants(emulator, [payer.id, decliner.id])
        assert credits.credit_balance(payer.id) == model_credit


def _invoices(tenant_id: int) -> list[Invoice]:
    db.session.expire_all()
    return list(db.session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id).order_by(Invoice.id)))
