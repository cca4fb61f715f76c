"""The emulator answers and sends events exactly in the shapes of Stripe's published schema (stripe_schema/).

Every operation the product uses is called over plain HTTP (the JSON as sent, not stripe-python's objects)
and checked against that operation's response schema; every event of a type the product handles is checked
against `event` and its object against the object's schema.
"""
from __future__ import annotations

import json

import pytest

from app.services.webhooks.handlers import HANDLERS
from tests.emulator import schema_support as schema


class Checked:
    """Calls the emulated API and records each response's mismatches with Stripe's schema."""

    def __init__(self, raw):
        self.raw = raw
        self.mismatches: list[str] = []
        self.checked: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, template: str, path: str, data=None, status: int = 200) -> dict:
        resp = self.raw(method, path, data)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text[:500])
        body = resp.json()
        found = schema.errors(body, schema.response_schema(method, template, status))
        self.mismatches += ["%s %s (%d): %s" % (method, template, status, e) for e in found]
        self.checked.add((method, template, status))
        return body


@pytest.fixture
def api(raw):
    return Checked(raw)


def product_flow(emu, api) -> dict:
    """Every call the product makes (gateway), in the order a month of billing makes them."""
    cus = api("POST", "/v1/customers", "/v1/customers",
              {"name": "Acme", "email": "billing@acme.test", "metadata[tenant_id]": "7"})
    api("GET", "/v1/customers/{customer}", "/v1/customers/%s" % cus["id"])
    pm = api("POST", "/v1/payment_methods/{payment_method}/attach",
             "/v1/payment_methods/pm_card_visa/attach", {"customer": cus["id"]})
    api("POST", "/v1/customers/{customer}", "/v1/customers/%s" % cus["id"],
        {"invoice_settings[default_payment_method]": pm["id"]})
    invoices = {}
    for label in ("paid", "declined", "void", "out_of_band"):
        inv = api("POST", "/v1/invoices", "/v1/invoices", {
            "customer": cus["id"], "currency": "usd", "collection_method": "charge_automatically",
            "auto_advance": "false", "pending_invoice_items_behavior": "exclude",
            "description": "ServicePro usage", "metadata[invoice_id]": label})
        api("POST", "/v1/invoiceitems", "/v1/invoiceitems", {
            "customer": cus["id"], "invoice": inv["id"], "amount": "2500", "currency": "usd",
            "description": "Starter plan", "period[start]": "1790000000", "period[end]": "1792000000",
            "metadata[invoice_line_id]": "1"})
        api("POST", "/v1/invoices/{invoice}", "/v1/invoices/%s" % inv["id"],
            {"description": "ServicePro usage (INV-1)", "metadata[number]": "INV-1"})
        api("POST", "/v1/invoices/{invoice}/finalize", "/v1/invoices/%s/finalize" % inv["id"],
            {"auto_advance": "false"})
        invoices[label] = inv["id"]
    api("POST", "/v1/invoices/{invoice}/pay", "/v1/invoices/%s/pay" % invoices["paid"], {"off_session": "true"})
    api("POST", "/v1/invoices/{invoice}/pay", "/v1/invoices/%s/pay" % invoices["out_of_band"],
        {"paid_out_of_band": "true"})
    api("POST", "/v1/invoices/{invoice}/void", "/v1/invoices/%s/void" % invoices["void"])
    # A declined charge: Stripe's 402 error object.
    failing = api("POST", "/v1/payment_methods/{payment_method}/attach",
                  "/v1/payment_methods/pm_card_chargeCustomerFail/attach", {"customer": cus["id"]})
    api("POST", "/v1/invoices/{invoice}", "/v1/invoices/%s" % invoices["declined"],
        {"default_payment_method": failing["id"]})
    api("POST", "/v1/invoices/{invoice}/pay", "/v1/invoices/%s/pay" % invoices["declined"],
        {"off_session": "true"}, status=402)
    api("GET", "/v1/invoices/{invoice}", "/v1/invoices/%s" % invoices["paid"])
    api("GET", "/v1/invoices/{invoice}", "/v1/invoices/%s" % invoices["paid"], {"expand[]": "payments"})
    api("GET", "/v1/invoices", "/v1/invoices", {"customer": cus["id"], "limit": "100"})
    payments = api("GET", "/v1/invoice_payments", "/v1/invoice_payments", {"invoice": invoices["declined"]})
    intent = payments["data"][0]["payment"]["payment_intent"]
    api("GET", "/v1/charges", "/v1/charges", {"payment_intent": intent, "limit": "1"})
    charge = emu.charges()[0]
    api("GET", "/v1/charges/{charge}", "/v1/charges/%s" % charge["id"])
    paid_by = api("GET", "/v1/charges/{charge}", "/v1/charges/%s" % charge["id"])["payment_intent"]
    api("GET", "/v1/invoice_payments", "/v1/invoice_payments",
        {"payment[type]": "payment_intent", "payment[payment_intent]": paid_by, "limit": "1"})
    api("POST", "/v1/billing_portal/sessions", "/v1/billing_portal/sessions", {
        "customer": cus["id"], "return_url": "http://app.test/admin/billing",
        "flow_data[type]": "payment_method_update", "flow_data[after_completion][type]": "redirect",
        "flow_data[after_completion][redirect][return_url]": "http://app.test/admin/billing"})
    # A dispute, won; another customer's, lost.
    dispute = emu._call("POST", "/_emulator/invoices/%s/dispute" % invoices["paid"], {})
    api("GET", "/v1/disputes/{dispute}", "/v1/disputes/%s" % dispute["id"], {"expand[]": "charge"})
    api("POST", "/v1/disputes/{dispute}", "/v1/disputes/%s" % dispute["id"],
        {"evidence[uncategorized_text]": "winning_evidence"})
    # flask stripe setup-webhook
    endpoint = api("POST", "/v1/webhook_endpoints", "/v1/webhook_endpoints", {
        "url": "https://billing.example.com/webhooks/stripe", "enabled_events[0]": "invoice.paid",
        "api_version": "2026-10-28.endive", "description": "ServicePro Billing"})
    assert endpoint["secret"].startswith("whsec_")
    api("POST", "/v1/webhook_endpoints/{webhook_endpoint}", "/v1/webhook_endpoints/%s" % endpoint["id"],
        {"enabled_events[0]": "invoice.paid", "enabled_events[1]": "customer.deleted", "disabled": "false"})
    api("GET", "/v1/webhook_endpoints", "/v1/webhook_endpoints", {"limit": "100"})
    # Errors: unknown object, bad parameter.
    api("GET", "/v1/invoices/{invoice}", "/v1/invoices/in_missing", status=404)
    api("POST", "/v1/customers", "/v1/customers", {"tenant": "7"}, status=400)
    api("POST", "/v1/invoices/{invoice}/pay", "/v1/invoices/%s/pay" % invoices["paid"], {}, status=400)
    # A deleted customer reads as Stripe's deleted_customer.
    gone = api("POST", "/v1/customers", "/v1/customers", {"name": "Gone"})
    emu.stripe_client().v1.customers.delete(gone["id"])
    api("GET", "/v1/customers/{customer}", "/v1/customers/%s" % gone["id"])
    return invoices


