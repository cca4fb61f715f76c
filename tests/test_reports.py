"""The revenue report (service, JSON, page with charts) and the streamed CSV exports, figures to the cent."""
from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import CreditNote, Invoice
from app.services import clock
from app.services.reports import INVOICE_CSV_HEADER, LINE_CSV_HEADER, revenue_report
from tests.factories import admin_email, invoice_with_lines, make_root, make_tenant, utc
from tests.support.queries import fresh_request_queries
from tests.support.web import login

NOW = utc(2026, 4, 15, 16)  # 12:00 in New York


@pytest.fixture
def config_overrides():
    # Months are billing-zone months: a payment at 02:00 UTC on April 1 was made on March 31 in New York.
    return {"BILLING_TIMEZONE": "America/New_York"}


@pytest.fixture
def root(app, client, plans):
    make_root()
    login(client, "root@example.com")
    return client


JAN, FEB, MAR, APR = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1), date(2026, 4, 1)


def four_months_of_history():
    a, b, c, d = (make_tenant(n) for n in ("Alpha", "Bravo", "Charlie EU", "Delta"))
    invoice_with_lines(a, JAN, 4900, 5100, paid_at=utc(2026, 2, 3, 15))
    invoice_with_lines(a, FEB, 4900, 7100, paid_at=utc(2026, 4, 1, 2))  # March 31, 22:00 in New York
    invoice_with_lines(a, MAR, 4900, 4100, status="open", due_at=utc(2026, 4, 1, 5))  # 14 days overdue
    invoice_with_lines(b, JAN, 9900, 10100, status="void", number="SP-VOID")
    invoice_with_lines(b, JAN, 9900, 5100, status="uncollectible")  # written off: invoiced, never collected, not owed
    invoice_with_lines(b, FEB, 9900, 20100, status="open", amount_paid=10000, due_at=utc(2026, 3, 1, 12))  # 45 days
    invoice_with_lines(b, MAR, 7000, 1000, status="open", due_at=utc(2026, 4, 20, 12))  # not yet due
    invoice_with_lines(c, MAR, 4000, 1000, currency="eur", paid_at=utc(2026, 4, 2, 9))
    invoice_with_lines(d, JAN, 2900, 4100, paid_at=utc(2026, 2, 1, 4, 30))  # January 31, 23:30 in New York
    return a, b, c, d


# -- the figures ---------------------------------------------------------------------------------------------

def test_each_month_adds_up_the_invoices_and_payments_it_comes_from(app, plans):
    four_months_of_history()
    report = revenue_report(4, now=NOW)
    assert report.currency == "usd" and report.currencies == ["eur", "usd"]
    assert report.as_json() == {"currency": "usd", "outstanding": 37000, "months": [
        {"month": "2026-01", "invoiced": 32000, "collected": 7000, "credited": 0, "recurring": 17700,
         "tenants_invoiced": 3},
        {"month": "2026-02", "invoiced": 42000, "collected": 10000, "credited": 0, "recurring": 14800,
         "tenants_invoiced": 2},
        {"month": "2026-03", "invoiced": 17000, "collected": 12000, "credited": 0, "recurring": 11900,
         "tenants_invoiced": 2},
        {"month": "2026-04", "invoiced": 0, "collected": 0, "credited": 0, "recurring": 0, "tenants_invoiced": 0},
    ]}
    assert [(b.label, b.amount, b.invoices) for b in report.aging] == [
        ("Not yet due", 8000, 1), ("1–30 days", 9000, 1), ("31–60 days", 20000, 1), ("61–90 days", 0, 0),
        ("90+ days", 0, 0)]
    # 37,000 owed ÷ 91,000 invoiced over January–March (90 days) × 90.
    assert report.days_sales_outstanding == Decimal("36.6")


def credit(invoice: Invoice, amount: int, kind: str, issued_at: datetime | None) -> None:
    """A credit note on an invoice, issued at `issued_at` (None: still pending in Stripe)."""
    db.session.add(CreditNote(tenant_id=invoice.tenant_id, invoice_id=invoice.id, amount=amount,
                              currency=invoice.currency, kind=kind, reason="goodwill",
                              status="issued" if issued_at else "pending", issued_at=issued_at,
                              created_at=issued_at or NOW))
    invoice.amount_credited += amount
    db.session.commit()


