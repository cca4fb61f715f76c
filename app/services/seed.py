"""Idempotent demo data that tells a true story.

Plans, a root admin, and tenants on each plan (one whose card is declined on charge) that exist since the first
day of their usage: three months of it, up to yesterday. The months before last month are then replayed through
the real invoicing path with injected time — each month invoiced and charged when the nightly invoicing tick
would have done it, a declined charge retried on the days the retry schedule names — and the dunning pass runs as
of today, so the declining tenant sits on the stage its overdue days call for. Last month is left for the user's
first Force-run or Run all.

Running it again changes nothing: tenants, usage days, customers, cards and invoices are each looked up first,
and the invoicing path is idempotent itself.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from sqlalchemy import func, select

from app.extensions import db
from app.models import DunningStage, Invoice, InvoiceStatus, Plan, PlanPrice, Role, Tenant, UsageEvent, User, utcnow
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

DECLINING_CARD = "pm_card_chargeCustomerFail"
DEMO_TENANTS = [
    # name, plan, card (a Stripe test token), daily volume scale
    ("Acme Plumbing", "starter", "pm_card_visa", 1.0),
    ("Brightside HVAC", "pro", "pm_card_visa", 3.0),
    ("Citywide Electric", "enterprise", "pm_card_visa", 12.0),
    ("Dunmore Roofing", "starter", DECLINING_CARD, 0.8),
]
USAGE_MONTHS = 3
#: When the nightly invoicing tick runs after a month ends ("invoices-monthly" in app/schedule.py).
TICK_AFTER_MONTH_END = timedelta(minutes=30)
_EVENT_PREFIX = "seed-"


@dataclass
class SeedReport:
    logins: list[tuple[str, str]] = field(default_factory=list)
    api_keys: dict[str, str] = field(default_factory=dict)
    created_tenants: list[str] = field(default_factory=list)
    story: list[str] = field(default_factory=list)  # what the demo shows, for the person who started it


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


def usage_start(today: date) -> date:
    """The first day of demo usage: the first of the month USAGE_MONTHS before today's."""
    months = today.year * 12 + today.month - 1 - USAGE_MONTHS
    return date(months // 12, months % 12 + 1, 1)


def history_months(today: date) -> list[tuple[int, int]]:
    """The months the demo has invoiced: from the first month of usage up to the month before last."""
    last = clock.previous_month(today)
    months, (y, m) = [], (usage_start(today).year, usage_start(today).month)
    while (y, m) < last:
        months.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return months


def tick_time(year: int, month: int) -> datetime:
    """When the nightly tick invoices a month: just after it ended in the billing zone."""
    return clock.day_start_utc(clock.month_bounds(year, month)[1] + timedelta(days=1)) + TICK_AFTER_MONTH_END


def seed_demo(password: str, *, now: datetime | None = None, with_stripe: bool = True,
              before_stripe: Callable[[], None] | None = None) -> SeedReport:
    """Seed everything the demo needs and replay its invoicing history; running it again changes nothing.

    `before_stripe` is called once the local data is written and before the first Stripe request (the CLI
    checks there that Stripe answers). Stripe failures raise GatewayError; everything written before stays.
    """
    now = now or utcnow()
    today = clock.today(now)
    report = SeedReport()
    seed_plans()
    root_email = "root@example.com"
    if db.session.scalar(select(User.id).where(User.email == root_email)) is None:
        create_user(root_email, password, Role.ROOT_ADMIN)
        db.session.commit()
    report.logins.append((root_email, "root admin"))

    start = usage_start(today)
    since = clock.day_start_utc(start)  # tenants exist from the first moment of their usage
    tenants: list[tuple[Tenant, str, float]] = []
    for name, plan, card, scale in DEMO_TENANTS:
        slug = slugify(name)
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
        admin_email = f"admin@{slug}.example.com"
        if tenant is None:
            tenant = Tenant(name=name, slug=slug, plan=plan, billing_email=admin_email, created_at=since,
                            updated_at=since)
            db.session.add(tenant)
            db.session.flush()
            create_user(admin_email, password, Role.TENANT_ADMIN, tenant)
            report.api_keys[slug] = issue_api_key(tenant, label="demo")
            report.created_tenants.append(slug)
        elif tenant.created_at > since:  # seeded by an older version, "created" after its own usage
            tenant.created_at = since
        db.session.commit()
        declines = card == DECLINING_CARD
        report.logins.append((admin_email, f"tenant admin, {name} ({plan}{', card declines' if declines else ''})"))
        tenants.append((tenant, card, scale))
    _seed_usage([(t, scale) for t, _card, scale in tenants], start, today, now)

    if not with_stripe:
        report.story.append("No Stripe (--no-stripe): no customers, cards or invoices were made.")
        return report
    if before_stripe is not None:
        before_stripe()
    recreated = False
    for tenant, card, _scale in tenants:
        recreated |= _ensure_demo_card(tenant, card)
    ids = [t.id for t, _card, _scale in tenants]
    replay_history(ids, history_months(today), now=now)
    from app.services.dunning import run_pass

    run_pass(today, now=now)
    report.story = _story([t for t, _card, _scale in tenants], today, recreated)
    return report


# -- usage -------------------------------------------------------------------------------------------------

def _seed_usage(tenants: list[tuple[Tenant, float]], start: date, today: date, now: datetime) -> None:
    """Usage from `start` up to yesterday, as raw events, then rolled up; only days not seeded yet."""
    from app.services.usage import record_events, rollup_day

    tz = clock.billing_tz()
    new_days: set[date] = set()
    for tenant, scale in tenants:
        seeded = set(db.session.scalars(
            select(UsageEvent.day).distinct()
            .where(UsageEvent.tenant_id == tenant.id, UsageEvent.client_event_id.startswith(_EVENT_PREFIX))))
        events = []
        day = start
        while day < today:
            if day not in seeded:
                events.extend(_day_events(tenant.slug, scale, day, tz))
                new_days.add(day)
            day += timedelta(days=1)
        for i in range(0, len(events), 1000):
            record_events(tenant, events[i:i + 1000], now=now)
    for day in sorted(new_days):
        rollup_day(day, now=now)


def _day_events(slug: str, scale: float, day: date, tz) -> list[dict]:
    """One tenant's usage events of one day (two per metric); the same every time for that tenant and day."""
    rng = random.Random(int(hashlib.sha256(f"{slug}:{day.isoformat()}".encode()).hexdigest()[:8], 16))
    weekday = day.weekday() < 5
    events = []
    for metric, qty in (("voice_minutes", 60), ("sms_outbound", 45), ("sms_inbound", 70)):
        q = int(qty * scale * (1.0 if weekday else 0.3) * rng.uniform(0.6, 1.4))
        for part in range(2):
            at = datetime.combine(day, time(9 + part * 6, rng.randint(0, 59)), tzinfo=tz).astimezone(timezone.utc)
            events.append({"id": f"{_EVENT_PREFIX}{day.isoformat()}-{metric}-{part}", "metric": metric,
                           "quantity": q // 2 + (q % 2 if part else 0), "occurred_at": at})
    return events


# -- Stripe: customers, cards and the invoicing history ------------------------------------------------------

def _ensure_demo_card(tenant: Tenant, card: str) -> bool:
    """Give the demo tenant a Stripe customer and a default card (idempotent); True if its customer was re-made.

    The local emulator forgets everything when it stops without its state file (instance/emulator-state.json): a customer Stripe no longer knows is made again.
    """
    from app import stripe_gateway
    from app.services.customers import ensure_customer

    recreated = False
    customer_id = ensure_customer(tenant.id)
    try:
        card_now = stripe_gateway.default_payment_method(customer_id)
    except stripe_gateway.GatewayError as err:
        if not err.missing_customer:
            raise
        # A fresh emulator has forgotten the creation's idempotency key too, so the usual call makes a new one.
        tenant.stripe_customer_id = None
        db.session.commit()
        customer_id, card_now, recreated = ensure_customer(tenant.id), None, True
    if card_now is None:
        stripe_gateway.attach_default_card(customer_id, card, key=f"demo-card-{tenant.id}-{customer_id}-{card}")
    return recreated


def replay_history(tenant_ids: list[int], months: list[tuple[int, int]], *, now: datetime) -> None:
    """Invoice and charge the tenants for past months as the nightly tick would have, retries included.

    Each month runs at its tick time through invoicing.invoice_and_charge; declined charges are retried on the
    days their retry schedule names (payments.charge_invoice, as the hourly retry job does), up to `now`.
    A payment the replay made is recorded at the replayed time: Stripe's clock cannot be moved back, so its own
    payment time is today's. Raises GatewayError (unreachable) when Stripe stops answering.
    """
    from app.services import invoicing

    for year, month in months:
        at = tick_time(year, month)
        if at > now:
            break
        _retry_due(tenant_ids, before=at)
        period = invoicing.period_key(year, month)
        invoicing.generate_invoices(year, month, now=at, tenant_ids=tenant_ids)
        for tenant_id in tenant_ids:
            outcome = invoicing.invoice_and_charge(tenant_id, period, trigger="scheduled", now=at)
            if outcome.code == invoicing.Reason.STRIPE_UNREACHABLE:
                from app.stripe_gateway import GatewayError, Outcome

                raise GatewayError(Outcome.RETRY_LATER, outcome.reason or "", unreachable=True)
            if outcome.payment == "succeeded":
                _stamp_payment(outcome.invoice_id, at)
    _retry_due(tenant_ids, before=now)


def _retry_due(tenant_ids: list[int], *, before: datetime) -> None:
    """Make every scheduled charge retry of these tenants due before `before`, each at its scheduled time."""
    from app.services import payments

    tried: set[tuple[int, datetime]] = set()
    while True:
        invoice = db.session.scalar(
            select(Invoice).where(Invoice.tenant_id.in_(tenant_ids), Invoice.status == InvoiceStatus.OPEN,
                                  Invoice.next_payment_attempt_at <= before, Invoice.hard_decline.is_(False),
                                  Invoice.stripe_invoice_id.is_not(None))
            .order_by(Invoice.next_payment_attempt_at, Invoice.id).limit(1))
        if invoice is None or (invoice.id, invoice.next_payment_attempt_at) in tried:
            return
        at = invoice.next_payment_attempt_at
        tried.add((invoice.id, at))
        attempt = payments.charge_invoice(invoice.id, trigger="retry", now=at)
        if attempt.status == "succeeded":
            _stamp_payment(invoice.id, at)
        elif attempt.status in (payments.SKIPPED, "error"):
            return  # Stripe trouble, not a decline: the app's own retry job takes it from here


def _stamp_payment(invoice_id: int | None, at: datetime) -> None:
    invoice = db.session.get(Invoice, invoice_id) if invoice_id else None
    if invoice is not None and invoice.status == InvoiceStatus.PAID and invoice.paid_at and invoice.paid_at > at:
        invoice.paid_at = at
        db.session.commit()


# -- what the demo shows ------------------------------------------------------------------------------------

def _story(tenants: list[Tenant], today: date, recreated: bool) -> list[str]:
    """A few lines telling the person who seeded what is there and what to click first."""
    from app.services.invoicing import period_key

    months = history_months(today)
    ids = [t.id for t in tenants]
    db.session.expire_all()
    counts = dict(db.session.execute(
        select(Invoice.status, func.count()).where(Invoice.tenant_id.in_(ids), Invoice.status != InvoiceStatus.VOID)
        .group_by(Invoice.status)).all())
    lines = []
    if months:
        span = " to ".join(sorted({period_key(*months[0]), period_key(*months[-1])}))
        lines.append(f"Invoiced history ({span}): {counts.get('paid', 0)} paid, {counts.get('open', 0)} open.")
    for tenant in tenants:
        db.session.refresh(tenant)
        if tenant.dunning_stage != DunningStage.OK:
            lines.append(f"In dunning: {tenant.name}, {tenant.overdue_days} days overdue, stage "
                         f"{tenant.dunning_stage} (its admin sees the overdue banner).")
    year, month = clock.previous_month(today)
    lines.append(f"Left for you: {period_key(year, month)}. Sign in as root@example.com, open System billing "
                 f"and press \"Run all tenants\" (or Force-run one tenant).")
    if recreated:
        lines.append("The Stripe emulator had been restarted: demo customers were made again; invoices from "
                     "before exist only here. For a fresh story, delete instance/servicepro.db and start again.")
    return lines
