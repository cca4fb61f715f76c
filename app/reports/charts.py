"""The revenue page's charts as plain geometry: the template draws them as inline SVG (no script, CSP-safe)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from app.services.notifications import format_money
from app.services.reports import RevenueReport

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 72, 8, 12, 28  # room for the axis labels
GRIDLINES = 4


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # a CSS-free colour key the template maps to a fill
    title: str  # the exact figure, shown on hover and read by screen readers


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    ticks: list[Tick] = field(default_factory=list)
    labels: list[tuple[float, str]] = field(default_factory=list)  # (x, month) under the plot
    bars: list[Bar] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    left: int = LEFT
    right: int = WIDTH - RIGHT

    @property
    def baseline(self) -> float:
        return self.height - BOTTOM

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)

    @property
    def area(self) -> str:
        """The polyline closed down to the baseline (the shaded area under a line)."""
        if not self.points:
            return ""
        return (f"{self.points[0].x:.1f},{self.baseline:.1f} {self.polyline} "
                f"{self.points[-1].x:.1f},{self.baseline:.1f}")


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2, 2.5 or 5 × 10^k at least `value` (a round top for the axis)."""
    if value <= 0:
        return 100
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        top = int(Decimal(step) * magnitude)
        if top >= value:
            return top
    return 10 * magnitude  # pragma: no cover - the loop always returns


def compact_money(minor: int, currency: str) -> str:
    """An axis label: $950, $1.2k, $35k, $1.5M (the symbol or code where format_money puts it)."""
    head, zero, tail = re.match(r"^(\D*)([\d.,]+)(.*)$", format_money(0, currency)).groups()
    major = Decimal(minor).scaleb(-len(zero.partition(".")[2]))
    for limit, suffix in ((Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "k")):
        if major >= limit:
            return f"{head}{format((major / limit).quantize(Decimal('0.1')).normalize(), 'f')}{suffix}{tail}"
    return f"{head}{major:,.0f}{tail}"


def _frame(top_value: int, months: list[str], currency: str) -> tuple[Chart, float, float]:
    chart = Chart()
    plot_h = chart.baseline - TOP
    step = (WIDTH - LEFT - RIGHT) / max(len(months), 1)
    for n in range(GRIDLINES + 1):
        value = top_value * n // GRIDLINES
        chart.ticks.append(Tick(chart.baseline - plot_h * n / GRIDLINES, compact_money(value, currency)))
    for n, month in enumerate(months):
        chart.labels.append((LEFT + step * (n + 0.5), month[2:] if len(months) > 12 else month))
    return chart, plot_h, step


def invoiced_vs_collected(report: RevenueReport) -> Chart:
    """Two columns per month: what was invoiced for the period and what was collected in the month."""
    months = report.months
    top = nice_ceiling(max([m.invoiced for m in months] + [m.collected for m in months] + [0]))
    chart, plot_h, step = _frame(top, [m.month for m in months], report.currency)
    width = step * 0.36
    for n, m in enumerate(months):
        for k, (series, value, what) in enumerate((("invoiced", m.invoiced, "invoiced"),
                                                   ("collected", m.collected, "collected"))):
            height = plot_h * value / top
            x = LEFT + step * n + step * 0.12 + k * width
            chart.bars.append(Bar(x, chart.baseline - height, width, height, series,
                                  f"{m.month}: {format_money(value, report.currency)} {what}"))
    return chart


def recurring_revenue(report: RevenueReport) -> Chart:
    """Recurring (plan fee) revenue per period, as a line over the months."""
    months = report.months
    top = nice_ceiling(max([m.recurring for m in months] + [0]))
    chart, plot_h, step = _frame(top, [m.month for m in months], report.currency)
    for n, m in enumerate(months):
        chart.points.append(Point(LEFT + step * (n + 0.5), chart.baseline - plot_h * m.recurring / top,
                                  f"{m.month}: {format_money(m.recurring, report.currency)} recurring"))
    return chart
