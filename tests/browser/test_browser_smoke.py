"""A real browser signs in and sees the product."""
from __future__ import annotations

import pytest

from tests.factories import PASSWORD, admin_email, make_tenant
from tests.support.browser_pages import screenshot, sign_in

pytestmark = pytest.mark.browser


def test_tenant_admin_signs_in_and_sees_usage_with_htmx_loaded(page, plans):
    tenant = make_tenant("Acme Plumbing")
    sign_in(page, admin_email(tenant), PASSWORD)
    assert page.url.endswith("/admin/usage")
    assert page.get_by_role("heading", name="Usage · Acme Plumbing").is_visible()
    assert page.evaluate("typeof htmx !== 'undefined' && htmx.version") == "2.0.11"
    screenshot(page, "usage")


def test_wrong_password_shows_message(page, plans):
    tenant = make_tenant()
    sign_in(page, admin_email(tenant), "wrong-password")
    assert page.get_by_role("alert").inner_text().startswith("That email and password")
