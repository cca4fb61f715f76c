"""Idempotent demo data: plans, a root admin, tenants on each plan (one with a card declined on charge)."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from sqlalchemy import select

from app.extensions import db
from app.models import Plan, PlanPrice, Role, Tenant, User
from app.services import clock
from app.services.tenants import create_user, issue_api_key, slugify

PLANS = [
    # code, name, monthly fee (cents), {metric: (included, unit price in dollars)}
    ("starter", "Starter", 2900, {"voice_minutes": (500, "0.0150"), "sms_outbound": (500, "0.0125"),
                                  "sms_inbound": (1000, "0.0050")}),
    ("pro", "Pro", 9900, {"voice_minutes": (3000, "0.0120"), "sms_outbound": (3000, "0.0095"),
                          "sms_inbound": (5000, "0.0040")}),
    ("enterprise", "Enterprise", 49900, {"voice_minutes": (20000, "0.0090"), "sms_outbound": (20000, "0.0075"),
                                         "sms_inbound": (50000, "0.0025")}),
]

DEMO_TENANTS = [
    # name, plan, card (None = no card yet), daily volume scale
    ("Acme Plumbing", "starter", "pm_card_visa", 1.0),
    ("Brightside HVAC", "pro", "pm_card_visa", 3.0),
    ("Citywide Electric", "enterprise", "pm_card_visa", 12.0),
    ("Dunmore Roofing", "starter", "pm_card_chargeCustomerFail", 0.8),
]


@dataclass
class SeedReport:
    logins: list[tuple[str, str]] = field(default_factory=list)
    api_keys: dict[str, str] = field(default_factory=dict)
    created_tenants: list[str] = field(default_factory=list)


def seed_plans() -> None:
    """Create or update the standard plans and their prices."""
    for code, name, fee, prices in PLANS:
        plan = db.session.scalar(select(Plan).where(Plan.code == code))
        if plan is None:
            plan = Plan(code=code, name=name, currency="usd", monthly_fee=fee)
            db.session.add(plan)
            db.session.flush()
        existing = {p.metric: p for p in plan.prices}
        for metric, (included, unit) in prices.items():
            if metric not in existing:
                db.session.add(PlanPrice(plan_code=code, metric=metric, included=included,
                                         unit_price=Decimal(unit)))
    db.session.commit()


def seed_demo(password: str, *, today: date | None = None, with_stripe: bool = True) -> SeedReport:
    """Seed everything the demo needs; running it again changes nothing."""
    report = SeedReport()
    seed_plans()
    root_email = "root@example.com"
    if db.session.scalar(select(User.id).where(User.email == root_email)) is None:
        create_user(root_email, password, Role.ROOT_ADMIN)
        db.session.commit()
    report.logins.append((root_email, "root admin"))
    today = today or clock.today()
    for name, plan, card, scale in DEMO_TENANTS:
        slug = slugify(name)
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
        admin_email = f"admin@{slug}.example.com"
        if tenant is None:
            tenant = Tenant(name=name, slug=slug, plan=plan, billing_email=admin_email)
            db.session.add(tenant)
            db.session.flush()
            create_user(admin_email, password, Role.TENANT_ADMIN, tenant)
            report.api_keys[slug] = issue_api_key(tenant, label="demo")
            db.session.commit()
            report.created_tenants.append(slug)
            _seed_usage(tenant, scale, today)
        report.logins.append((admin_email, f"tenant admin, {name} ({plan}{', card declines' if 'Fail' in card else ''})"))
        if with_stripe:
            _ensure_demo_card(tenant, card)
    return report


def _seed_usage(tenant: Tenant, scale: float, today: date) -> None:
    """Three months of usage up to yesterday, as raw events, then rolled up."""
    from app.services.usage import record_events, rollup_day

    rng = random.Random(int(hashlib.sha256(tenant.slug.encode()).hexdigest()[:8], 16))
    y, m = today.year, today.month
    for _ in range(3):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    start = date(y, m, 1)
    tz = clock.billing_tz()
    day = start
    events = []
    while day < today:
        weekday = day.weekday() < 5
        base = {"voice_minutes": 60, "sms_outbound": 45, "sms_inbound": 70}
        for metric, qty in base.items():
            q = int(qty * scale * (1.0 if weekday else 0.3) * rng.uniform(0.6, 1.4))
            for part in range(2):
                at = datetime.combine(day, time(9 + part * 6, rng.randint(0, 59)), tzinfo=tz).astimezone(timezone.utc)
                events.append({"id": f"seed-{day.isoformat()}-{metric}-{part}", "metric": metric,
                               "quantity": q // 2 + (q % 2 if part else 0), "occurred_at": at})
        day += timedelta(days=1)
    for i in range(0, len(events), 1000):
        record_events(tenant, events[i:i + 1000])
    day = start
    while day < today:
        rollup_day(day)
        day += timedelta(days=1)


def _ensure_demo_card(tenant: Tenant, card: str) -> None:
    """Give the demo tenant a Stripe customer and a default card (idempotent)."""
    from app import stripe_gateway
    from app.services.customers import ensure_customer

    customer_id = ensure_customer(tenant.id)
    if stripe_gateway.default_payment_method(customer_id) is None:
        stripe_gateway.attach_default_card(customer_id, card, key=f"demo-card-{tenant.id}-{card}")
