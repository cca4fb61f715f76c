"""The CLI a newcomer and an operator use: tenants create, seed demo, and what they say when nothing happens."""
from __future__ import annotations

from sqlalchemy import func, select

from app import stripe_gateway
from app.extensions import db
from app.models import ApiKey, Invoice, Tenant, UsageEvent, UsageRollupDaily, User
from tests.factories import make_tenant, tenant_with_card, utc


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_tenants_create_prints_the_key_once_and_refuses_bad_input(runner, plans):
    out = runner.invoke(args=["tenants", "create", "--name", "Zed Co", "--plan", "pro",
                              "--admin-email", "boss@zed.example.com", "--admin-password", "long-enough-pw"])
    assert out.exit_code == 0, out.output
    assert "API key (shown once): sp_live_" in out.output
    assert count(Tenant) == 1 and count(ApiKey) == 1
    bad = runner.invoke(args=["tenants", "create", "--name", "Other", "--plan", "platinum",
                              "--admin-email", "x@y.example.com", "--admin-password", "long-enough-pw"])
    assert bad.exit_code != 0 and "Unknown plan" in bad.output
    assert count(Tenant) == 1


def test_seed_demo_is_idempotent_and_gives_every_tenant_a_stripe_customer(runner, emulator):
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


# -- Stripe unreachable: one line naming the fix, exit 1, local data kept ----------------------------------------

UNREACHABLE = ("Error: Stripe is not reachable at http://127.0.0.1:9: start `python -m stripe_emulator`, "
               "or set STRIPE_SECRET_KEY")


def stripe_at(app, url: str) -> None:
    app.config["STRIPE_API_BASE"] = url
    app.extensions.pop("stripe_client", None)  # the gateway caches its client per app


def test_seed_demo_with_stripe_unreachable_names_the_fix_and_keeps_the_local_data(app, runner, emulator,
                                                                                   fast_stripe_retries):
    stripe_at(app, "http://127.0.0.1:9")  # nothing listens there
    out = runner.invoke(args=["seed", "demo"])
    assert out.exit_code == 1
    assert out.output.strip() == UNREACHABLE  # one line, no traceback
    assert count(Tenant) == 4 and count(User) == 5 and count(UsageEvent) > 0  # written before Stripe: kept
    assert count(Invoice) == 0 and not any(t.stripe_customer_id for t in db.session.scalars(select(Tenant)))

    stripe_at(app, emulator.url)  # Stripe is back: the same command carries on from there
    again = runner.invoke(args=["seed", "demo"])
    assert again.exit_code == 0, again.output
    assert count(Tenant) == 4 and count(Invoice) == 8


def test_sync_customers_and_run_invoices_with_stripe_unreachable_say_one_line(runner, plans, fast_stripe_retries):
    tenant = make_tenant(created_at=utc(2026, 1, 1))
    for args in (["billing", "sync-customers"], ["billing", "run-invoices", "--period", "2026-10"]):
        out = runner.invoke(args=args)
        assert out.exit_code == 1, out.output
        assert out.output.strip() == UNREACHABLE, args
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).billing_error is None  # the operator's setup, not the tenant's fault
    assert count(Invoice) == 0


# -- every "nothing happened" says why ---------------------------------------------------------------------------

def test_run_invoices_counts_skips_per_reason(runner, plans, emulator):
    early = tenant_with_card(created_at=utc(2026, 1, 1))
    late = tenant_with_card(created_at=utc(2026, 11, 2))
    first = runner.invoke(args=["billing", "run-invoices", "--period", "2026-10"])
    assert first.exit_code == 0, first.output
    assert "2026-10: invoiced 1 (paid 1), skipped 1 (created after the period 1), failed 0" in first.output

    # The case the CLI used to call "skipped (already done)": a tenant that did not exist in the period.
    only_late = runner.invoke(args=["billing", "run-invoices", "--period", "2026-10", "--tenant", str(late.id)])
    assert only_late.exit_code == 0, only_late.output
    assert "2026-10: invoiced 0, skipped 1 (created after the period 1), failed 0" in only_late.output
    assert "already" not in only_late.output

    again = runner.invoke(args=["billing", "run-invoices", "--period", "2026-10"])
    assert "invoiced 0, skipped 2 (already invoiced 1, created after the period 1), failed 0" in again.output
    assert [i.tenant_id for i in db.session.scalars(select(Invoice))] == [early.id]
