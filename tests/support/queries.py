"""Counting the SQL statements a block of code, or one request, sends to the database."""
from __future__ import annotations

from contextlib import contextmanager

from flask import g
from sqlalchemy import event

from app.extensions import db


@contextmanager
def counting_queries():
    """Count the SQL statements sent to the database inside the block."""
    seen: list[str] = []

    def before(conn, cursor, statement, params, context, executemany):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def fresh_request_queries(client, url: str, headers: dict | None = None) -> tuple[int, str]:
    """Statements one request makes, as a real request would: the signed-in user is loaded again."""
    g.pop("_login_user", None)  # the test's shared app context would otherwise cache the user between requests
    db.session.expire_all()
    with counting_queries() as seen:
        resp = client.get(url, headers=headers or {})
    assert resp.status_code == 200, resp.status_code
    return len(seen), resp.get_data(as_text=True)
