"""`flask stripe …`: set up and check the Stripe account the app bills through (webhook endpoint, portal)."""
from __future__ import annotations

from dataclasses import dataclass, field

import click
from flask import current_app
from flask.cli import AppGroup

from app import stripe_gateway as gateway

stripe_cli = AppGroup("stripe", help="Set up and check the Stripe account (webhook endpoint, Customer Portal).")

WEBHOOK_PATH = "/webhooks/stripe"
DESCRIPTION = "ServicePro Billing"


def handled_events() -> list[str]:
    """Exactly the event types the app processes (the webhook dispatch table), sorted."""
    from app.services.webhooks.handlers import HANDLERS

    return sorted(HANDLERS)


def default_webhook_url() -> str:
    return current_app.config["APP_BASE_URL"].rstrip("/") + WEBHOOK_PATH


@dataclass
class Report:
    """What `flask stripe check` found: lines to print, and what is missing (exit 1 when anything is)."""

    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(f"ok       {text}")

    def info(self, text: str) -> None:
        self.lines.append(f"info     {text}")

    def lack(self, text: str) -> None:
        self.lines.append(f"MISSING  {text}")
        self.missing.append(text)


def check(url: str) -> Report:
    """Check key mode, API version, the webhook endpoint for `url` and its events, and the Customer Portal."""
    report = Report()
    key = current_app.config.get("STRIPE_SECRET_KEY") or ""
    mode = "live" if gateway.live_mode() else "test"
    kind = "restricted" if key.startswith("rk_") else "secret"
    report.ok(f"API key: {mode}-mode {kind} key; the app ignores events of the other mode")
    version = gateway.pinned_api_version()
    report.ok(f"API version: {version} (pinned by the stripe library)")
    if not current_app.config.get("STRIPE_WEBHOOK_SECRET"):
        report.lack("STRIPE_WEBHOOK_SECRET is not set: deliveries cannot be verified")
    _check_endpoint(report, url, version)
    _check_portal(report)
    return report


def _check_endpoint(report: Report, url: str, version: str) -> None:
    endpoints = [e for e in gateway.list_webhook_endpoints() if e.get("url") == url]
    if not endpoints:
        report.lack(f"webhook endpoint for {url}: none (run `flask stripe setup-webhook --url {url}`)")
        return
    wanted = set(handled_events())
    for endpoint in endpoints:
        name = f"webhook endpoint {endpoint['id']} ({url})"
        events = set(endpoint.get("enabled_events") or [])
        if endpoint.get("status") != "enabled":
            report.lack(f"{name} is {endpoint.get('status')}")
        missing = sorted(wanted - events) if "*" not in events else []
        if missing:
            report.lack(f"{name} does not send: {', '.join(missing)} (run setup-webhook again)")
        else:
            report.ok(f"{name} sends the {len(wanted)} event types the app handles")
        extra = sorted(events - wanted)
        if extra:
            report.info(f"{name} also sends events the app ignores: {', '.join(extra)}")
        if endpoint.get("api_version") not in (None, version):
            report.lack(f"{name} renders events in API version {endpoint['api_version']}, the app reads {version}")
        elif endpoint.get("api_version") is None:
            report.info(f"{name} uses the account's default API version; the app reads {version}")


def _check_portal(report: Report) -> None:
    configs = gateway.list_portal_configurations()
    default = next((c for c in configs if c.get("is_default")), None)
    if default is None:
        report.lack("Customer Portal: not configured (Dashboard → Settings → Billing → Customer portal: save it)")
        return
    name = f"Customer Portal configuration {default['id']}"
    features = default.get("features") or {}
    if not default.get("active"):
        report.lack(f"{name} is not active")
    if not (features.get("payment_method_update") or {}).get("enabled"):
        report.lack(f"{name}: 'Payment methods' is off — tenants could not update their card")
    else:
        report.ok(f"{name}: tenants can update their payment method")
    if not (features.get("invoice_history") or {}).get("enabled"):
        report.info(f"{name}: invoice history is off (tenants see their invoices in the app only)")
    profile = default.get("business_profile") or {}
    if not (profile.get("privacy_policy_url") and profile.get("terms_of_service_url")):
        report.info(f"{name}: no privacy policy / terms of service links (shown on the portal when set)")


def _failure(err: gateway.GatewayError) -> click.ClickException:
    """One line, exit 1: an unreachable Stripe names the fix, a refusal says what Stripe said."""
    if getattr(err, "unreachable", False):
        return click.ClickException(gateway.unreachable_message())
    return click.ClickException(f"Stripe refused the request: {err.message}")


@stripe_cli.command("setup-webhook")
@click.option("--url", default=None, help=f"Public URL of the endpoint (default: APP_BASE_URL + {WEBHOOK_PATH}).")
def setup_webhook_cmd(url: str | None) -> None:
    """Create the webhook endpoint with exactly the event types the app handles; print its signing secret."""
    url = url or default_webhook_url()
    if not url.startswith(("https://", "http://")):
        raise click.UsageError(f"--url must be an http(s) URL, got {url!r}")
    events = handled_events()
    try:
        existing = [e for e in gateway.list_webhook_endpoints() if e.get("url") == url]
        if existing:
            endpoint = gateway.set_webhook_events(existing[0]["id"], events)
            click.echo(f"updated webhook endpoint {endpoint['id']} for {url}: {len(events)} event types")
            click.echo("its signing secret is unchanged (Stripe shows it only at creation: Dashboard → "
                       "Developers → Webhooks); STRIPE_WEBHOOK_SECRET must hold it")
            return
        endpoint = gateway.create_webhook_endpoint(url, events, DESCRIPTION)
    except gateway.GatewayError as err:
        raise _failure(err) from None
    click.echo(f"created webhook endpoint {endpoint['id']} for {url} (API version {endpoint.get('api_version')})")
    click.echo(f"event types ({len(events)}): {', '.join(events)}")
    click.echo("set STRIPE_WEBHOOK_SECRET to this signing secret:")
    click.echo(endpoint.get("secret") or "")


@stripe_cli.command("check")
@click.option("--url", default=None, help=f"The endpoint's URL (default: APP_BASE_URL + {WEBHOOK_PATH}).")
def check_cmd(url: str | None) -> None:
    """Report the key's mode, API version, webhook endpoint and events, Customer Portal — and what is missing."""
    try:
        report = check(url or default_webhook_url())
    except gateway.GatewayError as err:
        raise _failure(err) from None
    for line in report.lines:
        click.echo(line)
    if report.missing:
        click.echo(f"{len(report.missing)} thing(s) missing")
        raise SystemExit(1)
    click.echo("Stripe is set up for ServicePro Billing")
