"""The CLI a newcomer and an operator use: tenants create, seed demo."""
from __future__ import annotations

from sqlalchemy import func, select

from app import stripe_gateway
from app.extensions import db
from app.models import ApiKey, Tenant, UsageEvent, UsageRollupDaily, User


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_tenants_create_prints_the_key_once_and_refuses_bad_input(app, plans):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["tenants", "create", "--name", "Zed Co", "--plan", "pro",
                              "--admin-email", "boss@zed.example.com", "--admin-password", "long-enough-pw"])
    assert out.exit_code == 0, out.output
    assert "API key (shown once): sp_live_" in out.output
    assert count(Tenant) == 1 and count(ApiKey) == 1
    bad = runner.invoke(args=["tenants", "create", "--name", "Other", "--plan", "platinum",
                              "--admin-email", "x@y.example.com", "--admin-password", "long-enough-pw"])
    assert bad.exit_code != 0 and "Unknown plan" in bad.output
    assert count(Tenant) == 1


def test_seed_demo_is_idempotent_and_gives_every_tenant_a_stripe_customer(app, emulator):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed", "demo"])
    assert first.exit_code == 0, first.output
    assert "root@example.com" in first.output and "admin@dunmore-roofing.example.com" in first.output
    counts = {m: count(m) for m in (Tenant, User, ApiKey, UsageEvent, UsageRollupDaily)}
    assert counts[Tenant] == 4 and counts[User] == 5 and counts[UsageRollupDaily] > 4 * 3 * 60
    second = runner.invoke(args=["seed", "demo"])
    assert second.exit_code == 0, second.output
    assert {m: count(m) for m in counts} == counts
    tenants = db.session.scalars(select(Tenant)).all()
    assert all(t.stripe_customer_id for t in tenants)
    customers = emulator.stripe_client().v1.customers.list(params={"limit": 100}).data
    assert len(customers) == 4  # the second run created nothing in Stripe either
    decliner = next(t for t in tenants if t.slug == "dunmore-roofing")
    card = stripe_gateway.default_payment_method(decliner.stripe_customer_id)
    pm = emulator.stripe_client().v1.payment_methods.retrieve(card)
    assert pm.card.last4 == "0341"  # the card that attaches but declines every charge
