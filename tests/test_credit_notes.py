"""Credit notes through Stripe (CONTRACT §8.1): reduce, refund, account credit — to the cent, never past the invoice.

Scenarios read like the product; amounts are checked against the contract's words, not against our code:
- reduce (open invoice) lowers what is still owed; to 0 the invoice is paid and dunning is lifted like a payment;
- refund (paid invoice) returns money to the card through Stripe;
- account_credit (paid invoice) adds to the credit balance; later invoices use it before the card:
  card charge = amount_due − min(credit_balance, amount_due).
"""
from __future__ import annotations

import threading
from datetime import date

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import AuditLog, CreditNote, Invoice, OutboxEmail, Tenant
from app.services import credits, dunning, invoicing
from app.services.credits import CreditError
from tests.billing_support import charges_for, invoices_of, stripe_invoices
from tests.factories import make_root, tenant_with_card, utc

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

EARLY = utc(2026, 8, 1)
OCT, NOV = utc(2026, 11, 1, 1), utc(2026, 12, 1, 1)


def paid_invoice(plan: str = "starter") -> tuple[Tenant, Invoice]:
    tenant = tenant_with_card(plan=plan, created_at=EARLY)
    outcome = invoicing.invoice_and_charge(tenant.id, "2026-10", now=OCT)
    assert outcome.payment == "succeeded", outcome
    return tenant, invoices_of(tenant.id)[0]


def open_invoice(plan: str = "starter") -> tuple[Tenant, Invoice]:
    tenant = tenant_with_card("pm_card_chargeCustomerFail", plan=plan, created_at=EARLY)
    invoicing.invoice_and_charge(tenant.id, "2026-10", now=OCT)
    [inv] = invoices_of(tenant.id)
    assert inv.status == "open"
    return tenant, inv


def issue(invoice_id: int, amount: int, kind: str, reason: str = "goodwill", **kw) -> CreditNote:
    return credits.issue_credit_note(invoice_id, amount, kind, reason, now=utc(2026, 11, 5), **kw)


def fresh(invoice_id: int) -> Invoice:
    db.session.expire_all()
    return db.session.get(Invoice, invoice_id)


def refunded_on_stripe(emulator, customer_id: str) -> int:
    client = emulator.stripe_client()
    return sum(client.v1.charges.retrieve(c["id"]).amount_refunded for c in charges_for(emulator, customer_id))


# -- reduce --------------------------------------------------------------------------------------------------------

def test_reducing_an_open_invoice_lowers_what_is_owed_here_and_in_stripe(app, plans, emulator):
    tenant, inv = open_invoice()  # Starter: 2900
    note = issue(inv.id, 1000, "reduce", "call quality issue on Oct 3")

    assert note.status == "issued" and note.stripe_credit_note_id.startswith("cn_")
    inv = fresh(inv.id)
    assert (inv.status, inv.amount_due, inv.amount_credited, inv.balance) == ("open", 2900, 1000, 1900)
    [remote] = stripe_invoices(emulator, tenant.stripe_customer_id)
    assert (remote["amount_remaining"], remote["total"]) == (1900, 2900)
    assert [ln.amount for ln in inv.lines] == [2900]  # a credit note never edits the lines
    status = invoicing.billing_status(db.session.get(Tenant, tenant.id))
    assert status.balance_due == 1900
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "credit_note_reduce"))
    assert audit.reason == "call quality issue on Oct 3" and audit.details["amount"] == 1000
    mail = db.session.scalar(select(OutboxEmail).where(OutboxEmail.kind == "credit_note"))
    assert "$10.00" in mail.subject and "Still to pay: $19.00" in mail.body_text


def test_reducing_an_overdue_invoice_to_zero_pays_it_and_lifts_dunning(app, plans, emulator):
    tenant, inv = open_invoice()
    dunning.run_pass(date(2026, 12, 5), now=utc(2026, 12, 5))  # 34 days overdue: suspended
    assert db.session.get(Tenant, tenant.id).dunning_stage == "suspended"

    issue(inv.id, 2000, "reduce")
    issue(inv.id, 900, "reduce")

    inv = fresh(inv.id)
    assert (inv.status, inv.amount_paid, inv.amount_credited, inv.balance) == ("paid", 0, 2900, 0)
    tenant = db.session.get(Tenant, tenant.id)
    assert (tenant.dunning_stage, tenant.overdue_days) == ("ok", 0)
    assert charges_for(emulator, tenant.stripe_customer_id) == []
    assert stripe_invoices(emulator, tenant.stripe_customer_id)[0]["status"] == "paid"
    assert db.session.scalar(select(OutboxEmail).where(OutboxEmail.kind == "payment_receipt")) is None


