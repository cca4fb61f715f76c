"""The root admin's revenue report (page and JSON) and the invoice CSV exports (CONTRACT §8.4).

All routes are root-only (deny by default, see app/access.py). The exports stream: rows are read through a
server-side cursor and written out batch by batch, so an export of any size runs in constant memory.
"""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request, stream_with_context

from app.errors import ApiError
from app.reports import charts
from app.services import clock, reports
from app.services.reports import INVOICE_CSV_HEADER, LINE_CSV_HEADER

bp = Blueprint("reports", __name__)

MONTH_CHOICES = (3, 6, 12, 24, 36)


def _report_args(args) -> tuple[int, str | None, dict[str, str]]:
    """months and currency from the query string, with a message per bad field."""
    errors: dict[str, str] = {}
    months = reports.DEFAULT_MONTHS
    raw = args.get("months")
    if raw not in (None, ""):
        try:
            months = int(raw)
        except ValueError:
            months = 0
        if not 1 <= months <= reports.MAX_MONTHS:
            errors["months"] = f"Give a whole number of months from 1 to {reports.MAX_MONTHS}."
            months = reports.DEFAULT_MONTHS
    currency = (args.get("currency") or "").strip().lower() or None
    if currency is not None and not re.fullmatch(r"[a-z]{3}", currency):
        errors["currency"] = "Give a three-letter currency code, e.g. usd."
        currency = None
    return months, currency, errors


@bp.route("/api/admin/reports/revenue")
def revenue_api():
    months, currency, errors = _report_args(request.args)
    if errors:
        raise ApiError(422, "The request has invalid fields.", "validation_error", errors)
    return jsonify(reports.revenue_report(months, currency).as_json())


def _page(status: int = 200, *, export_error: str | None = None, export_period: str | None = None):
    months, currency, errors = _report_args(request.args)
    report = reports.revenue_report(months, currency)
    periods = [m.month for m in reversed(report.months)]
    context: dict[str, Any] = dict(
        report=report, months=months, errors=errors, month_choices=MONTH_CHOICES,
        flow=charts.invoiced_vs_collected(report), recurring=charts.recurring_revenue(report),
        export_period=export_period or _default_export_period(), export_error=export_error, periods=periods)
    return render_template("reports/revenue.html", **context), 422 if errors or export_error else status


def _default_export_period() -> str:
    year, month = clock.previous_month(clock.today())
    return f"{year:04d}-{month:02d}"


@bp.route("/admin/reports/revenue")
def revenue_page():
    return _page()


def _export_period() -> str:
    """The `period` argument (YYYY-MM; last month when absent); ValueError with a message when malformed."""
    raw = (request.args.get("period") or "").strip()
    if not raw:
        return _default_export_period()
    year, month = clock.parse_period(raw)
    if not 2000 <= year <= clock.today().year + 1:
        raise ValueError(f"period must be a month between 2000 and next year, got {raw!r}")
    return f"{year:04d}-{month:02d}"


def _csv(filename: str, header: list[str], rows) -> Response:
    response = Response(stream_with_context(reports.csv_chunks(header, rows)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _export(kind: str, header: list[str], rows_of):
    try:
        period = _export_period()
    except ValueError:
        return _page(export_error="Choose a month as YYYY-MM, e.g. 2026-03.",
                     export_period=request.args.get("period", ""))
    return _csv(f"{kind}-{period}.csv", header, rows_of(period))


@bp.route("/admin/reports/invoices.csv")
def invoices_csv():
    return _export("invoices", INVOICE_CSV_HEADER, reports.invoice_rows)


@bp.route("/admin/reports/invoice-lines.csv")
def invoice_lines_csv():
    return _export("invoice-lines", LINE_CSV_HEADER, reports.invoice_line_rows)

