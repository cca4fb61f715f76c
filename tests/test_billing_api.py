"""GET /api/admin/billing/customer: a tenant's billing status; tenant admins see only their own."""
from __future__ import annotations

from datetime import date

import pytest

from app.extensions import db
from app.models import Invoice, InvoiceLine
from app.services.clock import month_bounds
from tests.factories import admin_email, make_root, make_tenant, utc

URL = "/api/admin/billing/customer"


def add_invoice(tenant, year: int, month: int, status: str, amount_due: int = 2900, amount_paid: int = 0,
                **fields) -> Invoice:
    first, last = month_bounds(year, month)
    inv = Invoice(tenant_id=tenant.id, period_start=first, period_end=last, amount_due=amount_due,
                  amount_paid=amount_paid, currency="usd", status=status, **fields)
    inv.lines.append(InvoiceLine(metric=None, quantity=1, unit_price=29, amount=amount_due, description="fee",
                                 period_start=first, period_end=last))
    db.session.add(inv)
    db.session.commit()
    return inv


@pytest.fixture
def two_tenants(app, plans):
    mine = make_tenant("Mine Co", plan="pro", stripe_customer_id="cus_mine", overdue_days=12,
                       dunning_stage="reminder")
    theirs = make_tenant("Theirs Co", plan="starter", stripe_customer_id="cus_theirs")
    for m in range(1, 9):  # eight finalized months, two of them still open
        status = "open" if m in (7, 8) else "paid"
        add_invoice(mine, 2026, m, status, amount_due=10000 + m, amount_paid=0 if status == "open" else 10000 + m,
                    number=f"SP-2026-{m:02d}-000001", hosted_invoice_url=f"https://pay/{m}",
                    issued_at=utc(2026, m + 1, 1), due_at=utc(2026, m + 1, 1),
                    paid_at=None if status == "open" else utc(2026, m + 1, 1, 1))
    add_invoice(mine, 2026, 9, "void", number="SP-2026-09-000001")
    add_invoice(mine, 2026, 10, "draft")  # not finalized yet: not shown, not owed
    add_invoice(theirs, 2026, 8, "open", amount_due=777, number="SP-2026-08-000002")
    return mine, theirs


def test_tenant_admin_sees_their_billing_status(client, auth, two_tenants):
    mine, _theirs = two_tenants
    auth.login(admin_email(mine))
    resp = client.get(URL)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["tenant"] == {"id": mine.id, "name": "Mine Co"}
    assert body["plan"]["code"] == "pro" and body["plan"]["monthly_fee"] == 9900
    assert body["plan"]["currency"] == "usd"
    assert {p["metric"]: p["unit_price"] for p in body["plan"]["prices"]}["voice_minutes"] == "0.012000"
    assert body["stripe_customer_id"] == "cus_mine"
    assert body["balance_due"] == 10007 + 10008 and body["currency"] == "usd"
    assert body["overdue_days"] == 12 and body["dunning_stage"] == "reminder"
    assert date.fromisoformat(body["next_invoice_date"]).day == 1
    invoices = body["invoices"]
    assert len(invoices) == 6
    assert [i["period_start"] for i in invoices] == ["2026-09-01", "2026-08-01", "2026-07-01", "2026-06-01",
                                                     "2026-05-01", "2026-04-01"]
    latest_open = invoices[1]
    assert latest_open == {
        "id": latest_open["id"], "number": "SP-2026-08-000001", "period_start": "2026-08-01",
        "period_end": "2026-08-31", "amount_due": 10008, "amount_paid": 0, "currency": "usd", "status": "open",
        "hosted_invoice_url": "https://pay/8", "due_at": "2026-09-01T00:00:00+00:00", "paid_at": None,
        "amount_credited": 0, "amount_remaining": 10008}  # issue 17
    assert invoices[0]["status"] == "void"
    assert "Theirs Co" not in resp.get_data(as_text=True) and "cus_theirs" not in resp.get_data(as_text=True)


def test_next_invoice_date_is_the_first_of_next_month_in_the_billing_zone(app, plans):
    from app.models import Tenant
    from app.services.invoicing import billing_status

    tenant = make_tenant()
    app.config["BILLING_TIMEZONE"] = "Pacific/Auckland"  # 2026-11-30 12:00 UTC is already December there
    status = billing_status(db.session.get(Tenant, tenant.id), now=utc(2026, 11, 30, 12))
    assert status.next_invoice_date == date(2027, 1, 1)
    app.config["BILLING_TIMEZONE"] = "UTC"
    assert billing_status(db.session.get(Tenant, tenant.id), now=utc(2026, 11, 30, 12)).next_invoice_date == \
        date(2026, 12, 1)


def test_tenant_admin_passing_their_own_id_is_fine(client, auth, two_tenants):
    mine, _ = two_tenants
    auth.login(admin_email(mine))
    assert client.get(f"{URL}?tenant_id={mine.id}").get_json()["tenant"]["id"] == mine.id


def test_tenant_admin_asking_for_another_tenant_gets_404(client, auth, two_tenants):
    mine, theirs = two_tenants
    auth.login(admin_email(mine))
    resp = client.get(f"{URL}?tenant_id={theirs.id}")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
    assert "Theirs" not in resp.get_data(as_text=True)


def test_restricted_tenant_can_still_read_its_billing_status(client, auth, two_tenants):
    mine, _ = two_tenants
    mine.dunning_stage = "restricted"
    db.session.commit()
    auth.login(admin_email(mine))
    resp = client.get(URL)
    assert resp.status_code == 200 and resp.get_json()["dunning_stage"] == "restricted"


def test_root_admin_passes_tenant_id(client, auth, two_tenants):
    _mine, theirs = two_tenants
    make_root()
    auth.login("root@example.com")
    body = client.get(f"{URL}?tenant_id={theirs.id}").get_json()
    assert body["tenant"]["name"] == "Theirs Co" and body["balance_due"] == 777
    assert [i["number"] for i in body["invoices"]] == ["SP-2026-08-000002"]


def test_root_admin_without_tenant_id_gets_422_and_unknown_tenant_404(client, auth, two_tenants):
    make_root()
    auth.login("root@example.com")
    resp = client.get(URL)
    assert resp.status_code == 422 and "tenant_id" in resp.get_json()["error"]["fields"]
    assert client.get(f"{URL}?tenant_id=999999").status_code == 404


@pytest.mark.parametrize("query, field", [
    ("tenant_id=abc", "tenant_id"),
    ("tenant_id=0", "tenant_id"),
    ("tenant_id=-3", "tenant_id"),
    ("tenant_id=99999999999999999999999", "tenant_id"),
    ("colour=blue", "colour"),
])
def test_bad_query_arguments_are_422_with_the_field(client, auth, two_tenants, query, field):
    mine, _ = two_tenants
    auth.login(admin_email(mine))
    resp = client.get(f"{URL}?{query}")
    assert resp.status_code == 422
    body = resp.get_json()["error"]
    assert body["code"] == "validation_error" and field in body["fields"]


def test_anonymous_caller_is_401(client, two_tenants):
    resp = client.get(URL)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