# -- refund --------------------------------------------------------------------------------------------------------

def test_refunding_a_paid_invoice_returns_money_to_the_card_through_stripe(app, plans, emulator):
    tenant, inv = paid_invoice()
    note = issue(inv.id, 1200, "refund", "double-billed outage week")

    assert note.status == "issued" and note.stripe_refund_id.startswith("re_")
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 1200
    inv = fresh(inv.id)
    assert (inv.status, inv.amount_paid, inv.amount_refunded, inv.amount_credited) == ("paid", 2900, 1200, 1200)
    with pytest.raises(CreditError, match=r"\$17.01 is more than the \$17.00 left to credit"):
        issue(inv.id, 1701, "refund")
    issue(inv.id, 1700, "refund")
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 2900
    with pytest.raises(CreditError, match="more than the \\$0.00"):
        issue(inv.id, 1, "account_credit")


# -- account credit ------------------------------------------------------------------------------------------------

def test_account_credit_pays_the_next_invoice_before_the_card(app, plans, emulator):
    tenant, october = paid_invoice("starter")
    issue(october.id, 1000, "account_credit", "loyalty")
    assert credits.credit_balance(tenant.id) == 1000
    assert emulator.stripe_client().v1.customers.retrieve(tenant.stripe_customer_id).balance == -1000

    outcome = invoicing.invoice_and_charge(tenant.id, "2026-11", now=NOV)

    assert outcome.payment == "succeeded", outcome
    november = invoices_of(tenant.id)[1]
    # card charge = amount_due − min(credit_balance, amount_due) = 2900 − min(1000, 2900) = 1900
    assert (november.amount_due, november.balance_applied, november.amount_paid, november.status) == (
        2900, 1000, 1900, "paid")
    assert [c["amount"] for c in charges_for(emulator, tenant.stripe_customer_id)] == [2900, 1900]
    assert credits.credit_balance(tenant.id) == 0


def test_a_credit_larger_than_the_next_invoice_pays_it_and_the_rest_carries_over(app, plans, emulator):
    tenant, october = paid_invoice("pro")  # 9900
    issue(october.id, 5000, "account_credit")
    from app.services import plans as plan_service

    plan_service.change_plan(tenant.id, "starter", date(2026, 11, 1), now=utc(2026, 10, 20))
    invoicing.invoice_and_charge(tenant.id, "2026-11", now=NOV)

    november = invoices_of(tenant.id)[1]
    # 2900 due, 5000 of credit: min(5000, 2900) = 2900 applied, nothing charged, 2100 left.
    assert (november.amount_due, november.balance_applied, november.amount_paid, november.status) == (
        2900, 2900, 0, "paid")
    assert [c["amount"] for c in charges_for(emulator, tenant.stripe_customer_id)] == [9900]
    assert credits.credit_balance(tenant.id) == 2100
    body = _api(app, tenant)
    assert body["credit_balance"] == 2100
    by_number = {i["number"]: i for i in body["invoices"]}
    assert by_number[october.number]["amount_credited"] == 5000
    assert by_number[november.number]["amount_remaining"] == 0


def _api(app, tenant) -> dict:
    from tests.support.web import login
    from tests.factories import admin_email

    client = app.test_client()
    login(client, admin_email(tenant))
    resp = client.get("/api/admin/billing/customer")
    assert resp.status_code == 200
    return resp.get_json()


def test_the_api_shows_credited_and_remaining_amounts(app, plans, emulator):
    tenant, inv = open_invoice()
    issue(inv.id, 400, "reduce")
    body = _api(app, tenant)
    [row] = body["invoices"]
    assert (row["amount_due"], row["amount_credited"], row["amount_remaining"]) == (2900, 400, 2500)
    assert body["balance_due"] == 2500 and body["credit_balance"] == 0


# -- never past the invoice ------------------------------------------------------------------------------------------

def test_no_kind_credits_past_the_invoice_and_the_database_agrees(app, plans, emulator):
    tenant, inv = paid_invoice()
    issue(inv.id, 2000, "account_credit")
    with pytest.raises(CreditError, match="more than the \\$9.00 left to credit"):
        issue(inv.id, 901, "refund")
    issue(inv.id, 900, "refund")
    assert fresh(inv.id).amount_credited == 2900
    # Even a write that skips the service is stopped by the database.
    with pytest.raises(IntegrityError):
        db.session.execute(update(Invoice).where(Invoice.id == inv.id).values(amount_credited=2901))
        db.session.commit()
    db.session.rollback()


