"""Reading a page the way a person does: its visible text, one row of a table."""
from __future__ import annotations

import re


def text_of(resp) -> str:
    """The visible text of a response (tags dropped, whitespace collapsed)."""
    html = resp.get_data(as_text=True)
    html = re.sub(r"<(script|style|head)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&").replace("&#39;", "'").strip()


def text_of_html(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def row_html(html: str, element_id: str) -> str:
    m = re.search(rf'<tr id="{element_id}".*?</tr>', html, flags=re.S)
    assert m, f"no #{element_id} in the page"
    return m.group(0)
