"""flask integrations …: service tokens and push endpoints for other services (CONTRACT §8.2)."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from app.services.integrations import SCOPES

integrations_cli = AppGroup("integrations", help="Service tokens and entitlements push endpoints.")
token_cli = AppGroup("token", help="Service tokens (shown once, stored hashed).")
endpoint_cli = AppGroup("endpoint", help="Endpoints that receive signed entitlements.updated events.")
integrations_cli.add_command(token_cli)
integrations_cli.add_command(endpoint_cli)


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


@token_cli.command("create")
@click.option("--name", required=True, help="Which service uses it, e.g. telephony.")
@click.option("--scope", "scopes", multiple=True, default=("entitlements:read",), show_default=True,
              type=click.Choice(SCOPES), help="Repeat for several scopes.")
def token_create_cmd(name: str, scopes: tuple[str, ...]) -> None:
    """Issue a service token; the token itself is the last line of output (shown once)."""
    from app.services.integrations import IntegrationError, create_token

    try:
        token, plaintext = create_token(name, scopes)
    except IntegrationError as err:
        raise click.BadParameter(err.message, param_hint=f"--{err.field}") from None
    click.echo(f"service token {token.id} ({token.name}, {token.scopes}) created; it is not shown again:")
    click.echo(plaintext)


@token_cli.command("list")
def token_list_cmd() -> None:
    """Every service token: id, name, scopes, prefix, last use, status."""
    from sqlalchemy import select

    from app.extensions import db
    from app.models import ServiceToken

    for t in db.session.scalars(select(ServiceToken).order_by(ServiceToken.id)):
        status = f"revoked {_when(t.revoked_at)}" if t.revoked_at else "active"
        click.echo(f"{t.id}\t{t.name}\t{t.scopes}\t{t.prefix}…\tlast used {_when(t.last_used_at)}\t{status}")


@token_cli.command("revoke")
@click.option("--id", "token_id", type=int, required=True, help="The token's id (from `token list`).")
def token_revoke_cmd(token_id: int) -> None:
    """Revoke a service token at once (its requests get 401); idempotent."""
    from app.services.integrations import revoke_token

    token = revoke_token(token_id)
    if token is None:
        raise click.BadParameter(f"no service token with id {token_id}", param_hint="--id")
    click.echo(f"service token {token.id} ({token.name}) revoked at {_when(token.revoked_at)}")


@endpoint_cli.command("add")
@click.option("--url", required=True, help="Where to POST entitlements.updated events.")
@click.option("--secret", required=True, help="Signing secret shared with the receiver (HMAC-SHA256).")
def endpoint_add_cmd(url: str, secret: str) -> None:
    """Register an endpoint: every change of a tenant's entitlements is POSTed to it, signed, until a 2xx."""
    from app.services.integrations import IntegrationError, add_endpoint

    try:
        endpoint, _secret = add_endpoint(url, secret)
    except IntegrationError as err:
        raise click.BadParameter(err.message, param_hint=f"--{err.field}") from None
    click.echo(f"endpoint {endpoint.id} added: {endpoint.url}")


@endpoint_cli.command("list")
def endpoint_list_cmd() -> None:
    """Every endpoint: id, URL, status and deliveries waiting."""
    from app.services.integrations import overview

    for ep, waiting in overview(limit=0).endpoints:
        click.echo(f"{ep.id}\t{ep.url}\t{'active' if ep.active else 'disabled'}\t{waiting} waiting")


@endpoint_cli.command("disable")
@click.option("--id", "endpoint_id", type=int, required=True)
def endpoint_disable_cmd(endpoint_id: int) -> None:
    """Stop delivering to an endpoint (its queued deliveries wait; new events skip it)."""
    from app.services.integrations import set_endpoint_enabled

    if set_endpoint_enabled(endpoint_id, False) is None:
        raise click.BadParameter(f"no endpoint with id {endpoint_id}", param_hint="--id")
    click.echo(f"endpoint {endpoint_id} disabled")


@integrations_cli.command("deliver")
def deliver_cmd() -> None:
    """Announce pending entitlements changes and deliver what is due now, in this process (no worker needed)."""
    from app.extensions import db
    from app.services.entitlements import publish_changes
    from app.services.integrations import deliver_due

    announced = publish_changes()
    db.session.commit()
    run = deliver_due()
    click.echo(f"announced {announced} changes; delivered {run.delivered}, failed {run.failed}")
    for error in run.errors:
        click.echo(f"  {error}", err=True)
