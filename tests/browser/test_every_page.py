"""Every page, in a real browser: axe-core finds no serious or critical violation, every control is reachable with
the keyboard and shows where focus is, and nothing the page loads is missing (the favicon included).

"Every page" is checked, not assumed: the walk must have opened every HTML page the app routes (CSV, PDF and JSON
endpoints aside), so a page added later without being walked here fails this test.
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app import queue
from app.extensions import db
from app.models import BillingRun
from app.services import clock
from app.services.invoicing import start_billing_run
from app.system_billing.queries import default_period
from tests.factories import PASSWORD, admin_email, at, make_invoice, make_root, make_tenant, utc
from tests.support.browser_pages import axe_problems, keyboard_problems, sign_in
from tests.support.queues import run_jobs

pytestmark = pytest.mark.browser

NOT_PAGES = (".csv", ".pdf", ".json")  # downloads and JSON: no document to check


def html_endpoints(app) -> set[str]:
    """Every endpoint that answers a GET with an HTML page."""
    out = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static" or rule.rule.endswith(NOT_PAGES):
            continue
        if rule.rule.startswith("/api/") or rule.rule in ("/healthz", "/"):
            continue
        out.add(rule.endpoint)
    return out


def check(page, app, path: str, seen: set[str], broken: list[str], problems: dict[str, list[str]]) -> None:
    page.goto(path)
    page.wait_for_load_state("networkidle")
    endpoint, _args = app.url_map.bind("localhost").match(path.split("?")[0])
    seen.add(endpoint)
    found = axe_problems(page) + keyboard_problems(page)
    icon = page.locator("link[rel=icon]").get_attribute("href")
    answer = page.request.get(icon)
    if answer.status != 200 or "svg" not in answer.headers.get("content-type", ""):
        found.append(f"favicon {icon}: {answer.status}")
    if found:
        problems[path] = found
    broken.extend(b for b in list(page.context.broken) if b not in broken)


@pytest.fixture
def watched(page, live_server):
    """The page, recording every failed same-origin request (a 404 favicon, a missing script…)."""
    page.context.broken = []

    def on_response(resp):
        # The page itself may rightly answer 4xx (an expired link); what it loads must not.
        if resp.url.startswith(live_server) and resp.status >= 400 and resp.request.resource_type != "document":
            page.context.broken.append(f"{resp.status} {resp.url}")

    page.context.on("response", on_response)
    return page


def test_every_page_passes_axe_and_the_keyboard_and_loads_whole(watched, app, plans):
    page = watched
    make_root()
    late = make_tenant("Dunmore Roofing", created_at=utc(2020, 1, 1))
    for month in range(1, 9):
        make_invoice(late, date(2026, month, 2), status="paid", number=f"SP-2026-{month:02d}")
    open_inv = make_invoice(late, at(clock.today() - timedelta(days=20)), amount=4900, number="SP-OPEN-1")
    ok = make_tenant("Acme Plumbing", created_at=utc(2020, 1, 1))
    # A run and a force-run that ended (no Stripe here: they fail, and say so), for their pages.
    period = default_period()
    start_billing_run(period)
    queue.enqueue_invoice(ok.id, period, queue.FORCE_RUN)
    run_jobs(("billing",))
    run_id = db.session.scalar(db.select(BillingRun.id))

    seen: set[str] = set()
    broken: list[str] = []
    problems: dict[str, list[str]] = {}
    for path in ("/login", "/password/forgot", "/password/reset/not-a-real-token", "/invitations/not-a-real-token"):
        check(page, app, path, seen, broken, problems)

    sign_in(page, "root@example.com", PASSWORD)
    for path in ("/admin/system-billing", f"/admin/system-billing/tenants/{late.id}",
                 f"/admin/system-billing/runs/{run_id}",
                 f"/admin/system-billing/tenants/{ok.id}/force-run/status?period={period}",
                 "/admin/tenants", "/admin/tenants/new", "/admin/jobs", "/admin/reports/revenue",
                 "/admin/integrations", f"/admin/billing?tenant_id={late.id}"):
        check(page, app, path, seen, broken, problems)
    page.context.clear_cookies()

    sign_in(page, admin_email(late), PASSWORD)
    for path in ("/admin/usage", "/admin/billing", "/admin/billing?page=2", f"/admin/billing/invoices/{open_inv.id}",
                 "/admin/billing/plan", "/admin/api-keys", "/admin/team"):
        check(page, app, path, seen, broken, problems)

    assert not problems, "\n".join(f"{path}:\n  " + "\n  ".join(found) for path, found in problems.items())
    assert not broken, broken
    assert html_endpoints(app) <= seen, f"pages never walked: {sorted(html_endpoints(app) - seen)}"
