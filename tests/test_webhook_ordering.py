"""Webhooks in any order, any number of times, end in the same state as in-order delivery.

Twenty tenants with three overdue invoices each live through real Stripe histories in the emulator — paid,
declined, declined then paid with a new card, voided, marked uncollectible, authentication required then paid on
the hosted page. Our side only learns about it from webhooks. Run 1: the emulator delivers every event in order to
the running app. Run 2: the same state is restored and the very same events (re-signed) are delivered shuffled,
partly duplicated, from several threads at once. Both runs must end in one and the same state, and it must be
Stripe's.
"""
from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, update

from app.extensions import db, rq
from app.models import DunningEvent, Invoice, OutboxEmail, PaymentAttempt, Tenant, WebhookEvent, utcnow
from app.services import dunning
from app.services.dunning import stage_for
from tests.factories import open_invoice_in_stripe, tenant_with_card
from tests.support.queues import run_jobs
from tests.webhook_support import http, month_before, signed

pytestmark = pytest.mark.usefixtures("fast_stripe_retries")

KINDS = ("pays_all", "declined_then_new_card", "declined_stays", "void_uncollectible_pay", "auth_then_hosted")
CARDS = {"pays_all": "pm_card_visa", "declined_then_new_card": "pm_card_chargeCustomerFail",
         "declined_stays": "pm_card_chargeCustomerFail", "void_uncollectible_pay": "pm_card_visa",
         "auth_then_hosted": "pm_card_authenticationRequired"}
OVERDUE = (80, 35, 20)  # days each tenant's three invoices are past due: restricted, suspended, reminder alone
STATE_TABLES = (Invoice.__table__, Tenant.__table__)


def build_world(emulator, enable_webhooks) -> list[tuple[int, str, list[int]]]:
    """Tenants with cards, then (webhooks on) three open invoices each and their Stripe histories."""
    now = utcnow()
    today = now.date()
    tenants = []
    for i in range(20):
        kind = KINDS[i % len(KINDS)]
        tenants.append((tenant_with_card(CARDS[kind], created_at=now - timedelta(days=200)), kind))
    enable_webhooks()
    world = []
    for tenant, kind in tenants:
        invoices = []
        for months_back, days in zip((3, 2, 1), OVERDUE):
            year, month = month_before(today, months_back)
            invoice = open_invoice_in_stripe(tenant, year, month, now=now - timedelta(days=days))
            invoice.issued_at = invoice.due_at = now - timedelta(days=days)
            invoices.append(invoice)
        db.session.commit()
        world.append((tenant.id, kind, [inv.id for inv in invoices], [inv.stripe_invoice_id for inv in invoices]))
    client = emulator.stripe_client()

    def pay(stripe_id: str, **params) -> None:
        try:
            client.v1.invoices.pay(stripe_id, params={"off_session": True, **params})
        except Exception:  # noqa: BLE001 - declines are part of the history
            pass

    for tenant_id, kind, _ids, (first, second, third) in world:
        if kind == "pays_all":
            for sid in (first, second, third):
                pay(sid)
        elif kind == "declined_then_new_card":
            pay(first)
            pay(second)
            customer = db.session.get(Tenant, tenant_id).stripe_customer_id
            emulator.set_default_payment_method(customer, "pm_card_visa")
            for sid in (first, second, third):
                pay(sid)
        elif kind == "declined_stays":
            for sid in (first, second, third):
                pay(sid)
        elif kind == "void_uncollectible_pay":
            client.v1.invoices.void_invoice(first)
            client.v1.invoices.mark_uncollectible(second)
            pay(third)
        elif kind == "auth_then_hosted":
            pay(third)  # off-session: the bank wants authentication
            pay(third, payment_method="pm_card_visa")  # the customer pays on the hosted page instead
            pay(first, payment_method="pm_card_visa")
    return [(tenant_id, kind, ids) for tenant_id, kind, ids, _sids in world]


def snapshot() -> dict:
    db.session.expire_all()
    base = {t.name: [dict(r._mapping) for r in db.session.execute(select(t))] for t in STATE_TABLES}
    base["outbox_max"] = db.session.scalar(select(func.coalesce(func.max(OutboxEmail.id), 0)))
    base["dunning_max"] = db.session.scalar(select(func.coalesce(func.max(DunningEvent.id), 0)))
    db.session.rollback()
    return base


def restore(base: dict) -> None:
    """Put invoices and tenants back as they were before any event was processed; forget every event."""
    for table in STATE_TABLES:
        for row in base[table.name]:
            db.session.execute(update(table).where(table.c.id == row["id"]).values(**row))
    db.session.execute(delete(WebhookEvent))
    db.session.execute(delete(PaymentAttempt))
    db.session.execute(delete(OutboxEmail).where(OutboxEmail.id > base["outbox_max"]))
    db.session.execute(delete(DunningEvent).where(DunningEvent.id > base["dunning_max"]))
    db.session.commit()
    for key in rq.connection.scan_iter("servicepro:card-retry:*"):
        rq.connection.delete(key)


