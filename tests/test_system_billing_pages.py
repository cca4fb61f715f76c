"""The root admin's system billing page: the table, its queries, force-runs, run-all and the root controls."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select

from app.extensions import db, rq
from app.models import AuditLog, BillingRun, Invoice, Tenant, WebhookEvent
from app.services import clock
from app.system_billing.queries import default_period, period_choices
from tests.billing_support import add_usage
from tests.factories import LONG_AGO, admin_email, at, make_invoice, make_root, make_tenant, tenant_with_card, utc
from tests.support.pages import row_html, text_of, text_of_html
from tests.support.queries import fresh_request_queries
from tests.support.queues import run_jobs
from tests.support.web import HX, csrf_from


@pytest.fixture
def root(app, client, auth, plans):
    make_root()
    auth.login("root@example.com")
    return client


def csrf(client, path: str = "/admin/system-billing") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


def days_ago(n: int) -> datetime:
    return at(clock.today() - timedelta(days=n), 10)


_periods = iter(range(1, 10_000))


def open_invoice(tenant: Tenant, due_at: datetime, amount: int, *, number: str | None = None, **fields) -> Invoice:
    """An invoice due at `due_at` (open unless told), each in a period of its own."""
    k = next(_periods)
    start = date(1900 + k // 12, k % 12 + 1, 1)
    fields.setdefault("status", "open")
    inv = Invoice(tenant_id=tenant.id, period_start=start, period_end=start + timedelta(days=27), amount_due=amount,
                  currency="usd", number=number or f"SP-T-{k}", issued_at=due_at, due_at=due_at, **fields)
    db.session.add(inv)
    db.session.commit()
    return inv


def bulk_tenants(n: int, start: int = 0) -> None:
    """n tenants with two months of invoices each (one paid, every third with the latest still open)."""
    now = datetime.now(timezone.utc)
    rows = [{"name": f"Bulk {i:05d}", "slug": f"bulk-{i}", "plan": ("starter", "pro", "enterprise")[i % 3],
             "status": "active", "overdue_days": (i % 60), "dunning_stage": "ok", "disputed": False,
             "created_at": LONG_AGO, "updated_at": now} for i in range(start, start + n)]
    ids = [r[0] for r in db.session.execute(insert(Tenant).returning(Tenant.id), rows)]
    invoices = []
    for k, tid in enumerate(ids):
        for month, status in ((9, "paid"), (10, "open" if k % 3 == 0 else "paid")):
            invoices.append({"tenant_id": tid, "period_start": date(2026, month, 1),
                             "period_end": date(2026, month, 28), "amount_due": 2900 + k, "amount_paid": 0,
                             "currency": "usd", "status": status, "number": f"SP-B-{tid}-{month}",
                             "due_at": utc(2026, month + 1, 1), "created_at": now, "updated_at": now,
                             "paid_at": utc(2026, month + 1, 1) if status == "paid" else None})
    db.session.execute(insert(Invoice), invoices)
    db.session.commit()


# -- who may see it ------------------------------------------------------------------------------------------------

def test_tenant_admin_gets_403_on_the_system_pages_in_html_and_json(app, client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    resp = client.get("/admin/system-billing")
    assert resp.status_code == 403 and "platform administrators" in resp.get_data(as_text=True)
    resp = client.get("/admin/system-billing", headers={"Accept": "application/json"})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "forbidden"
    assert client.get(f"/admin/system-billing/tenants/{tenant.id}").status_code == 403
    token = csrf(client, "/admin/billing")
    resp = client.post(f"/admin/system-billing/tenants/{tenant.id}/force-run", data={"csrf_token": token,
                                                                                     "period": "2026-01"})
    assert resp.status_code == 403
    assert rq.queue("billing").count == 0


def test_signed_out_visitor_is_sent_to_sign_in_and_json_gets_401(client, app):
    assert "/login" in client.get("/admin/system-billing").headers["Location"]
    resp = client.get("/admin/system-billing", headers={"Accept": "application/json"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"


# -- the table -------------------------------------------------------------------------------------------------------

def test_each_row_shows_plan_balance_oldest_unpaid_overdue_stage_error_flags_and_last_invoice(root):
    late = make_tenant("Late Co", plan="pro", overdue_days=20, dunning_stage="reminder",
                       billing_error="invoice 2026-09: customer gone", disputed=True)
    open_invoice(late, days_ago(50), 9900, number="SP-LATE-1")  # the older open invoice
    open_invoice(late, days_ago(20), 1000, number="SP-LATE-2", last_payment_error="Your card was declined.")
    fine = make_tenant("Fine Co")
    make_invoice(fine, date(2026, 10, 1), status="paid", number="SP-FINE-1")
    html = root.get("/admin/system-billing").get_data(as_text=True)

    late_row = text_of_html(row_html(html, f"tenant-row-{late.id}"))
    oldest = clock.today() - timedelta(days=50)
    assert late_row.startswith("Late Co billing error disputed Pro $109.00")
    # The oldest unpaid invoice (what overdue days count from) beside the last one issued (a newer period).
    assert f"SP-LATE-1 due {oldest:%b} {oldest.day}, {oldest.year} · $99.00 20 reminder Your card was declined." \
        in late_row
    assert "SP-LATE-2 open" in late_row
    fine_row = text_of_html(row_html(html, f"tenant-row-{fine.id}"))
    assert fine_row.startswith("Fine Co Starter $0.00 none 0 ok — SP-FINE-1 paid 2026-09 · $49.00")
    # Most overdue first by default.
    assert html.index(f'id="tenant-row-{late.id}"') < html.index(f'id="tenant-row-{fine.id}"')


def names_in(html: str) -> list[str]:
    return re.findall(r'<tr id="tenant-row-\d+"[^>]*>\s*<th scope="row">\s*<a [^>]+>([^<]+)</a>', html)


def test_search_filter_sort_and_pages_are_server_side(root):
    bulk_tenants(30)
    special = make_tenant("Zebra Restricted", dunning_stage="restricted", overdue_days=70)
    make_invoice(special, days_ago(70), amount=100_000)

    html = root.get("/admin/system-billing?q=bulk 0001").get_data(as_text=True)
    assert sorted(names_in(html)) == [f"Bulk {i:05d}" for i in range(10, 20)]
    assert "Tenants 1–10 of 10" in text_of_html(html)

    html = root.get("/admin/system-billing?stage=restricted").get_data(as_text=True)
    assert names_in(html) == ["Zebra Restricted"]

    html = root.get("/admin/system-billing?sort=balance&dir=desc&per_page=25").get_data(as_text=True)
    assert names_in(html)[0] == "Zebra Restricted" and len(names_in(html)) == 25
    assert 'aria-sort="descending"' in html

    html = root.get("/admin/system-billing?sort=name&dir=asc&per_page=25&page=2").get_data(as_text=True)
    assert names_in(html) == ["Bulk 00025", "Bulk 00026", "Bulk 00027", "Bulk 00028", "Bulk 00029",
                              "Zebra Restricted"]
    assert "Tenants 26–31 of 31" in text_of_html(html)
    assert 'href="/admin/system-billing?sort=name&amp;dir=asc"' in html  # ← Previous (25 a page is the default)

    html = root.get("/admin/system-billing?flag=balance&sort=name&dir=asc").get_data(as_text=True)
    assert len(names_in(html)) == 11  # every third bulk tenant (0, 3, …, 27) and Zebra

    # Wildcards in the search are literal.
    assert names_in(root.get("/admin/system-billing?q=%25").get_data(as_text=True)) == []


def test_bad_query_arguments_fall_back_to_defaults(root):
    bulk_tenants(3)
    resp = root.get("/admin/system-billing?sort=id;drop table tenants&dir=sideways&page=-4&per_page=7&stage=x")
    assert resp.status_code == 200 and len(names_in(resp.get_data(as_text=True))) == 3
    resp = root.get("/admin/system-billing?page=99")  # past the end: empty, with a way back
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and names_in(html) == [] and "Page 99 of 1" in html and 'rel="prev"' in html


def test_htmx_table_requests_get_only_the_table_fragment(root):
    bulk_tenants(5)
    resp = root.get("/admin/system-billing?q=bulk&sort=name&dir=asc",
                    headers={**HX, "HX-Target": "tenant-table"})
    html = resp.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="tenant-table"') and "<html" not in html
    assert len(names_in(html)) == 5 and "HX-Request" in resp.headers["Vary"]
    # History restores (back button after a cache miss) get the whole page.
    resp = root.get("/admin/system-billing?q=bulk", headers={**HX, "HX-Target": "tenant-table",
                                                              "HX-History-Restore-Request": "true"})
    assert "<html" in resp.get_data(as_text=True)


def test_number_of_queries_does_not_grow_with_tenants(root):
    urls = ["/admin/system-billing", "/admin/system-billing?sort=balance&dir=desc",
            "/admin/system-billing?q=bulk&stage=ok&sort=oldest_due&per_page=25",
            "/admin/system-billing?flag=balance&sort=name"]
    bulk_tenants(10)
    small = [fresh_request_queries(root, u)[0] for u in urls]
    bulk_tenants(190, start=10)
    big = [fresh_request_queries(root, u)[0] for u in urls]
    assert small == big, (small, big)
    assert max(big) <= 7, big  # the user, as-of, overview, rows, run, webhooks (+ the session on some)
    partial, _ = fresh_request_queries(root, urls[0], {**HX, "HX-Target": "tenant-table"})
    assert partial == 2  # the user, the page of rows (its count included)
    past_the_end, _ = fresh_request_queries(root, "/admin/system-billing?page=500")
    assert past_the_end <= 7  # one more: a count, so the pager can lead back


def test_aged_balance_buckets_and_money_collected_this_month(root):
    t = make_tenant("Aged")
    for days, amount in ((0, 100), (13, 200), (14, 400), (29, 800), (30, 1600), (44, 3200), (45, 6400), (90, 12800)):
        open_invoice(t, days_ago(days), amount)
    open_invoice(t, days_ago(1), 5000, amount_paid=1000)
    open_invoice(make_tenant("Payer"), days_ago(0), 7777, status="paid", amount_paid=7777,
                 paid_at=datetime.now(timezone.utc))

    html = root.get("/admin/system-billing").get_data(as_text=True)
    chart = text_of_html(re.search(r'<section class="card" id="aged-balance".*?</section>', html, re.S).group(0))
    assert re.search(r"0–14 days .*?\$43\.00 \(3\)", chart)  # 1.00 + 2.00 + (50.00 − 10.00)
    assert re.search(r"14–30 days .*?\$12\.00 \(2\)", chart)
    assert re.search(r"30–45 days .*?\$48\.00 \(2\)", chart)
    assert re.search(r"45\+ days .*?\$192\.00 \(2\)", chart)
    assert re.search(r"Open \$295\.00", chart)
    assert re.search(r'style="width: 65\.1%"', html)  # 45+ days: 192 / 295 of the bar
    assert 'id="collected-usd">$77.77<' in html


# -- force-run -------------------------------------------------------------------------------------------------------

def test_force_run_with_htmx_enqueues_once_polls_and_then_replaces_the_row(root, emulator):
    tenant = tenant_with_card("pm_card_visa", name="Force Co", created_at=LONG_AGO)
    period = default_period()
    year, month = clock.parse_period(period)
    add_usage(tenant.id, date(year, month, 3), voice_minutes=800)
    token = csrf(root)
    url = f"/admin/system-billing/tenants/{tenant.id}/force-run"

    page = root.get("/admin/system-billing").get_data(as_text=True)
    button = re.search(rf'<button[^>]*id="force-run-button-{tenant.id}"[^>]*>', page, re.S).group(0)
    assert 'form="force-run-form"' in button and f'formaction="{url}"' in button  # works without JS too
    assert f'hx-post="{url}"' in button and 'hx-include="#force-run-period"' in button

    # What the button sends: the table's month and in_table (hx-vals).
    sent = {"period": period, "in_table": "1"}
    resp = root.post(url, data=sent, headers={**HX, "X-CSRFToken": token})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and html.lstrip().startswith(f'<div id="force-run-{tenant.id}"')
    assert 'hx-trigger="every 1s"' in html and 'aria-live="polite"' in html
    assert f'/force-run/status?period={period}&amp;in_table=1' in html
    again = root.post(url, data=sent, headers={**HX, "X-CSRFToken": token})
    assert 'hx-trigger="every 1s"' in again.get_data(as_text=True)
    assert rq.queue("billing").count == 1  # pressing again while it waits starts nothing new

    status_url = f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period={period}&in_table=1"
    assert 'hx-trigger="every 1s"' in root.get(status_url, headers=HX).get_data(as_text=True)

    run_jobs(("billing",))
    resp = root.get(status_url, headers=HX)
    html = resp.get_data(as_text=True)
    assert resp.headers["HX-Retarget"] == f"#tenant-row-{tenant.id}" and resp.headers["HX-Reswap"] == "outerHTML"
    assert html.lstrip().startswith(f'<tr id="tenant-row-{tenant.id}"')
    assert "every 1s" not in html  # finished: no more polling
    assert "Invoiced and paid." in html and "badge-paid" in html and f"{period} · $33.50" in html
    assert resp.headers["HX-Trigger"] == "billing-changed"  # and the rest of the page follows
    # A reload shows the same: the row keeps its latest force-run (RQ keeps the result an hour).
    page = root.get("/admin/system-billing").get_data(as_text=True)
    assert "Invoiced and paid." in row_html(page, f"tenant-row-{tenant.id}")
    assert db.session.scalar(select(Invoice.status).where(Invoice.tenant_id == tenant.id)) == "paid"


def test_force_run_of_a_declined_tenant_shows_the_failure(root, emulator):
    tenant = tenant_with_card("pm_card_chargeCustomerFail", name="Declined Co", created_at=LONG_AGO)
    period = default_period()
    root.post(f"/admin/system-billing/tenants/{tenant.id}/force-run", data={"period": period, "in_table": "1"},
              headers={**HX, "X-CSRFToken": csrf(root)})
    run_jobs(("billing",))
    html = root.get(f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period={period}&in_table=1",
                    headers=HX).get_data(as_text=True)
    row = text_of_html(html)
    assert "payment failed: Your card was declined." in row
    assert "badge-open" in html and "$29.00" in row


def test_force_run_from_the_tenant_page_polls_and_ends_in_place(root, emulator):
    tenant = tenant_with_card("pm_card_visa", name="Detail Co", created_at=LONG_AGO)
    period = period_choices()[1]  # any complete month may be chosen, not only the last
    page = root.get(f"/admin/system-billing/tenants/{tenant.id}").get_data(as_text=True)
    assert f'<select id="period-{tenant.id}" name="period"' in page  # its own month select here
    resp = root.post(f"/admin/system-billing/tenants/{tenant.id}/force-run", data={"period": period},
                     headers={**HX, "X-CSRFToken": csrf(root)})
    html = resp.get_data(as_text=True)
    assert f'/force-run/status?period={period}"' in html and "in_table" not in html
    run_jobs(("billing",))
    resp = root.get(f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period={period}", headers=HX)
    html = resp.get_data(as_text=True)
    assert "HX-Retarget" not in resp.headers  # no table row on this page: the component ends in place
    assert html.lstrip().startswith(f'<div id="force-run-{tenant.id}"') and "every 1s" not in html
    assert "Invoiced and paid." in html and f'<option value="{period}" selected>' in html


def test_force_run_rejects_bad_periods_with_a_message_never_a_500(root):
    tenant = make_tenant("Period Co")
    token = csrf(root)
    url = f"/admin/system-billing/tenants/{tenant.id}/force-run"
    nxt = clock.today().replace(day=28) + timedelta(days=5)
    for bad, says in (("2026-13", "YYYY-MM"), ("abc", "YYYY-MM"), ("", "YYYY-MM"), ("1999-12", "YYYY-MM"),
                      (clock.today().strftime("%Y-%m"), "has not ended yet"), (nxt.strftime("%Y-%m"), "not ended")):
        # No JS, from the table: the system page comes back with the message on the tenant's row.
        resp = root.post(url, data={"period": bad, "in_table": "1", "csrf_token": token})
        html = resp.get_data(as_text=True)
        assert resp.status_code == 422 and says in html, bad
        assert says in row_html(html, f"tenant-row-{tenant.id}")
        # No JS, from the tenant's page: that page comes back, message by its form.
        resp = root.post(url, data={"period": bad, "csrf_token": token})
        assert resp.status_code == 422 and f'id="period-error-{tenant.id}"' in resp.get_data(as_text=True)
        assert "<h1>Period Co" in resp.get_data(as_text=True)
        frag = root.post(url, data={"period": bad}, headers={**HX, "X-CSRFToken": token})
        assert frag.status_code == 422 and frag.get_data(as_text=True).lstrip().startswith(
            f'<div id="force-run-{tenant.id}"')
        js = root.post(url, data={"period": bad}, headers={"Accept": "application/json", "X-CSRFToken": token})
        assert js.status_code == 422 and js.get_json()["error"]["fields"]["period"]
    assert rq.queue("billing").count == 0
    bad_status = root.get(f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period=20x", headers=HX)
    assert bad_status.status_code == 422
    assert root.post("/admin/system-billing/tenants/999999/force-run",
                     data={"period": "2026-01", "csrf_token": token}).status_code == 404


def test_force_run_without_javascript_redirects_back_with_a_flash(root):
    tenant = make_tenant("NoJS Co")
    period = default_period()
    resp = root.post(f"/admin/system-billing/tenants/{tenant.id}/force-run",
                     data={"period": period, "in_table": "1", "csrf_token": csrf(root)},
                     headers={"Referer": "http://localhost/admin/system-billing?q=nojs"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/system-billing?q=nojs")
    assert f"Invoice run for NoJS Co ({period}) queued" in text_of(root.get("/admin/system-billing"))
    assert rq.queue("billing").job_ids == [f"invoice-{tenant.id}-{period}"]
    page = root.get(f"/admin/system-billing/tenants/{tenant.id}/force-run/status?period={period}")
    assert page.status_code == 200 and "Queued" in text_of(page)  # a plain page for people without JS
    # From the tenant's own page, the answer leads back there (where the job's state is shown).
    resp = root.post(f"/admin/system-billing/tenants/{tenant.id}/force-run",
                     data={"period": period, "csrf_token": csrf(root)})
    assert resp.headers["Location"].endswith(f"/admin/system-billing/tenants/{tenant.id}")
    assert "Queued" in text_of(root.get(resp.headers["Location"]))
    assert rq.queue("billing").count == 1


# -- run all tenants ---------------------------------------------------------------------------------------------------

def test_run_all_shows_a_progress_bar_that_polls_until_every_tenant_is_done(root, emulator):
    for name in ("Run A", "Run B"):
        tenant_with_card("pm_card_visa", name=name, created_at=LONG_AGO)
    period = default_period()
    resp = root.post("/admin/system-billing/runs", data={"period": period}, headers={**HX, "X-CSRFToken": csrf(root)})
    html = resp.get_data(as_text=True)
    run = db.session.scalar(select(BillingRun))
    assert html.lstrip().startswith('<div id="billing-run"')
    # Each poll says how many finished tenants it last showed: the answer tells the page when that moved.
    assert f'hx-get="/admin/system-billing/runs/{run.id}?seen=0"' in html and 'hx-trigger="every 1s"' in html
    assert "0 of 2 tenants" in text_of_html(html) and "<progress" in html
    assert "HX-Trigger" not in root.get(f"/admin/system-billing/runs/{run.id}?seen=0", headers=HX).headers

    run_jobs(("billing",))
    resp = root.get(f"/admin/system-billing/runs/{run.id}?seen=0", headers=HX)
    html = resp.get_data(as_text=True)
    assert "2 of 2 tenants" in text_of_html(html) and "every 1s" not in html and 'value="100"' in html
    assert resp.headers["HX-Trigger"] == "billing-changed"  # the cards and the table refresh themselves
    assert root.get(f"/admin/system-billing/runs/{run.id}").status_code == 200  # the no-JS page
    assert root.get("/admin/system-billing/runs/999").status_code == 404


def test_run_all_with_a_bad_period_is_rerendered_with_the_message(root):
    resp = root.post("/admin/system-billing/runs", data={"period": "next month", "csrf_token": csrf(root)})
    assert resp.status_code == 422 and 'id="run-error"' in resp.get_data(as_text=True)
    assert db.session.scalar(select(BillingRun.id)) is None


# -- root controls ------------------------------------------------------------------------------------------

def test_exempt_needs_a_reason_and_a_valid_date_then_is_audited(root):
    tenant = make_tenant("Arrangement Co")
    url = f"/admin/system-billing/tenants/{tenant.id}/exempt"
    token = csrf(root, f"/admin/system-billing/tenants/{tenant.id}")
    until = (clock.today() + timedelta(days=30)).isoformat()

    resp = root.post(url, data={"csrf_token": token, "until": until, "reason": "  "})
    assert resp.status_code == 422 and "A reason is required" in resp.get_data(as_text=True)
    resp = root.post(url, data={"csrf_token": token, "until": "31/12/2026", "reason": "call"})
    assert resp.status_code == 422 and "YYYY-MM-DD" in resp.get_data(as_text=True)
    assert 'value="call"' in resp.get_data(as_text=True)  # what was typed comes back
    resp = root.post(url, data={"csrf_token": token, "until": "2001-01-01", "reason": "call"})
    assert resp.status_code == 422 and "today or later" in resp.get_data(as_text=True)
    js = root.post(url, data={"until": until}, headers={"Accept": "application/json", "X-CSRFToken": token})
    assert js.status_code == 422 and js.get_json()["error"]["fields"] == {"reason": ["A reason is required"]}
    assert db.session.scalar(select(AuditLog.id)) is None

    resp = root.post(url, data={"csrf_token": token, "until": until, "reason": "paying in two parts"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/admin/system-billing/tenants/{tenant.id}")
    page = text_of(root.get(f"/admin/system-billing/tenants/{tenant.id}"))
    assert "Exempt from dunning until" in page and "paying in two parts" in page
    assert db.session.get(Tenant, tenant.id).dunning_exempt_until.isoformat() == until


def test_invoice_controls_void_mark_paid_and_retry_each_with_a_reason(root):
    tenant = make_tenant("Controls Co", dunning_stage="suspended", overdue_days=35)
    to_void = make_invoice(tenant, days_ago(35), amount=1000, number="SP-VOID")
    to_mark = make_invoice(tenant, date(2025, 6, 2), amount=2000, number="SP-MARK")
    to_retry = make_invoice(tenant, date(2025, 8, 2), amount=3000, number="SP-RETRY")
    page_url = f"/admin/system-billing/tenants/{tenant.id}"
    token = csrf(root, page_url)
    page = root.get(page_url).get_data(as_text=True)
    assert f'formaction="/admin/system-billing/invoices/{to_void.id}/void"' in page

    resp = root.post(f"/admin/system-billing/invoices/{to_void.id}/void", data={"csrf_token": token})
    assert resp.status_code == 422 and "A reason is required" in resp.get_data(as_text=True)
    assert "<details open>" in resp.get_data(as_text=True)  # the failing invoice's controls stay open

    resp = root.post(f"/admin/system-billing/invoices/{to_void.id}/void",
                     data={"csrf_token": token, "reason": "billed twice"})
    assert resp.status_code == 303
    resp = root.post(f"/admin/system-billing/invoices/{to_mark.id}/mark-paid",
                     data={"csrf_token": token, "reason": "cheque 1042"})
    assert resp.status_code == 303
    resp = root.post(f"/admin/system-billing/invoices/{to_retry.id}/retry",
                     data={"csrf_token": token, "reason": "customer called"})
    assert resp.status_code == 303
    text = text_of(root.get(page_url))
    assert "Invoice SP-VOID voided" in text and "Invoice SP-MARK marked paid out of band" in text
    assert f"Payment retry queued (job charge-{to_retry.id}-manual) for invoice SP-RETRY" in text
    db.session.expire_all()
    assert db.session.get(Invoice, to_void.id).status == "void"
    assert db.session.get(Invoice, to_mark.id).status == "paid"
    assert rq.queue("billing").job_ids == [f"charge-{to_retry.id}-manual"]
    assert [a.reason for a in db.session.scalars(select(AuditLog).order_by(AuditLog.id))] == [
        "billed twice", "cheque 1042", "customer called"]

    resp = root.post(f"/admin/system-billing/invoices/{to_void.id}/mark-paid",
                     data={"csrf_token": token, "reason": "oops"})
    assert resp.status_code == 422 and "only open invoices can be marked paid" in resp.get_data(as_text=True)
    assert root.post("/admin/system-billing/invoices/999999/void",
                     data={"csrf_token": token, "reason": "x"}).status_code == 404


def test_failed_webhook_events_are_listed_and_can_be_replayed(root):
    row = WebhookEvent(stripe_event_id="evt_failed_1", type="customer.created", payload={
        "id": "evt_failed_1", "type": "customer.created", "data": {"object": {"id": "cus_nobody"}}},
        status="failed", attempts=3, last_error="boom: handler crashed")
    db.session.add(row)
    db.session.commit()
    html = root.get("/admin/system-billing").get_data(as_text=True)
    assert "evt_failed_1" in html and "boom: handler crashed" in html
    resp = root.post(f"/admin/system-billing/webhooks/{row.id}/replay", data={"csrf_token": csrf(root)})
    assert resp.status_code == 303
    text = text_of(root.get("/admin/system-billing"))
    assert "Webhook evt_failed_1 replayed" in text and "No failed webhook events." in text
    assert db.session.scalar(select(AuditLog.action)) == "webhook.replay"
    assert root.post("/admin/system-billing/webhooks/999999/replay",
                     data={"csrf_token": csrf(root)}).status_code == 404


# -- one "as of", empty states, addresses, times ----------------------------------------------------------------------

def test_a_pass_run_as_of_a_later_day_is_the_as_of_of_the_page_buckets_and_since(root):
    from app.services.dunning import run_pass

    tenant = make_tenant("Dunmore Roofing")
    due = clock.today() - timedelta(days=5)
    make_invoice(tenant, due, amount=4900, number="SP-LATE-1")
    as_of = due + timedelta(days=50)
    run_pass(as_of)  # `flask billing dunning --as-of` fifty days past due
    shown = f"{as_of:%b} {as_of.day}, {as_of.year}"

    html = root.get("/admin/system-billing").get_data(as_text=True)
    assert f"Overdue days as of {shown}" in text_of_html(html)
    chart = text_of_html(re.search(r'<section class="card" id="aged-balance".*?</section>', html, re.S).group(0))
    assert re.search(r"45\+ days .*?\$49\.00 \(1\)", chart) and re.search(r"0–14 days .*?\$0\.00 \(0\)", chart)
    row = text_of_html(row_html(html, f"tenant-row-{tenant.id}"))
    assert "SP-LATE-1 due" in row and "$49.00 50 restricted" in row

    page = text_of(root.get(f"/admin/system-billing/tenants/{tenant.id}"))
    assert f"Overdue days 50 as of {shown}" in page
    assert f"Stage restricted since {shown}" in page  # the pass's day, not the moment it ran


def test_without_tenants_the_page_says_so_and_where_to_add_one(root):
    html = root.get("/admin/system-billing").get_data(as_text=True)
    assert "No tenants yet." in text_of_html(html) and 'href="/admin/tenants"' in html
    assert "Nothing is open." in html and "No failed webhook events." in html


def test_a_table_refresh_puts_the_views_own_address_in_the_address_bar(root):
    bulk_tenants(3)
    resp = root.get("/admin/system-billing?q=bulk&stage=&flag=&per_page=25&sort=name&dir=asc&period=2026-01",
                    headers={**HX, "HX-Target": "tenant-table"})
    # Empty fields, defaults and the force-run month stay out: the address is the view, to bookmark or share.
    assert resp.headers["HX-Push-Url"] == "/admin/system-billing?q=bulk&sort=name&dir=asc"


def test_job_times_carry_their_date_and_zone(root):
    from app.queue import enqueue_unique

    enqueue_unique("default", "tests.support.jobs.always_fails", "disk on fire", job_id="doomed-1")
    run_jobs(("default",))
    html = root.get("/admin/jobs").get_data(as_text=True)
    stamp = re.search(r'<time datetime="[^"]+">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\w+)</time>', html)
    assert stamp and stamp.group(2) == "UTC"
    assert stamp.group(1).startswith(clock.utcnow().strftime("%Y-%m-%d"))
