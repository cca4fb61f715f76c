"""The params contract (stripe package TypedDicts) and form decoding."""

import subprocess
import sys

import pytest
import stripe

import stripe_emulator
from stripe_emulator import api, forms, params_contract
from stripe_emulator.testing import EmulatorProcess


@pytest.mark.parametrize("method,path,name", [
    ("POST", "/v1/customers", "CustomerCreateParams"),
    ("POST", "/v1/customers/cus_1", "CustomerUpdateParams"),
    ("GET", "/v1/customers", "CustomerListParams"),
    ("POST", "/v1/invoices", "InvoiceCreateParams"),
    ("POST", "/v1/invoices/in_1/pay", "InvoicePayParams"),
    ("POST", "/v1/invoices/in_1/finalize", "InvoiceFinalizeInvoiceParams"),
    ("GET", "/v1/invoices/search", "InvoiceSearchParams"),
    ("POST", "/v1/invoiceitems", "InvoiceItemCreateParams"),
    ("POST", "/v1/billing_portal/sessions", "SessionCreateParams"),
    ("POST", "/v1/payment_methods/pm_card_visa/attach", "PaymentMethodAttachParams"),
    ("GET", "/v1/customers/cus_1/payment_methods", "CustomerPaymentMethodListParams"),
    ("GET", "/v1/events", "EventListParams"),
])
def test_params_class_lookup(method, path, name):
    assert params_contract.params_class_for(method, path).__name__ == name


def test_params_class_is_the_stripe_typeddict():
    assert params_contract.params_class_for("POST", "/v1/invoices") is stripe.params.InvoiceCreateParams
    assert "pending_invoice_items_behavior" in params_contract.allowed_params("POST", "/v1/invoices")
    assert "idempotency_key" not in params_contract.allowed_params("POST", "/v1/invoices")


def test_check_params_reports_unknown_names():
    ok = {"email": "a@example.com", "metadata": {"anything": "goes"},
          "invoice_settings": {"default_payment_method": "pm_1"}}
    assert params_contract.check_params("POST", "/v1/customers", ok) == []
    bad = {"email": "a@example.com", "tenant": "4", "invoice_settings": {"default_pm": "x"}}
    assert params_contract.check_params("POST", "/v1/customers", bad) == ["tenant", "invoice_settings[default_pm]"]
    assert params_contract.check_params("POST", "/v1/customers", bad, nested=False) == ["tenant"]
    with pytest.raises(AssertionError, match="tenant"):
        params_contract.assert_params_known("POST", "/v1/customers", bad)
    assert params_contract.check_params("POST", "/v1/nope", {}) == ["<no params class for POST /v1/nope>"]


def test_validate_coerces_and_reports_like_stripe():
    out = params_contract.validate("POST", "/v1/invoiceitems", {
        "customer": "cus_1", "amount": "100", "discountable": "false", "period": {"start": "1", "end": "2"}})
    assert out == {"customer": "cus_1", "amount": 100, "discountable": False, "period": {"start": 1, "end": 2}}
    for params, message in [
        ({"amount": "x"}, "Invalid integer: x"),
        ({"discountable": "maybe"}, "Invalid boolean: maybe"),
        ({"period": {"start": "1"}}, "Missing required param: period[end]."),
        ({"bogus": "1"}, "Received unknown parameter: bogus"),
    ]:
        with pytest.raises(params_contract.ParamError) as exc:
            params_contract.validate("POST", "/v1/invoiceitems", params)
        assert exc.value.message == message


def test_every_emulated_route_exists_in_the_stripe_package():
    for method, template in api.IMPLEMENTED:
        concrete = template.replace("{", "x_").replace("}", "")
        assert params_contract.find_route(method, concrete) is not None, (method, template)


def test_request_log_matches_contract(emu, client, raw, customer_with_card, open_invoice):
    cus, _ = customer_with_card("pm_card_visa")
    inv = open_invoice(cus.id)
    client.v1.invoices.pay(inv.id, params={"off_session": True})
    client.v1.billing_portal.sessions.create(params={
        "customer": cus.id, "return_url": "http://x.test",
        "flow_data": {"type": "payment_method_update"}})
    client.v1.invoices.list(params={"customer": cus.id, "status": "paid", "limit": 5})
    client.v1.events.list(params={"type": "invoice.paid"})
    log = emu.requests()
    assert log and all("params" in e and "status" in e and "time" in e for e in log)
    assert params_contract.check_request_log(log) == []
    create = [e for e in log if e["method"] == "POST" and e["path"] == "/v1/invoices"][0]
    assert create["params"]["customer"] == cus.id and create["idempotency_key"]
    raw("POST", "/v1/customers", {"nickname": "x"})
    problems = params_contract.check_request_log(emu.requests())
    assert problems == ["POST /v1/customers: unknown nickname"]


def test_api_version_matches_stripe_package():
    assert stripe_emulator.API_VERSION == stripe._api_version._ApiVersion.CURRENT


def test_forms_decode_bracket_notation():
    pairs = [("metadata[tenant_id]", "4"), ("expand[]", "customer"), ("expand[]", "lines"),
             ("items[0][price]", "p1"), ("items[1][price]", "p2"), ("items[1][quantity]", "2"),
             ("flow_data[after_completion][redirect][return_url]", "http://x"), ("empty", "")]
    assert forms.decode(pairs) == {
        "metadata": {"tenant_id": "4"}, "expand": ["customer", "lines"],
        "items": [{"price": "p1"}, {"price": "p2", "quantity": "2"}],
        "flow_data": {"after_completion": {"redirect": {"return_url": "http://x"}}}, "empty": "",
    }
    with pytest.raises(forms.FormError):
        forms.decode([("a", "1"), ("a[b]", "2")])


def test_emulator_process_lifecycle(webhook_receiver):
    with EmulatorProcess(webhook_url=webhook_receiver.url, webhook_secret="whsec_p") as emu:
        assert emu.running and emu.url.startswith("http://127.0.0.1:")
        assert emu.webhook_status()["url"] == webhook_receiver.url
        emu.stripe_client().v1.customers.create(params={"email": "p@example.com"})
        assert emu.flush_webhooks()
        d = webhook_receiver.received[0]
        assert stripe.Webhook.construct_event(d["body"], d["headers"]["Stripe-Signature"], "whsec_p")
    assert not emu.running


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "stripe_emulator", "--help"], capture_output=True, text=True,
                         cwd=stripe_emulator.__file__.rsplit("/stripe_emulator/", 1)[0], timeout=30)
    assert out.returncode == 0
    for flag in ("--port", "--host", "--webhook-url", "--webhook-secret"):
        assert flag in out.stdout