def test_credit_notes_count_in_the_month_they_were_issued_and_lower_what_is_owed(root):
    a, b, _c, _d = four_months_of_history()
    feb_b = db.session.scalar(select(Invoice).where(Invoice.tenant_id == b.id, Invoice.period_start == FEB))
    jan_a, mar_a = (db.session.scalar(select(Invoice).where(Invoice.tenant_id == a.id, Invoice.period_start == p))
                    for p in (JAN, MAR))
    credit(feb_b, 5000, "reduce", utc(2026, 3, 10, 12))
    credit(jan_a, 2000, "refund", utc(2026, 4, 1, 3))  # March 31, 23:00 in New York
    credit(mar_a, 1000, "reduce", None)  # pending: on the invoice already, not issued in any month yet
    report = revenue_report(4, now=NOW)
    assert [m.credited for m in report.months] == [0, 0, 7000, 0]
    assert report.outstanding == 37000 - 5000 - 1000
    assert [b.amount for b in report.aging][1:3] == [8000, 15000]
    rows = read_csv(root.get("/admin/reports/invoices.csv?period=2026-02"))
    assert [(r[2], r[8]) for r in rows[1:]] == [("Alpha", "0"), ("Bravo", "5000")]


def test_another_currency_is_reported_on_its_own(app, plans):
    four_months_of_history()
    report = revenue_report(2, "eur", now=NOW)
    assert report.as_json() == {"currency": "eur", "outstanding": 0, "months": [
        {"month": "2026-03", "invoiced": 5000, "collected": 0, "credited": 0, "recurring": 4000,
         "tenants_invoiced": 1},
        {"month": "2026-04", "invoiced": 0, "collected": 5000, "credited": 0, "recurring": 0, "tenants_invoiced": 0},
    ]}


def test_months_count_in_the_billing_zone_not_in_utc(app, plans):
    four_months_of_history()
    app.config["BILLING_TIMEZONE"] = "UTC"
    by_month = {m.month: m.collected for m in revenue_report(4, now=NOW).months}
    assert by_month == {"2026-01": 0, "2026-02": 17000, "2026-03": 0, "2026-04": 12000}


def test_the_report_is_one_statement_however_many_tenants(root):
    four_months_of_history()
    small = [fresh_request_queries(root, u)[0] for u in ("/api/admin/reports/revenue", "/admin/reports/revenue")]
    for n in range(30):
        invoice_with_lines(make_tenant(f"More {n}", with_admin=False), MAR, 4900, n, status="open")
    big = [fresh_request_queries(root, u)[0] for u in ("/api/admin/reports/revenue", "/admin/reports/revenue")]
    assert small == big
    assert big[0] <= 3, big  # the session, the user, the report


# -- JSON and page ---------------------------------------------------------------------------------------------

def this_and_last_month() -> tuple[date, date]:
    today = clock.today()
    this = today.replace(day=1)
    return this, (this - timedelta(days=1)).replace(day=1)


