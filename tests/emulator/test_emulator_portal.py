"""Billing portal sessions and the emulator's portal page."""

import re

import pytest
import requests
import stripe


def _session(client, customer_id, **params):
    return client.v1.billing_portal.sessions.create(params={"customer": customer_id, **params})


def test_portal_payment_method_update_flow(client, emu):
    cus = client.v1.customers.create(params={"email": "portal@example.com", "name": "Portal Co"})
    sess = _session(client, cus.id, return_url="http://app.test/billing",
                    flow_data={"type": "payment_method_update",
                               "after_completion": {"type": "redirect",
                                                    "redirect": {"return_url": "http://app.test/billing?updated=1"}}})
    assert sess.id.startswith("bps_")
    assert sess.object == "billing_portal.session"
    assert sess.customer == cus.id and sess.livemode is False
    assert sess.return_url == "http://app.test/billing"
    assert sess.flow.type == "payment_method_update"
    assert sess.flow.after_completion.type == "redirect"
    assert sess.url == "%s/portal/%s" % (emu.url, sess.id)

    http = requests.Session()
    page = http.get(sess.url)
    assert page.status_code == 200
    assert "Visa 4242 (succeeds)" in page.text
    assert "Visa 0341 (declines on charge)" in page.text
    assert 'id="choose-pm_card_visa"' in page.text
    assert 'id="choose-pm_card_chargeCustomerFail"' in page.text
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)

    resp = http.post(emu.url + action, data={"payment_method": "pm_card_chargeCustomerFail"},
                     allow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "http://app.test/billing?updated=1"

    default = client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method
    assert default.startswith("pm_")
    assert client.v1.payment_methods.retrieve(default).card.last4 == "0341"
    types = [e["type"] for e in emu.events()]
    assert types[-2:] == ["payment_method.attached", "customer.updated"]

    # the page now shows the new default
    assert "0341" in http.get(sess.url).text


def test_portal_without_flow_redirects_to_return_url(client, emu):
    cus = client.v1.customers.create(params={"email": "p2@example.com"})
    sess = _session(client, cus.id, return_url="http://app.test/account")
    assert sess.flow is None
    resp = requests.post(sess.url + "/payment_method", data={"payment_method": "pm_card_visa"},
                         allow_redirects=False)
    assert resp.status_code == 303 and resp.headers["Location"] == "http://app.test/account"
    pm_id = client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method
    assert client.v1.payment_methods.retrieve(pm_id).card.last4 == "4242"


def test_portal_declined_card_shows_error(client, emu):
    cus = client.v1.customers.create(params={"email": "p3@example.com"})
    sess = _session(client, cus.id, return_url="http://app.test/account")
    resp = requests.post(sess.url + "/payment_method", data={"payment_method": "pm_card_visa_chargeDeclined"},
                         allow_redirects=False)
    assert resp.status_code == 402
    assert "Your card was declined." in resp.text
    assert client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method is None


def test_portal_session_validation(client):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.billing_portal.sessions.create(params={"customer": "cus_nope"})
    assert exc.value.http_status == 404
    cus = client.v1.customers.create(params={"email": "p4@example.com"})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        _session(client, cus.id, flow_data={"type": "payment_method_update", "colour": "red"})
    assert exc.value.user_message == "Received unknown parameter: flow_data[colour]"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        _session(client, cus.id, flow_data={"after_completion": {"type": "portal_homepage"}})
    assert exc.value.user_message == "Missing required param: flow_data[type]."
    with pytest.raises(stripe.InvalidRequestError) as exc:
        _session(client, cus.id, flow_data={"type": "payment_method_update",
                                            "after_completion": {"type": "redirect"}})
    assert "flow_data[after_completion][redirect]" in exc.value.user_message
    assert requests.get(client.v1.billing_portal.sessions.create(
        params={"customer": cus.id}).url.replace("/portal/bps_", "/portal/bps_x")).status_code == 404


def test_control_endpoint_sets_default_payment_method(client, emu):
    cus = client.v1.customers.create(params={"email": "c@example.com"})
    out = emu.set_default_payment_method(cus.id, "pm_card_chargeDeclinedInsufficientFunds")
    pm_id = out["payment_method"]["id"]
    assert out["customer"]["invoice_settings"]["default_payment_method"] == pm_id
    assert client.v1.payment_methods.retrieve(pm_id).card.last4 == "9995"


def test_hosted_invoice_page_pay_button(client, emu, open_invoice):
    cus = client.v1.customers.create(params={"email": "h@example.com"})
    inv = open_invoice(cus.id, 1999)
    page = requests.get(inv.hosted_invoice_url)
    assert 'id="pay-pm_card_visa"' in page.text
    resp = requests.post(inv.hosted_invoice_url + "/pay", data={"payment_method": "pm_card_visa"})
    assert resp.status_code == 200 and "Payment successful" in resp.text
    assert client.v1.invoices.retrieve(inv.id).status == "paid"
    assert [c["amount"] for c in emu.charges()] == [1999]