def final_state() -> dict:
    db.session.expire_all()
    invoices = {inv.id: (inv.status, inv.amount_paid, inv.paid_at, inv.last_payment_error, inv.last_payment_error_code,
                         inv.hard_decline, inv.disputed, inv.next_payment_attempt_at, inv.hosted_invoice_url)
                for inv in db.session.scalars(select(Invoice))}
    tenants = {t.id: (t.overdue_days, t.dunning_stage, t.disputed, t.billing_error)
               for t in db.session.scalars(select(Tenant))}
    # Stage emails depend on the path taken (which invoice was recorded paid first); the invoice emails do not.
    mails = sorted((m.tenant_id, m.kind, m.dedupe_key) for m in db.session.scalars(
        select(OutboxEmail).where(OutboxEmail.kind.in_(("payment_failed", "action_required")))))
    db.session.rollback()
    return {"invoices": invoices, "tenants": tenants, "mails": mails}


def processed_once() -> None:
    db.session.expire_all()
    rows = db.session.scalars(select(WebhookEvent)).all()
    assert rows and all(r.attempts == 1 for r in rows), [(r.type, r.attempts) for r in rows if r.attempts != 1]
    assert {r.status for r in rows} <= {"processed", "ignored"}, [(r.type, r.status, r.last_error) for r in rows
                                                                   if r.status not in ("processed", "ignored")]
    db.session.rollback()


@pytest.mark.slow
def test_shuffled_duplicated_concurrent_delivery_ends_like_in_order_delivery(app, plans, emulator, live_server, hook):
    world = build_world(emulator, hook)
    dunning.run_pass()  # before any event is processed every tenant is restricted (80 days overdue)
    assert {t.dunning_stage for t in db.session.scalars(select(Tenant))} == {"restricted"}
    base = snapshot()

    # Run 1: the emulator's own deliveries, in the order Stripe created the events, processed in that order.
    assert emulator.flush_webhooks(timeout=120)
    events = [e for e in emulator.events() if e["type"] not in ("customer.created",)]
    events = [e for e in events if e["id"] in {r.stripe_event_id for r in db.session.scalars(select(WebhookEvent))}]
    assert len(events) >= 200
    assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == len(events)
    emulator.set_webhook(None)
    run_jobs()
    processed_once()
    in_order = final_state()

    # It is Stripe's state, and the tenants are where their remaining open invoices put them.
    client = emulator.stripe_client()
    th = dunning.thresholds()
    for tenant_id, kind, ids in world:
        for invoice_id in ids:
            ours = db.session.get(Invoice, invoice_id)
            assert ours.status == client.v1.invoices.retrieve(ours.stripe_invoice_id).status, (kind, invoice_id)
        still_open = [in_order["invoices"][i] for i in ids if in_order["invoices"][i][0] == "open"]
        oldest_due = max((OVERDUE[k] for k, i in enumerate(ids) if in_order["invoices"][i][0] == "open"), default=0)
        days, stage = in_order["tenants"][tenant_id][:2]
        assert days in (oldest_due, oldest_due + 1)  # a run across midnight is a day later
        assert stage == stage_for(days, exempt=False, reminder_days=th.reminder, suspend_days=th.suspend,
                                  restrict_days=th.restrict)
        expected_stage = {"declined_stays": "restricted", "auth_then_hosted": "suspended"}.get(kind, "ok")
        assert stage == expected_stage, (kind, days, still_open)
    assert sum(1 for m in in_order["mails"] if m[1] == "payment_failed") == 3 * 4  # declined_stays: 4 tenants

    # Run 2: the same events, from the same starting state, shuffled, a third of them delivered twice or thrice.
    restore(base)
    assert final_state() != in_order
    rng = random.Random(20261124)
    deliveries = list(events) + rng.sample(events, len(events) // 3) + rng.sample(events, len(events) // 10)
    rng.shuffle(deliveries)
    url, secret = f"{live_server}/webhooks/stripe", app.config["STRIPE_WEBHOOK_SECRET"]
    answers: list = []
    lock = threading.Lock()

    def deliver(chunk):
        session = http()
        for event in chunk:
            body, headers = signed(event, secret)
            resp = session.post(url, data=body, headers=headers, timeout=30)
            with lock:
                answers.append((event["id"], resp.status_code, resp.json().get("duplicate")))

    threads = [threading.Thread(target=deliver, args=(deliveries[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(answers) == len(deliveries) and {status for _id, status, _dup in answers} == {200}
    assert sum(1 for _id, _status, dup in answers if dup is False) == len(events)
    assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == len(events)
    # Workers take them in the (shuffled) order they arrived.
    run_jobs()
    processed_once()
    assert final_state() == in_order
