"""flask commands: seed, usage, billing, tenants."""
from __future__ import annotations

from datetime import date

import click
from flask import Flask, current_app
from flask.cli import AppGroup

seed_cli = AppGroup("seed", help="Demo data.")
usage_cli = AppGroup("usage", help="Usage rollups.")
billing_cli = AppGroup("billing", help="Stripe customers, invoices and dunning.")
tenants_cli = AppGroup("tenants", help="Tenants and their admins.")


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint=name) from None


@seed_cli.command("demo")
@click.option("--no-stripe", is_flag=True, help="Skip creating Stripe customers and cards.")
def seed_demo_cmd(no_stripe: bool) -> None:
    """Idempotent demo data: root admin, tenants on each plan, 3 months of usage."""
    from app.services.seed import seed_demo

    password = current_app.config["DEMO_PASSWORD"]
    report = seed_demo(password, with_stripe=not no_stripe)
    click.echo("Demo logins (password: %s):" % password)
    for email, what in report.logins:
        click.echo(f"  {email:<45} {what}")
    for slug, key in report.api_keys.items():
        click.echo(f"  API key for {slug}: {key}")


@usage_cli.command("rollup")
@click.option("--day", required=True, help="YYYY-MM-DD in BILLING_TIMEZONE")
def usage_rollup_cmd(day: str) -> None:
    """(Re)build one day's usage_rollups_daily from raw events; idempotent."""
    from app.services.usage import rollup_day

    d = _date(day, "--day")
    rows = rollup_day(d)
    click.echo(f"rolled up {d.isoformat()}: {rows} tenant-metric rows")


@billing_cli.command("sync-customers")
def sync_customers_cmd() -> None:
    """Create missing Stripe customers for all tenants."""
    from app.services.customers import sync_customers

    result = sync_customers()
    click.echo(f"created {result.created}, already had one {result.existing}, failed {len(result.failed)}")
    for tenant_id, why in result.failed.items():
        click.echo(f"  tenant {tenant_id}: {why}", err=True)
    if result.failed:
        raise SystemExit(1)


@tenants_cli.command("create")
@click.option("--name", required=True)
@click.option("--plan", required=True)
@click.option("--admin-email", required=True)
@click.option("--admin-password", required=True, prompt=True, hide_input=True)
def tenants_create_cmd(name: str, plan: str, admin_email: str, admin_password: str) -> None:
    """Create a tenant and its first admin; prints the API key once."""
    from app.services.tenants import TenantError, create_tenant

    try:
        created = create_tenant(name, plan, admin_email, admin_password)
    except TenantError as err:
        raise click.UsageError(f"{err.field}: {err.message}") from None
    click.echo(f"tenant {created.tenant.id} ({created.tenant.slug}) created; admin {created.admin.email}")
    click.echo(f"API key (shown once): {created.api_key}")


@tenants_cli.command("create-root")
@click.option("--email", required=True)
@click.option("--password", required=True, prompt=True, hide_input=True)
def create_root_cmd(email: str, password: str) -> None:
    """Create a root admin."""
    from app.extensions import db
    from app.models import Role
    from app.services.tenants import TenantError, create_user

    try:
        create_user(email, password, Role.ROOT_ADMIN)
    except TenantError as err:
        raise click.UsageError(err.message) from None
    db.session.commit()
    click.echo(f"root admin {email} created")


def init_app(app: Flask) -> None:
    for group in (seed_cli, usage_cli, billing_cli, tenants_cli):
        app.cli.add_command(group)
