"""Page or fragment: the whole page for a browser, only the component that changed for htmx (django-htmx's
`for_htmx`), and the event that tells the rest of the page to follow.

The same endpoint serves both: without JavaScript a form posts and gets a page (or a redirect), with htmx it gets
the component's partial — rendered from the same view model, so the two never disagree.
"""
from __future__ import annotations

from flask import Response, make_response, render_template

from app.extensions import htmx

#: The HX-Trigger event an answer raises when billing figures changed: every region of the page marked
#: `data-live` then refreshes from one fresh render of the page (app/static/app.js), so the page equals a reload.
BILLING_CHANGED = "billing-changed"


def wants_fragment(target: str | None = None) -> bool:
    """Whether to answer with a component only: an htmx request (aimed at the element `target`, when given).

    A history restore (the back button after htmx's cache missed) always gets the whole page.
    """
    return bool(htmx) and not htmx.history_restore_request and (target is None or htmx.target == target)


def for_htmx(page: str, fragment: str, *, status: int = 200, changed: bool = False, **context) -> Response:
    """Render the whole `page`, or only its component `fragment` when wants_fragment(); both read `context`.

    `changed`: the component's answer also tells the page that billing figures changed (see BILLING_CHANGED).
    """
    partial = wants_fragment()
    resp = make_response(render_template(fragment if partial else page, **context), status)
    return billing_changed(resp) if changed and partial else resp


def billing_changed(resp) -> Response:
    """Tell the page that billing figures changed: its live regions (data-live) refresh from a fresh render."""
    resp = make_response(resp)
    resp.headers["HX-Trigger"] = BILLING_CHANGED
    return resp
