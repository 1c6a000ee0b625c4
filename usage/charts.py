"""Server-side SVG charts for the admin: a line chart and a stacked bar chart, with axes, legend and titles.

No JavaScript and no request to anywhere: the page carries the finished drawing. Every mark has a `<title>`
(a browser shows it on hover, a screen reader reads it) and every chart a `<title>` and `<desc>`. Values may
be Decimal; they become floats only to place pixels, the text shown comes from `value_format`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

Number = int | float | Decimal

# Okabe-Ito: told apart by colour-blind readers too.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

WIDTH = 760
HEIGHT = 280
LEFT, RIGHT, TOP, BOTTOM = 72, 32, 16, 40  # room for the last x label, centred on the right edge
LEGEND_ROW = 20
LEGEND_WIDTH = 180  # per entry, so a legend of n entries wraps at (WIDTH - LEFT) // LEGEND_WIDTH
MAX_X_LABELS = 10
Y_TICKS = 5


@dataclass(frozen=True)
class Series:
    """One named line, or one layer of stacked bars: a value per x label, None for "nothing to draw"."""

    name: str
    values: Sequence[Number | None]
    dashed: bool = False


def line_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    value_format: Callable[[Number], str],
    whole: bool = False,
) -> SafeString:
    """Draw each series as a line with a marked, titled point per value; None leaves a gap.

    `whole`: the y axis steps by whole numbers (for counts).
    """
    top = _max(v for s in series for v in s.values)
    frame = _Frame(len(x_labels), top, legend_rows=_legend_rows(len(series)), bars=False, whole=whole)
    parts = [frame.axes(x_labels, value_format)]
    labels = [escape(label) for label in x_labels]
    for index, item in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if item.dashed else ""
        for run in _runs(item.values):
            points = " ".join(f"{frame.x(i):.1f},{frame.y(v):.1f}" for i, v in run)
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}'
                ' stroke-linejoin="round" />'
            )
        name = escape(item.name)
        for i, value in enumerate(item.values):
            if value is not None:
                parts.append(
                    f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(value):.1f}" r="3" fill="{colour}" class="point">'
                    f"<title>{labels[i]} · {name}: {escape(value_format(value))}</title></circle>"
                )
    parts.append(frame.legend(series, "line"))
    return _svg(chart_id, title, description, frame.height, parts)


def stacked_bar_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    value_format: Callable[[Number], str],
    whole: bool = False,
) -> SafeString:
    """Draw a bar per x label, each series a layer stacked on the ones before it; the bar's title has the total."""
    totals = [sum((s.values[i] or 0 for s in series), 0) for i in range(len(x_labels))]
    frame = _Frame(len(x_labels), _max(totals), legend_rows=_legend_rows(len(series)), bars=True, whole=whole)
    parts = [frame.axes(x_labels, value_format)]
    bar_width = max(frame.step * 0.7, 1.0)
    names = [escape(item.name) for item in series]
    for i, label in enumerate(x_labels):
        if not totals[i]:
            continue
        x = frame.x(i) - bar_width / 2
        # The day's total titles the group, so hovering a layer tells that layer and the rest of the bar the total.
        parts.append(f'<g class="bar-group"><title>{escape(label)} · total: {escape(value_format(totals[i]))}</title>')
        base: Number = 0
        for index, item in enumerate(series):
            value = item.values[i]
            if not value:
                continue
            y_top, y_bottom = frame.y(base + value), frame.y(base)
            parts.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_width:.1f}" height="{max(y_bottom - y_top, 0.5):.1f}" '
                f'fill="{PALETTE[index % len(PALETTE)]}" class="bar">'
                f"<title>{escape(label)} · {names[index]}: {escape(value_format(value))}</title></rect>"
            )
            base += value
        parts.append("</g>")
    parts.append(frame.legend(series, "bar"))
    return _svg(chart_id, title, description, frame.height, parts)


def nice_ceiling(value: float, *, whole: bool = False) -> tuple[float, float]:
    """Return (top, step) for a y axis from 0 that holds `value`: Y_TICKS steps of 1, 2, 2.5 or 5 × 10^k.

    With `whole`, for counts, every step is a whole number: up to Y_TICKS that is steps of 1, fewer of them.
    """
    if value <= 0:
        return (1.0, 1.0) if whole else (1.0, 1.0 / Y_TICKS)
    if whole and value <= Y_TICKS:
        return float(math.ceil(value)), 1.0
    raw_step = value / Y_TICKS
    magnitude = 10 ** math.floor(math.log10(raw_step))
    # Whole steps of 3 and 4 stand in for 2.5 below 10, so that 12 calls get an axis to 15 rather than to 25.
    for multiple in (1, 2, 3, 4, 5, 10) if whole and magnitude == 1 else (1, 2, 2.5, 5, 10):
        step = multiple * magnitude
        if whole and not float(step).is_integer():
            continue
        if step * Y_TICKS >= value * (1 - 1e-12):
            return step * Y_TICKS, step
    return 10 * magnitude * Y_TICKS, 10 * magnitude  # unreachable: 10 × magnitude always fits