def test_the_json_report_for_root(root):
    this, last = this_and_last_month()
    tenant = make_tenant("Json Co")
    invoice_with_lines(tenant, last, 4900, 1234, paid_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    body = root.get("/api/admin/reports/revenue?months=2").get_json()
    assert body == {"currency": "usd", "outstanding": 0, "months": [
        {"month": f"{last:%Y-%m}", "invoiced": 6134, "collected": 0,
         "credited": 0, "recurring": 4900, "tenants_invoiced": 1},
        {"month": f"{this:%Y-%m}", "invoiced": 0, "collected": 6134, "credited": 0, "recurring": 0,
         "tenants_invoiced": 0},
    ]}
    assert len(root.get("/api/admin/reports/revenue").get_json()["months"]) == 12


@pytest.mark.parametrize("query,field", [("months=0", "months"), ("months=abc", "months"),
                                         ("months=121", "months"), ("currency=dollars", "currency")])
def test_bad_report_arguments_get_the_error_shape(root, query, field):
    resp = root.get(f"/api/admin/reports/revenue?{query}")
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error" and field in error["fields"]


def test_reports_are_for_root_only(app, client, plans):
    assert client.get("/api/admin/reports/revenue").status_code == 401
    assert client.get("/admin/reports/revenue").status_code == 302
    tenant = make_tenant()
    login(client, admin_email(tenant))
    resp = client.get("/api/admin/reports/revenue")
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "forbidden"
    for url in ("/admin/reports/revenue", "/admin/reports/invoices.csv?period=2026-03",
                "/admin/reports/invoice-lines.csv?period=2026-03"):
        assert client.get(url).status_code == 403, url


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_draws_the_charts_and_shows_the_same_figures(root):
    this, last = this_and_last_month()
    tenant = make_tenant("Page Co")
    invoice_with_lines(tenant, last, 4900, 1234, paid_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    invoice_with_lines(make_tenant("Owes Co"), last, 9900, 100, status="open",
            due_at=datetime.now(timezone.utc) - timedelta(days=40))
    resp = root.get("/admin/reports/revenue?months=6")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert html.count("<script") == 2  # only our own htmx and app.js from base.html: the charts are SVG
    assert html.count("<svg") == 2 and html.count("<rect") == 12  # two columns per month, six months
    assert f"{last:%Y-%m}: $161.34 invoiced" in html and f"{this:%Y-%m}: $61.34 collected" in html
    assert f"{last:%Y-%m}: $148.00 recurring" in html
    text = text_of(html)
    assert "Outstanding now $100.00" in text
    assert "31–60 days 100% of the outstanding balance $100.00 (1)" in text
    row = text_of(html.split(f'id="month-{last:%Y-%m}"')[1].split("</tr>")[0])
    assert "$161.34 $0.00 $0.00 $148.00 2" in row
    assert f"/admin/reports/invoices.csv?period={last:%Y-%m}" in html
    assert f"/admin/reports/invoice-lines.csv?period={last:%Y-%m}" in html
    assert 'href="/admin/reports/revenue"' in html  # the root's nav link


def test_a_bad_months_value_is_shown_next_to_the_field(root):
    resp = root.get("/admin/reports/revenue?months=-3")
    assert resp.status_code == 422
    assert "Give a whole number of months from 1 to 120." in resp.get_data(as_text=True)


# -- CSV exports -----------------------------------------------------------------------------------------------

def read_csv(resp) -> list[list[str]]:
    return list(csv.reader(io.StringIO(resp.get_data(as_text=True))))


def test_invoices_csv_has_the_contract_columns_and_one_row_per_issued_invoice(root):
    a, b, _c, d = four_months_of_history()
    draft = Invoice(tenant_id=d.id, period_start=FEB, period_end=date(2026, 2, 28), amount_due=1, currency="usd",
                    status="draft")
    db.session.add(draft)
    db.session.commit()
    resp = root.get("/admin/reports/invoices.csv?period=2026-02")
    assert resp.status_code == 200 and resp.is_streamed
    assert resp.mimetype == "text/csv"
    assert 'filename="invoices-2026-02.csv"' in resp.headers["Content-Disposition"]
    rows = read_csv(resp)
    assert rows[0] == INVOICE_CSV_HEADER
    assert ",".join(rows[0]) == ("number,tenant_id,tenant_name,period_start,period_end,currency,amount_due,"
                                 "amount_paid,amount_credited,status,issued_at,paid_at")
    assert rows[1:] == [
        [f"SP-2026-02-{a.id:06d}-p", str(a.id), "Alpha", "2026-02-01", "2026-02-28", "usd", "12000", "12000", "0",
         "paid", "2026-03-01T12:00:00+00:00", "2026-04-01T02:00:00+00:00"],
        [f"SP-2026-02-{b.id:06d}-o", str(b.id), "Bravo", "2026-02-01", "2026-02-28", "usd", "30000", "10000", "0",
         "open", "2026-03-01T12:00:00+00:00", ""],
    ]


def test_the_lines_export_lists_every_line_of_the_period(root):
    a, b, _c, _d = four_months_of_history()
    rows = read_csv(root.get("/admin/reports/invoice-lines.csv?period=2026-01"))
    assert rows[0] == LINE_CSV_HEADER
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert len(body) == 8  # four January invoices (the void one included: it is a numbered document), two lines
    alpha = [r for r in body if r["tenant_name"] == "Alpha"]
    assert [(r["metric"], r["description"], r["quantity"], r["unit_price"], r["amount"]) for r in alpha] == [
        ("", "Plan fee", "1", "49", "4900"), ("voice_minutes", "Voice minutes", "5100", "0.01", "5100")]
    assert sum(int(r["amount"]) for r in body if r["invoice_number"] != "SP-VOID") == 32000


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(root):
    for name in ("=HYPERLINK(\"http://evil\")", "+1 Plumbing", "-Minus Co", "@SUM(A1)"):
        invoice_with_lines(make_tenant(name), MAR, 4900, 0)
    rows = read_csv(root.get("/admin/reports/invoices.csv?period=2026-03"))
    names = sorted(r[2] for r in rows[1:])
    assert names == ["'+1 Plumbing", "'-Minus Co", "'=HYPERLINK(\"http://evil\")", "'@SUM(A1)"]


@pytest.mark.parametrize("period", ["2026-13", "march", "2026-3-1", "1999-01"])
def test_a_bad_export_month_is_shown_on_the_report_page(root, period):
    resp = root.get(f"/admin/reports/invoices.csv?period={period}")
    assert resp.status_code == 422 and resp.mimetype == "text/html"
    assert "Choose a month as YYYY-MM" in resp.get_data(as_text=True)


def test_exports_are_complete_across_fetch_batches(root, monkeypatch):
    from app.services import reports

    monkeypatch.setattr(reports, "EXPORT_BATCH", 5)
    for n in range(23):
        invoice_with_lines(make_tenant(f"Batch {n:02d}", with_admin=False), MAR, 4900, n)
    resp = root.get("/admin/reports/invoices.csv?period=2026-03")
    assert len(read_csv(resp)) == 24
    assert [r[2] for r in read_csv(resp)[1:]] == [f"Batch {n:02d}" for n in range(23)]
