"""Customers, API conventions, errors and authentication."""

import pytest
import stripe


def test_create_retrieve_update_customer(client):
    cus = client.v1.customers.create(params={
        "name": "Ada", "email": "ada@example.com", "description": "tenant 4",
        "metadata": {"tenant_id": "4", "plan": "pro"},
    })
    assert cus.id.startswith("cus_")
    assert cus.object == "customer"
    assert cus.livemode is False
    assert isinstance(cus.created, int)
    assert cus.metadata.to_dict() == {"tenant_id": "4", "plan": "pro"}
    assert cus.invoice_settings.default_payment_method is None

    got = client.v1.customers.retrieve(cus.id)
    assert got.email == "ada@example.com" and got.name == "Ada"

    # metadata merges; "" unsets a key
    upd = client.v1.customers.update(cus.id, params={
        "name": "Ada L.", "metadata": {"plan": "", "region": "eu"},
    })
    assert upd.name == "Ada L."
    assert upd.metadata.to_dict() == {"tenant_id": "4", "region": "eu"}


def test_list_customers_email_filter_and_pagination(client):
    ids = [client.v1.customers.create(params={"email": "c%d@example.com" % i}).id for i in range(5)]
    page = client.v1.customers.list(params={"limit": 2})
    assert page.object == "list" and page.url == "/v1/customers"
    assert [c.id for c in page.data] == [ids[4], ids[3]]  # newest first
    assert page.has_more is True
    page2 = client.v1.customers.list(params={"limit": 2, "starting_after": ids[3]})
    assert [c.id for c in page2.data] == [ids[2], ids[1]]
    before = client.v1.customers.list(params={"limit": 2, "ending_before": ids[1]})
    assert [c.id for c in before.data] == [ids[3], ids[2]]
    everything = [c.id for c in client.v1.customers.list(params={"limit": 2}).auto_paging_iter()]
    assert everything == list(reversed(ids))
    only = client.v1.customers.list(params={"email": "c2@example.com"})
    assert [c.id for c in only.data] == [ids[2]]


def test_customer_create_with_test_token_payment_method_and_default(client, emu):
    cus = client.v1.customers.create(params={
        "email": "t@example.com", "payment_method": "pm_card_visa",
        "invoice_settings": {"default_payment_method": "pm_card_visa"},
    })
    default = cus.invoice_settings.default_payment_method
    assert default.startswith("pm_") and default != "pm_card_visa"
    pms = client.v1.customers.payment_methods.list(cus.id)
    assert [pm.id for pm in pms.data] == [default]  # one PaymentMethod, not two
    types = [e["type"] for e in emu.events()]
    assert types == ["customer.created", "payment_method.attached"]


def test_update_default_payment_method_with_token_attaches_it(client, emu):
    cus = client.v1.customers.create(params={"email": "u@example.com"})
    upd = client.v1.customers.update(
        cus.id, params={"invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}})
    pm_id = upd.invoice_settings.default_payment_method
    pm = client.v1.payment_methods.retrieve(pm_id)
    assert pm.customer == cus.id and pm.card.last4 == "0341"
    evts = emu.events()
    assert [e["type"] for e in evts] == ["customer.created", "payment_method.attached", "customer.updated"]
    assert evts[-1]["data"]["previous_attributes"] == {
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None}}


def test_default_payment_method_must_belong_to_customer(client):
    a = client.v1.customers.create(params={"email": "a@example.com"})
    b = client.v1.customers.create(params={"email": "b@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": a.id})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.update(b.id, params={"invoice_settings": {"default_payment_method": pm.id}})
    assert exc.value.http_status == 400
    assert exc.value.param == "invoice_settings[default_payment_method]"


def test_404_resource_missing(client, raw):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.retrieve("cus_missing")
    e = exc.value
    assert e.http_status == 404
    assert e.code == "resource_missing"
    assert e.user_message == "No such customer: 'cus_missing'"
    r = raw("GET", "/v1/customers/cus_missing")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"] == "No such customer: 'cus_missing'"
    assert r.json()["error"]["param"] == "id"


def test_unknown_parameter_400(client, raw):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.create(params={"name": "x", "nickname": "y"})  # type: ignore[typeddict-unknown-key]
    assert exc.value.http_status == 400
    assert exc.value.user_message == "Received unknown parameter: nickname"
    assert exc.value.param == "nickname"
    r = raw("POST", "/v1/customers", {"invoice_settings[bogus]": "1"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err == {
        "type": "invalid_request_error", "message": "Received unknown parameter: invoice_settings[bogus]",
        "code": "parameter_unknown", "doc_url": err["doc_url"], "param": "invoice_settings[bogus]",
        "request_log_url": err["request_log_url"],
    }
    assert raw("POST", "/v1/customers", {"balance": "lots"}).json()["error"]["message"] == "Invalid integer: lots"


def test_authentication(emu, raw):
    r = raw("GET", "/v1/customers", key=None)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("You did not provide an API key.")
    r = raw("GET", "/v1/customers", key="pk_test_123456789012345")
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("Invalid API Key provided: ")
    with pytest.raises(stripe.AuthenticationError):
        emu.stripe_client(api_key="rk_nope").v1.customers.list()
    # Basic auth like `curl -u sk_test_x:` works too
    r = raw("GET", "/v1/customers", key=None, auth=(emu.api_key, ""))
    assert r.status_code == 200


def test_unrecognized_url(raw):
    r = raw("GET", "/v1/nothing_here")
    assert r.status_code == 404
    assert r.json()["error"]["message"].startswith("Unrecognized request URL (GET: /v1/nothing_here).")


def test_response_headers_and_shape(raw):
    r = raw("POST", "/v1/customers", {"email": "h@example.com", "metadata[tenant_id]": "4"})
    assert r.status_code == 200
    assert r.headers["Request-Id"].startswith("req_")
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["metadata"] == {"tenant_id": "4"}
    for key in ("id", "object", "livemode", "created", "invoice_settings", "balance", "currency"):
        assert key in body


def test_delete_customer(client, emu):
    cus = client.v1.customers.create(params={"email": "d@example.com"})
    deleted = client.v1.customers.delete(cus.id)
    assert deleted.deleted is True
    assert client.v1.customers.retrieve(cus.id).deleted is True
    assert "customer.deleted" in [e["type"] for e in emu.events()]


def test_v1_rejects_json_bodies_like_stripe(raw):
    r = raw("POST", "/v1/customers", data=b'{"email": "j@example.com"}',
            headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("Invalid request: unsupported Content-Type application/json")
