"""PDF invoices: the printable page rendered to PDF, read back as text; each tenant sees only its own."""
from __future__ import annotations

import io
import re
from datetime import date

import pypdf

from app.extensions import db
from app.models import Invoice
from tests.factories import admin_email, invoice_with_lines, make_root, make_tenant
from tests.support.web import login

MAR = date(2026, 3, 1)


def pdf_text(resp) -> str:
    assert resp.status_code == 200, resp.status_code
    assert resp.mimetype == "application/pdf"
    assert resp.data.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(resp.data))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def test_a_tenant_admin_downloads_their_invoice_as_a_pdf_that_reads_right(app, client, plans):
    tenant = make_tenant("Acme <Plumbing> & Sons")
    inv = invoice_with_lines(tenant, MAR, 4900, 1234, status="open", number="SP-2026-03-000042")
    login(client, admin_email(tenant))
    resp = client.get(f"/admin/billing/invoices/{inv.id}.pdf")
    assert 'filename="invoice-SP-2026-03-000042.pdf"' in resp.headers["Content-Disposition"]
    text = pdf_text(resp)
    assert "Invoice SP-2026-03-000042" in text
    assert "Acme <Plumbing> & Sons" in text  # escaped in the HTML, read back as written
    assert "March 2026" in text and "Mar 1, 2026" in text and "Mar 31, 2026" in text
    assert re.search(r"Plan fee 1 \$49(\.00)? \$49\.00", text), text
    assert "Voice minutes 1,234" in text and "$12.34" in text
    assert "Total $61.34" in text and "Balance $61.34" in text
    assert "Print" not in text and "Back to billing" not in text  # the page's buttons stay on the page


def test_the_printable_page_links_its_pdf(app, client, plans):
    tenant = make_tenant()
    inv = invoice_with_lines(tenant, MAR, 4900, 0)
    login(client, admin_email(tenant))
    html = client.get(f"/admin/billing/invoices/{inv.id}").get_data(as_text=True)
    assert f'href="/admin/billing/invoices/{inv.id}.pdf"' in html


def test_another_tenants_invoice_is_not_found(app, client, plans):
    mine, theirs = make_tenant("Mine"), make_tenant("Theirs")
    invoice_with_lines(mine, MAR, 4900, 0)
    other = invoice_with_lines(theirs, MAR, 9900, 0, number="SP-THEIRS")
    login(client, admin_email(mine))
    resp = client.get(f"/admin/billing/invoices/{other.id}.pdf")
    assert resp.status_code == 404 and b"SP-THEIRS" not in resp.data
    assert client.get("/admin/billing/invoices/999999.pdf").status_code == 404


def test_a_draft_is_no_document_for_the_tenant(app, client, plans):
    tenant = make_tenant()
    draft = Invoice(tenant_id=tenant.id, period_start=MAR, period_end=date(2026, 3, 31), amount_due=100,
                    currency="usd", status="draft")
    db.session.add(draft)
    db.session.commit()
    login(client, admin_email(tenant))
    assert client.get(f"/admin/billing/invoices/{draft.id}.pdf").status_code == 404


def test_root_reads_any_tenants_pdf(app, client, plans):
    inv = invoice_with_lines(make_tenant("Somebody"), MAR, 2900, 50, number="SP-ROOT-1")
    make_root()
    login(client, "root@example.com")
    text = pdf_text(client.get(f"/admin/billing/invoices/{inv.id}.pdf"))
    assert "Invoice SP-ROOT-1" in text and "Somebody" in text and "Total $29.50" in text


def test_signed_out_visitors_are_sent_to_sign_in(app, client, plans):
    inv = invoice_with_lines(make_tenant(), MAR, 2900, 0)
    resp = client.get(f"/admin/billing/invoices/{inv.id}.pdf")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