@pytest.mark.parametrize("kind, setup, message", [
    ("reduce", "paid", "only an open invoice can be reduced"),
    ("refund", "open", "only a paid invoice can be refunded or credited (reduce an open one instead)"),
    ("account_credit", "open", "only a paid invoice"),
])
def test_each_kind_only_on_its_kind_of_invoice(app, plans, emulator, kind, setup, message):
    _tenant, inv = paid_invoice() if setup == "paid" else open_invoice()
    with pytest.raises(CreditError, match=message.replace("(", r"\(").replace(")", r"\)")):
        issue(inv.id, 100, kind)
    assert fresh(inv.id).amount_credited == 0
    assert db.session.scalars(select(CreditNote)).all() == []


def test_a_reason_a_kind_and_a_positive_amount_are_required(app, plans, emulator):
    _tenant, inv = open_invoice()
    with pytest.raises(CreditError, match="reason is required") as err:
        issue(inv.id, 100, "reduce", "   ")
    assert err.value.field == "reason"
    with pytest.raises(CreditError, match="choose a kind"):
        issue(inv.id, 100, "discount")
    with pytest.raises(CreditError, match="above 0"):
        issue(inv.id, 0, "reduce")


def test_two_credit_notes_at_once_never_over_credit(app, plans, emulator):
    tenant, inv = paid_invoice()  # 2900
    results: list = []

    def worker():
        with app.app_context():
            try:
                results.append(issue(inv.id, 1800, "refund").status)
            except CreditError as err:
                results.append(str(err))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r == "issued" for r in results) == [False, True], results
    assert fresh(inv.id).amount_credited == 1800
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 1800
    notes = emulator.stripe_client().v1.credit_notes.list(params={"invoice": inv.stripe_invoice_id}).data
    assert [n.amount for n in notes] == [1800]


# -- Stripe faults mid-operation -----------------------------------------------------------------------------------

def test_a_lost_answer_leaves_the_note_pending_and_finishing_it_never_refunds_twice(app, plans, emulator):
    tenant, inv = paid_invoice()
    # Stripe does the refund but every answer is lost (stripe-python's own retries included).
    emulator.set_faults(disconnect_next=3, path_contains="/v1/credit_notes")
    note = issue(inv.id, 1500, "refund", "outage")
    assert note.status == "pending" and "did not answer" in note.error
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 1500  # Stripe did it once
    assert fresh(inv.id).amount_credited == 1500  # reserved meanwhile: nothing can over-credit
    with pytest.raises(CreditError, match="had been interrupted and is now issued"):
        issue(inv.id, 100, "refund")  # finishes the pending note first, and says so instead of issuing more
    emulator.clear_faults()
    db.session.expire_all()
    note = db.session.get(CreditNote, note.id)
    assert note.status == "issued" and note.stripe_refund_id
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 1500
    keys = [r["idempotency_key"] for r in emulator.requests() if r["path"] == "/v1/credit_notes"]
    assert set(keys) == {f"credit-note-{note.id}"}
    assert credits.resume_pending() == 0


def test_stripe_down_then_up_completes_pending_notes_in_the_daily_tick(app, plans, emulator):
    tenant, inv = paid_invoice()
    emulator.set_faults(error_next=3, path_contains="/v1/credit_notes")
    note = issue(inv.id, 700, "account_credit")
    assert note.status == "pending"
    assert emulator.stripe_client().v1.customers.retrieve(tenant.stripe_customer_id).balance == 0
    emulator.clear_faults()
    invoicing.run_monthly_tick(date(2026, 11, 6), now=utc(2026, 11, 6, 0, 30))
    db.session.expire_all()
    assert db.session.get(CreditNote, note.id).status == "issued"
    assert emulator.stripe_client().v1.customers.retrieve(tenant.stripe_customer_id).balance == -700
    assert credits.credit_balance(tenant.id) == 700