class _Frame:
    """The plot area and the mapping from (index, value) to pixels."""

    def __init__(self, count: int, top: Number, *, legend_rows: int, bars: bool, whole: bool):
        self.count = max(count, 1)
        self.top, self.tick = nice_ceiling(float(top), whole=whole)
        self.height = HEIGHT + legend_rows * LEGEND_ROW
        self.plot_bottom = HEIGHT - BOTTOM
        self.plot_width = WIDTH - LEFT - RIGHT
        self.bars = bars
        # Bars sit in the middle of their slot; line points span the whole width.
        self.step = self.plot_width / self.count if bars else self.plot_width / max(self.count - 1, 1)

    def x(self, index: int) -> float:
        if self.bars:
            return LEFT + self.step * (index + 0.5)
        if self.count == 1:
            return LEFT + self.plot_width / 2
        return LEFT + self.step * index

    def y(self, value: Number) -> float:
        share = float(value) / self.top if self.top else 0.0
        return self.plot_bottom - share * (self.plot_bottom - TOP)

    def axes(self, x_labels: Sequence[str], value_format: Callable[[Number], str]) -> str:
        parts = ['<g class="axes" font-size="11" fill="#444">']
        for n in range(round(self.top / self.tick) + 1):
            value = self.tick * n
            y = self.y(value)
            parts.append(
                f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{"#999" if n == 0 else "#e3e3e3"}" />'
            )
            label = value_format(_tick_value(value, self.tick))
            parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        every = max(math.ceil(len(x_labels) / MAX_X_LABELS), 1)
        for i, label in enumerate(x_labels):
            if i % every and i != len(x_labels) - 1:
                continue
            if i != len(x_labels) - 1 and len(x_labels) - 1 - i < every:
                continue  # too close to the last label, which is always shown
            x = self.x(i)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.plot_bottom}" y2="{self.plot_bottom + 4}" stroke="#999" />'
            )
            parts.append(f'<text x="{x:.1f}" y="{self.plot_bottom + 18}" text-anchor="middle">{escape(label)}</text>')
        parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{self.plot_bottom}" stroke="#999" />')
        parts.append("</g>")
        return "".join(parts)

    def legend(self, series: Sequence[Series], mark: str) -> str:
        per_row = max((WIDTH - LEFT) // LEGEND_WIDTH, 1)
        parts = ['<g class="legend" font-size="12" fill="#222">']
        for index, item in enumerate(series):
            row, column = divmod(index, per_row)
            x = LEFT + column * LEGEND_WIDTH
            y = HEIGHT - 8 + row * LEGEND_ROW
            colour = PALETTE[index % len(PALETTE)]
            if mark == "bar":
                parts.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}" />')
            else:
                dash = ' stroke-dasharray="6 4"' if item.dashed else ""
                parts.append(
                    f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
                    f'stroke-width="2"{dash} />'
                )
            parts.append(f'<text x="{x + 20}" y="{y}">{escape(_shorten(item.name))}</text>')
        parts.append("</g>")
        return "".join(parts)


def _svg(chart_id: str, title: str, description: str, height: int, parts: list[str]) -> SafeString:
    head = format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" role="img" class="usage-chart" id="{}" '
        'aria-labelledby="{}-title {}-desc" font-family="system-ui, sans-serif">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>',
        WIDTH,
        height,
        chart_id,
        chart_id,
        chart_id,
        chart_id,
        title,
        chart_id,
        description,
    )
    # Every part is built from numbers, our own markup, or escaped text.
    return mark_safe(head + "".join(str(part) for part in parts) + "</svg>")  # noqa: S308


def _legend_rows(count: int) -> int:
    per_row = max((WIDTH - LEFT) // LEGEND_WIDTH, 1)
    return max(math.ceil(count / per_row), 1)


def _max(values) -> Number:
    return max((v for v in values if v is not None), default=0)


def _runs(values: Sequence[Number | None]) -> list[list[tuple[int, Number]]]:
    """Split a series at its gaps into runs of consecutive (index, value) pairs."""
    runs: list[list[tuple[int, Number]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, value))
    return [run for run in runs if run]


def _tick_value(value: float, step: float) -> Number:
    """Return a tick's value as an int when the ticks are whole numbers, else as a Decimal rounded to the step."""
    if float(step).is_integer():
        return int(round(value))
    places = max(-math.floor(math.log10(step)), 0) + 1
    return Decimal(str(round(value, places))).normalize()


def _shorten(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
