"""Helpers for the Playwright tests: signing in, screenshots, "the page equals a fresh reload of itself", no
reload happened, and the accessibility checks (axe-core and the keyboard)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def sign_in(page, email: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("networkidle")


def screenshot(page, name: str) -> str:
    out = os.environ.get("SCREENSHOT_DIR") or os.path.join(tempfile.gettempdir(), "servicepro-screens")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path


DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def save_screenshot(page, name: str) -> None:
    """A full-page screenshot for the README: into docs/screenshots/ when UPDATE_SCREENSHOTS=1 (else a temp dir)."""
    path = screenshot(page, name)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
    assert os.path.getsize(path) > 10_000


# -- "the page equals a fresh reload of itself" ----------------------------------------------------------------------

# What a person reads of a page: the main content (plus the banner and the navigation, which actions change too),
# whitespace collapsed. One-time news is left out — flash messages and results marked data-transient (the answer to
# "Pay now") — since a reload rightly does not repeat them.
PAGE_TEXT = """() => {
  const read = (sel) => {
    const el = document.querySelector(sel);
    if (!el) { return ''; }
    const copy = el.cloneNode(true);
    copy.querySelectorAll('.flash, [data-transient], #htmx-notice, template, script').forEach((e) => e.remove());
    return copy.textContent.replace(/\\s+/g, ' ').trim();
  };
  return {main: read('#main'), banner: read('#banner-slot'), nav: read('#main-nav')};
}"""

SETTLED = "() => !document.querySelector('.htmx-request, [hx-trigger^=\"every\"]')"


def page_text(page) -> dict:
    return page.evaluate(PAGE_TEXT)


def fresh_text(page) -> dict:
    """The same address opened anew in another tab of the same session (the page under test is not reloaded)."""
    other = page.context.new_page()
    try:
        other.goto(page.url)
        other.wait_for_load_state("networkidle")
        return page_text(other)
    finally:
        other.close()


def assert_equals_reload(page, timeout_s: float = 10.0) -> None:
    """The page, as the last action left it, reads exactly like a fresh load of its address."""
    import time

    page.wait_for_function(SETTLED, timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    fresh = fresh_text(page)
    while True:
        page.wait_for_function(SETTLED, timeout=timeout_s * 1000)
        live = page_text(page)
        if live == fresh or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a refresh may still be on its way
    for part in ("main", "banner", "nav"):
        assert live[part] == fresh[part], _diff(part, live[part], fresh[part])


def _diff(part: str, live: str, fresh: str) -> str:
    import difflib

    a, b = live.split(" "), fresh.split(" ")
    out = [f"{part}: the page differs from a fresh load of it"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b).get_opcodes():
        if tag != "equal":
            page, load = " ".join(a[max(0, i1 - 6):i2 + 3]), " ".join(b[max(0, j1 - 6):j2 + 3])
            out.append(f"  page: …{page}…\n  load: …{load}…")
    return "\n".join(out)


def mark_no_reload(page) -> None:
    page.evaluate("window.__sameDocument = true")


def assert_no_reload(page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


# -- accessibility: axe-core (npm devDependency, installed by `scripts/setup.sh test`) and the keyboard ---------------

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"


def axe_problems(page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now, one line per rule and element."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        assert AXE.is_file(), f"{AXE} is missing: run `npm ci` (scripts/setup.sh test does)"
        page.evaluate(AXE.read_text())  # evaluated by the driver, so the page's CSP does not block it
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                         nodes: v.nodes.map((n) => n.target.join(' '))}));
    }""")
    return [f"{v['impact']}: {v['id']} ({v['help']}) at {', '.join(v['nodes'][:5])}"
            for v in result if v["impact"] in ("serious", "critical")]


# Every control a person can operate: links, buttons, fields, disclosure summaries, anything given a tab stop.
CONTROLS = """() => [...document.querySelectorAll(
    'a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select:not([disabled]), ' +
    'textarea:not([disabled]), summary, [tabindex]:not([tabindex="-1"])')]
  .filter((el) => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden'
      && !el.closest('details:not([open]) > :not(summary)');
  })
  .map((el) => { el.dataset.kbd = el.dataset.kbd || Math.random().toString(36).slice(2); return el.dataset.kbd; })"""

FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) { return null; }
  const s = getComputedStyle(el);
  const ring = (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';
  const name = (el.innerText || el.value || el.id || el.tagName).trim().slice(0, 40);
  return {kbd: el.dataset.kbd || null, ring: ring, name: name};
}"""


def keyboard_problems(page, max_tabs: int = 400) -> list[str]:
    """Tab through the page from the top: every visible control must take focus, with a visible focus ring."""
    wanted = page.evaluate(CONTROLS)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("Tab")  # from the top of the document
    seen, problems, first, last = set(), [], None, None
    for _ in range(min(max_tabs, 4 * len(wanted) + 5)):  # date fields take a Tab per part
        now = page.evaluate(FOCUSED)
        if now is None or (now["kbd"] == first and last != first):
            break  # past the last control, or round the page once
        first = first or now["kbd"]
        if now["kbd"] not in seen and not now["ring"]:
            problems.append(f"no visible focus on {now['name']!r}")
        seen.add(now["kbd"])
        last = now["kbd"]
        page.keyboard.press("Tab")
    missed = [k for k in wanted if k not in seen]
    if missed:
        names = page.evaluate("(ids) => ids.map((k) => { const e = document.querySelector(`[data-kbd='${k}']`); "
                              "return e ? e.outerHTML.slice(0, 120) : k; })", missed[:5])
        problems.append(f"{len(missed)} control(s) never reached with Tab: {names}")
    return problems
