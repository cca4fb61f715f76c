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


def _stripe_failure(err) -> click.ClickException:
    """The one line (exit 1) for a Stripe failure a command cannot go on after: unreachable names the fix."""
    from app import stripe_gateway

    if err.unreachable:
        return click.ClickException(stripe_gateway.unreachable_message())
    return click.ClickException(f"Stripe refused the request: {err.message}")


def _require_stripe() -> None:
    """Stop with one line before any work when Stripe does not answer."""
    from app import stripe_gateway

    try:
        stripe_gateway.ping()
    except stripe_gateway.GatewayError as err:
        raise _stripe_failure(err) from None


@seed_cli.command("demo")
@click.option("--no-stripe", is_flag=True, help="Skip Stripe: no customers, cards or invoice history.")
def seed_demo_cmd(no_stripe: bool) -> None:
    """Idempotent demo data: root admin, tenants on each plan, 3 months of usage, invoiced history."""
    from app.services.seed import seed_demo
    from app.stripe_gateway import GatewayError

    password = current_app.config["DEMO_PASSWORD"]
    try:
        report = seed_demo(password, with_stripe=not no_stripe, before_stripe=_require_stripe)
    except GatewayError as err:  # the local data written so far is kept; a re-run carries on from there
        raise _stripe_failure(err) from None
    click.echo("Demo logins (password: %s):" % password)
    for email, what in report.logins:
        click.echo(f"  {email:<45} {what}")
    for slug, key in report.api_keys.items():
        click.echo(f"  API key for {slug}: {key}")
    for line in report.story:
        click.echo(line)


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
    from app.stripe_gateway import GatewayError

    try:
        result = sync_customers()
    except GatewayError as err:  # unreachable: the customers created before it are kept
        raise _stripe_failure(err) from None
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
    from app.integrations.cli import integrations_cli  # issue 16

    app.cli.add_command(integrations_cli)
    from app.stripe_cli import stripe_cli  # flask stripe setup-webhook / check (issue 15)
    app.cli.add_command(stripe_cli)


@billing_cli.command("dunning")
@click.option("--as-of", "as_of", default=None, help="YYYY-MM-DD in BILLING_TIMEZONE (default: today there)")
def billing_dunning_cmd(as_of: str | None) -> None:
    """Run the dunning pass as of a date: overdue days, stage changes, emails; idempotent."""
    from app.services.dunning import run_pass

    day = _date(as_of, "--as-of")
    try:
        result = run_pass(day)
    except ValueError as err:  # inconsistent DUNNING_*_DAYS
        raise click.UsageError(str(err)) from None
    click.echo(f"dunning pass as of {result.as_of.isoformat()}: {result.evaluated} tenants evaluated, "
               f"{result.changed} stage changes, {result.emails_queued} emails queued")
    for stage in ("reminder", "suspended", "restricted", "ok"):
        if result.changes.get(stage):
            click.echo(f"  -> {stage}: {result.changes[stage]}")


@billing_cli.command("run-invoices")
@click.option("--period", help="YYYY-MM (default: the month before --as-of).")
@click.option("--tenant", "tenant_id", type=int, help="Only this tenant id.")
@click.option("--as-of", "as_of", help="YYYY-MM-DD in BILLING_TIMEZONE (default: today); picks the default period.")
def run_invoices_cmd(period: str | None, tenant_id: int | None, as_of: str | None) -> None:
    """Generate and charge invoices for a period, in this process (no worker needed); idempotent."""
    from app.extensions import db
    from app.models import Tenant
    from app.services import clock, invoicing

    as_of_day = _date(as_of, "--as-of") or clock.today()
    if period:
        try:
            year, month = clock.parse_period(period)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--period") from None
    else:
        year, month = clock.previous_month(as_of_day)
    period = invoicing.period_key(year, month)
    if tenant_id is not None and db.session.get(Tenant, tenant_id) is None:
        raise click.BadParameter(f"no tenant with id {tenant_id}", param_hint="--tenant")
    tenant_ids = [tenant_id] if tenant_id is not None else invoicing.billable_tenant_ids(year, month)
    # Tenants created after the period are never run; counted, so "nothing happened" says why.
    created_after = 0 if tenant_id is not None else invoicing.created_after_count(year, month)
    if tenant_ids:
        _require_stripe()
    invoicing.generate_invoices(year, month, tenant_ids=tenant_ids)  # every tenant's lines in one aggregate

    outcomes = []
    with click.progressbar(tenant_ids, label=f"Invoicing {period}", show_pos=True) as bar:
        for tid in bar:
            outcomes.append(invoicing.invoice_and_charge(tid, period, trigger="manual"))
            if outcomes[-1].code == invoicing.Reason.STRIPE_UNREACHABLE:
                break  # Stripe went away: every other tenant would wait for it too
    click.echo(f"{period}: {invoicing.summarize(outcomes, created_after=created_after).text()}")
    by = {r: [o for o in outcomes if o.result == r] for r in invoicing.RunResult}
    for o in by["invoiced"]:
        if o.payment and o.payment != "succeeded":
            click.echo(f"  tenant {o.tenant_id}: invoice {o.invoice_status}, payment {o.payment}: {o.reason}")
    for o in by["skipped"]:
        if o.code != invoicing.Reason.ALREADY_INVOICED:
            click.echo(f"  tenant {o.tenant_id}: skipped, {o.reason}")
    for o in by["failed"]:
        click.echo(f"  tenant {o.tenant_id}: FAILED, {o.reason}", err=True)
    if len(outcomes) < len(tenant_ids):
        click.echo(f"  {len(tenant_ids) - len(outcomes)} tenants not run", err=True)
        from app.stripe_gateway import unreachable_message

        raise click.ClickException(unreachable_message())
    if by["failed"]:
        raise SystemExit(1)


