"""`flask stripe setup-webhook` and `flask stripe check` against the emulator (the Stripe API they use)."""
from __future__ import annotations

import pytest

from app.services.webhooks.handlers import HANDLERS

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

URL = "https://billing.example.com/webhooks/stripe"


def run(app, *args):
    return app.test_cli_runner().invoke(args=["stripe", *args])


def endpoints(emulator) -> list:
    return list(emulator.stripe_client().v1.webhook_endpoints.list().data)


def test_setup_webhook_creates_the_endpoint_with_exactly_the_handled_events(app, emulator):
    result = run(app, "setup-webhook", "--url", URL)
    assert result.exit_code == 0, result.output
    [endpoint] = endpoints(emulator)
    assert endpoint.url == URL and sorted(endpoint.enabled_events) == sorted(HANDLERS)
    assert "charge.dispute.closed" in endpoint.enabled_events and "customer.deleted" in endpoint.enabled_events
    assert endpoint.api_version == "2026-10-28.endive"
    assert result.output.strip().splitlines()[-1] == emulator.webhook_secret  # the secret deliveries are signed with
    again = run(app, "setup-webhook", "--url", URL)
    assert again.exit_code == 0 and "updated webhook endpoint" in again.output
    assert len(endpoints(emulator)) == 1


def test_check_passes_once_set_up(app, emulator):
    run(app, "setup-webhook", "--url", URL)
    result = run(app, "check", "--url", URL)
    assert result.exit_code == 0, result.output
    assert "test-mode secret key" in result.output and "2026-10-28.endive" in result.output
    assert f"sends the {len(HANDLERS)} event types the app handles" in result.output
    assert "tenants can update their payment method" in result.output
    assert "MISSING" not in result.output and "Stripe is set up" in result.output


def test_check_names_what_is_missing(app, emulator):
    result = run(app, "check", "--url", URL)
    assert result.exit_code == 1
    assert f"MISSING  webhook endpoint for {URL}: none (run `flask stripe setup-webhook --url {URL}`)" in result.output
    client = emulator.stripe_client()
    client.v1.webhook_endpoints.create(params={"url": URL, "enabled_events": ["invoice.paid", "charge.succeeded"]})
    [config] = client.v1.billing_portal.configurations.list().data
    client.v1.billing_portal.configurations.update(config.id, params={
        "features": {"payment_method_update": {"enabled": False}}})
    result = run(app, "check", "--url", URL)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    [events] = [line for line in lines if "does not send" in line]
    assert "charge.dispute.created" in events and "invoice.payment_failed" in events and "invoice.paid" not in events
    assert any("also sends events the app ignores: charge.succeeded" in line for line in lines)
    assert any(line.startswith("MISSING") and "'Payment methods' is off" in line for line in lines)
    assert any("uses the account's default API version" in line for line in lines)


def test_unreachable_stripe_is_one_line(app):
    result = run(app, "check")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