def test_every_response_the_product_reads_matches_stripes_schema(emu, api):
    product_flow(emu, api)
    assert len(api.checked) >= 20
    assert api.mismatches == []


def test_every_event_the_product_handles_matches_stripes_schema(emu, api):
    product_flow(emu, api)
    client = emu.stripe_client()
    second = _another_paid_invoice(emu)
    [charge] = [c for c in emu.charges() if c["invoice"] == second]
    client.v1.refunds.create(params={"charge": charge["id"], "amount": 100})
    lost = emu._call("POST", "/_emulator/invoices/%s/dispute" % second, {})
    client.v1.disputes.close(lost["id"])
    events = [e for e in emu.events() if e["type"] in HANDLERS]
    seen = {e["type"] for e in events}
    assert {"invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
            "invoice.voided", "customer.updated", "customer.deleted", "payment_method.attached",
            "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
            "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated", "charge.refunded"} <= seen
    mismatches = []
    for event in events:
        body = json.loads(json.dumps(event))
        mismatches += ["%s envelope: %s" % (event["type"], e)
                       for e in schema.errors(body, {"$ref": "#/components/schemas/event"})]
        obj = body["data"]["object"]
        mismatches += ["%s object: %s" % (event["type"], e) for e in schema.errors(obj, schema.object_schema(obj))]
    assert mismatches == []


def _another_paid_invoice(emu) -> str:
    client = emu.stripe_client()
    cus = client.v1.customers.create(params={"name": "Second"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    inv = client.v1.invoices.create(params={"customer": cus.id, "currency": "usd"})
    client.v1.invoice_items.create(params={"customer": cus.id, "invoice": inv.id, "amount": 900, "currency": "usd"})
    client.v1.invoices.finalize_invoice(inv.id)
    client.v1.invoices.pay(inv.id, params={"payment_method": pm.id})
    return inv.id


def test_the_objects_the_product_reads_are_all_stored_in_full():
    """Only nested details the product never reads fall back to an unchecked (not copied) schema."""
    stored = schema.spec()["components"]["schemas"]
    for name in ("invoice", "line_item", "invoiceitem", "customer", "deleted_customer", "payment_method", "charge",
                 "charge_outcome", "invoice_payment", "dispute", "balance_transaction", "event", "error",
                 "api_errors", "billing_portal.session"):
        assert not stored[name].get("x-excerpt-missing"), name
    assert "payment_method_details_card" in schema.missing()  # documented in stripe_schema/README.md


def test_the_stored_schema_says_where_it_comes_from():
    readme = (schema.SCHEMA_DIR / "README.md").read_text()
    spec = schema.spec()
    assert spec["info"]["version"] == "2026-09-30.endive"
    assert "18fa2cc768024b47789dc6fa243acd48478acac2" in spec["info"]["x-excerpt-source"]
    assert "stripe/openapi" in readme and "2026-10-28.endive" in readme


def test_the_validator_catches_each_kind_of_mismatch():
    """Nulls Stripe never sends, missing required fields and fields Stripe does not have are all reported."""
    line_ok = {"id": "il_1", "object": "line_item", "amount": 1, "currency": "usd", "discountable": True,
               "discounts": [], "livemode": False, "metadata": {}, "period": {"start": 1, "end": 2}, "subtotal": 1}
    ref = {"$ref": "#/components/schemas/line_item"}
    assert schema.errors(line_ok, ref) == []
    assert schema.errors({k: v for k, v in line_ok.items() if k != "subtotal"}, ref) == [
        "<root>: 'subtotal' is a required property"]
    assert any("total_count" in e for e in schema.errors({**line_ok, "total_count": 1}, ref))
    cus = {"id": "cus_1", "object": "customer", "created": 1, "livemode": False}
    assert any(e.startswith("business_name") for e in schema.errors(
        {**cus, "business_name": None}, {"$ref": "#/components/schemas/customer"}))