@billing_cli.command("reconcile")
def billing_reconcile_cmd() -> None:
    """Apply Stripe's current state to every open invoice (heals lost webhooks); idempotent."""
    from app.services.reconciliation import reconcile_open_invoices

    click.echo(f"reconciled open invoices with Stripe: {reconcile_open_invoices()} changed")


@billing_cli.command("replay-webhook")
@click.argument("event_row_id", type=int)
def billing_replay_webhook_cmd(event_row_id: int) -> None:
    """Process a stored Stripe webhook event again (by its webhook_events id); audit-logged."""
    from app.services.webhooks.processing import replay_event

    try:
        status = replay_event(event_row_id, None)
    except (LookupError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"webhook event {event_row_id}: {status}")


@tenants_cli.command("revoke-api-key")
@click.option("--key-id", "key_id", type=int, required=True, help="The key's id (first column of its API keys page).")
def tenants_revoke_api_key_cmd(key_id: int) -> None:
    """Revoke an API key of any tenant at once; audit-logged; idempotent."""
    from app.extensions import db
    from app.services.tenants import revoke_api_key

    key = revoke_api_key(key_id, tenant_id=None, actor_user_id=None)
    if key is None:
        raise click.BadParameter(f"no API key with id {key_id}", param_hint="--key-id")
    db.session.commit()
    click.echo(f"API key {key.id} ({key.prefix}…, {key.label}) of tenant {key.tenant_id} revoked at "
               f"{key.revoked_at.isoformat(timespec='seconds')}")


# -- issue 17: plan changes and credit notes -----------------------------------------------------------------

@billing_cli.command("change-plan")
@click.option("--tenant", "tenant_id", type=int, required=True, help="The tenant id.")
@click.option("--plan", "plan_code", required=True, help="The new plan's code.")
@click.option("--effective", help="YYYY-MM-DD in BILLING_TIMEZONE (default: today); the change starts that day.")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
def billing_change_plan_cmd(tenant_id: int, plan_code: str, effective: str | None, reason: str | None) -> None:
    """Record a plan change; the month's fee is prorated by the days each plan is in force."""
    from app.services.plans import PlanChangeError, change_plan

    day = _date(effective, "--effective")
    try:
        row = change_plan(tenant_id, plan_code, day, source="cli", reason=reason)
    except PlanChangeError as err:
        raise click.ClickException(str(err)) from None
    if row is None:
        click.echo(f"tenant {tenant_id}: the plan change of {day or 'today'} was cancelled")
        return
    click.echo(f"tenant {tenant_id}: {row.from_plan} -> {row.to_plan} from {row.effective_on.isoformat()} "
               f"(plan change {row.id})")


@billing_cli.command("credit-note")
@click.option("--invoice", "invoice_id", type=int, required=True, help="Our invoice id.")
@click.option("--amount", type=int, required=True, help="Minor units (cents), > 0.")
@click.option("--kind", type=click.Choice(["reduce", "refund", "account_credit"]), required=True)
@click.option("--reason", required=True, help="Why (audit log; shown to the tenant on the credit note).")
def billing_credit_note_cmd(invoice_id: int, amount: int, kind: str, reason: str) -> None:
    """Issue a credit note through Stripe; prints its id (the last line)."""
    from app.services.credits import CreditError, issue_credit_note

    try:
        note = issue_credit_note(invoice_id, amount, kind, reason, actor=None)
    except CreditError as err:
        raise click.ClickException(str(err)) from None
    click.echo(note.id)
