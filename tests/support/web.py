"""Talking to the app as a browser does: the CSRF token of a page, signing in through the form, HTMX requests."""
from __future__ import annotations

import re

from tests.factories import PASSWORD

#: The header HTMX sends with each of its requests (the app answers with a fragment).
HX = {"HX-Request": "true"}


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html) or re.search(
        r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(client, email: str, password: str = PASSWORD):
    """Sign a test client in through the login form (any client; most tests use the `auth` fixture)."""
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def page_csrf(client, path: str = "/admin/usage") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


class Browser:
    """A test client whose every request runs in its own app context, as in production.

    The `app` fixture keeps one app context pushed, and Flask reuses it for test requests, so `g` (where
    Flask-Login caches the signed-in user) would otherwise leak from one client to the next.
    """

    def __init__(self, app):
        self.app, self.client = app, app.test_client()

    def __getattr__(self, method):
        def call(*args, **kwargs):
            with self.app.app_context():
                return getattr(self.client, method)(*args, **kwargs)
        return call