def test_a_refusal_by_stripe_fails_the_note_and_releases_its_amount(app, plans, emulator):
    tenant, inv = paid_invoice()
    emulator.stripe_client().v1.refunds.create(params={"charge": charges_for(emulator, tenant.stripe_customer_id)[0]
                                                       ["id"], "amount": 2500})  # refunded behind our back
    with pytest.raises(CreditError, match="Stripe refused"):
        issue(inv.id, 1000, "refund")
    [note] = db.session.scalars(select(CreditNote)).all()
    assert note.status == "failed" and fresh(inv.id).amount_credited == 0


# -- CLI and pages -------------------------------------------------------------------------------------------------

def test_cli_credit_note_prints_its_id_and_refuses_in_one_line(app, plans, emulator):
    _tenant, inv = paid_invoice()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["billing", "credit-note", "--invoice", str(inv.id), "--amount", "500", "--kind",
                                 "account_credit", "--reason", "goodwill"])
    assert result.exit_code == 0, result.output
    note_id = int(result.output.strip().splitlines()[-1])
    assert db.session.get(CreditNote, note_id).status == "issued"
    result = runner.invoke(args=["billing", "credit-note", "--invoice", str(inv.id), "--amount", "500", "--kind",
                                 "reduce", "--reason", "x"])
    assert result.exit_code == 1 and "only an open invoice can be reduced" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(args=["billing", "credit-note", "--invoice", str(inv.id), "--amount", "5", "--kind",
                                 "gift", "--reason", "x"])
    assert result.exit_code == 2


def test_root_issues_a_credit_note_from_the_tenant_page_with_a_reason(app, plans, emulator):
    from tests.support.web import login, page_csrf

    tenant, inv = paid_invoice()
    make_root()
    client = app.test_client()
    login(client, "root@example.com")
    page = f"/admin/system-billing/tenants/{tenant.id}"
    html = client.get(page).get_data(as_text=True)
    assert f'id="credit-form-{inv.id}"' in html and "Refund to the card (up to $29.00)" in html
    token = page_csrf(client, page)
    url = f"/admin/system-billing/invoices/{inv.id}/credit-note"
    no_reason = client.post(url, data={"csrf_token": token, "amount": "5", "kind": "refund", "reason": ""})
    assert no_reason.status_code == 422 and "A reason is required" in no_reason.get_data(as_text=True)
    bad = client.post(url, data={"csrf_token": token, "amount": "5.001", "kind": "refund", "reason": "x"})
    assert bad.status_code == 422 and "at most 2 decimals" in bad.get_data(as_text=True)
    form = {"csrf_token": token, "amount": "12.50", "kind": "refund", "reason": "outage", "request_key": "k-1"}
    assert client.post(url, data=form).status_code == 303
    assert client.post(url, data=form).status_code == 303  # the same form twice: one credit note
    assert refunded_on_stripe(emulator, tenant.stripe_customer_id) == 1250
    html = client.get(page).get_data(as_text=True)
    assert 'id="credit-note-list"' in html and "$12.50" in html and "outage" in html
    tenant_view = app.test_client()
    from tests.factories import admin_email

    login(tenant_view, admin_email(tenant))
    mine = tenant_view.get("/admin/billing").get_data(as_text=True)
    assert "$12.50 refunded to your card" in mine


def test_open_balances_everywhere_count_credits(app, plans, emulator):
    """The system billing row, the banner and dunning read what is owed after credits."""
    from app.system_billing.queries import tenant_row

    tenant, inv = open_invoice()
    issue(inv.id, 2500, "reduce")
    row = tenant_row(tenant.id)
    assert row.balance == 400
    tenant = db.session.get(Tenant, tenant.id)
    tenant.dunning_stage = "reminder"
    db.session.commit()
    assert dunning.banner_for(tenant).amount == "$4.00"
    assert db.session.scalar(text("select count(*) from credit_notes")) == 1


def test_the_revenue_report_and_export_count_credit_notes(app, plans, emulator):
    from app.services import reports

    _payer, paid = paid_invoice()
    _decliner, still_open = open_invoice()
    issue(paid.id, 500, "refund")
    issue(still_open.id, 900, "reduce")
    report = reports.revenue_report(months=2, now=utc(2026, 11, 20))
    november = {m.month: m for m in report.months}["2026-11"]
    assert november.credited == 1400  # issued on 2026-11-05
    assert report.outstanding == 2900 - 900
    rows = {row[0]: row for row in reports.invoice_rows("2026-10")}
    header = reports.INVOICE_CSV_HEADER
    assert rows[paid.number][header.index("amount_credited")] == 500
    assert rows[still_open.number][header.index("amount_credited")] == 900
