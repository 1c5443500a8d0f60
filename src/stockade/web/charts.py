"""Audit records bucketed over time, drawn as small inline SVG charts (no script, styled by app.css)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup


@dataclass(frozen=True)
class Bucket:
    start: datetime
    calls: int
    errors: int
    denied: int
    avg_ms: float | None
    p95_ms: float | None


def bucket_audit(rows: list[tuple[datetime, float, str]], start: datetime, end: datetime, count: int) -> list[Bucket]:
    width = (end - start) / count
    grouped: list[list[tuple[float, str]]] = [[] for _ in range(count)]
    for ts, latency, outcome in rows:
        index = math.floor((ts - start) / width)
        if 0 <= index < count:
            grouped[index].append((latency, outcome))
    buckets = []
    for i, items in enumerate(grouped):
        latencies = sorted(lat for lat, _ in items)
        p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
        buckets.append(Bucket(
            start=start + i * width,
            calls=len(items),
            errors=sum(1 for _, o in items if o == "error"),
            denied=sum(1 for _, o in items if o == "denied"),
            avg_ms=(sum(latencies) / len(latencies)) if latencies else None,
            p95_ms=p95,
        ))
    return buckets


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def svg_chart(title: str, buckets: list[Bucket], series: list[tuple[str, str, Callable[[Bucket], float | None]]],
              *, kind: str, unit: str, label_format: str) -> Markup:
    """A small bar or line chart as inline SVG (styled by classes from app.css; no script)."""
    width, height = 960, 220
    left, right, top, bottom = 56, 12, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [fn(b) for b in buckets for _, _, fn in series]
    peak = _nice_max(max([v for v in values if v is not None] or [0]))
    n = max(len(buckets), 1)
    step = plot_w / n

    def y(value: float) -> float:
        return top + plot_h - (value / peak) * plot_h

    chart_id = _esc_id(title)
    parts = [
        (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
         'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">'),
        f'<title id="{chart_id}-t">{_esc(title)}</title>',
    ]

    def overall(fn: Callable[[Bucket], float | None]) -> float:
        present = [v for b in buckets if (v := fn(b)) is not None]
        return (sum(present) if kind == "bar" else max(present, default=0)) if present else 0

    totals = ", ".join(f"{name}: {_fmt_number(overall(fn))}" for name, _, fn in series)
    summary = f"{'totals' if kind == 'bar' else 'peaks'} over the window — {totals} {unit}".strip()
    parts.append(f'<desc id="{chart_id}-d">{_esc(summary)}</desc>')
    for i in range(5):
        value = peak * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{_fmt_number(value)}</text>')
    label_every = max(1, n // 6)
    for i, bucket in enumerate(buckets):
        if i % label_every == 0:
            parts.append(f'<text class="axis" x="{left + i * step + step / 2:.1f}" y="{height - 12}" text-anchor="middle">'
                         f'{bucket.start.strftime(label_format)}</text>')
    if kind == "bar":
        bar_w = max(step / len(series) - 2, 1)
        for s_index, (name, css, fn) in enumerate(series):
            for i, bucket in enumerate(buckets):
                value = fn(bucket) or 0
                x = left + i * step + 1 + s_index * (bar_w + 1)
                parts.append(f'<rect class="{css}" x="{x:.1f}" y="{y(value):.1f}" width="{bar_w:.1f}" '
                             f'height="{top + plot_h - y(value):.1f}"><title>{_esc(name)} {bucket.start:%Y-%m-%d %H:%M}: '
                             f'{_fmt_number(value)}</title></rect>')
    else:
        for name, css, fn in series:
            points = [(left + i * step + step / 2, fn(b)) for i, b in enumerate(buckets)]
            drawn = [(px, y(v)) for px, v in points if v is not None]
            if drawn:
                parts.append(f'<polyline class="{css}" fill="none" points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in drawn)}"/>')
            for (px, v), bucket in zip(points, buckets, strict=True):
                if v is not None:
                    parts.append(f'<circle class="{css}" cx="{px:.1f}" cy="{y(v):.1f}" r="3"><title>{_esc(name)} '
                                 f'{bucket.start:%Y-%m-%d %H:%M}: {_fmt_number(v)} {unit}</title></circle>')
    parts.append(f'<line class="axis-line" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _esc(text: str) -> str:
    return str(Markup.escape(text))


def _esc_id(text: str) -> str:
    return "chart-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fmt_number(value: float) -> str:
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}".rstrip("0").rstrip(".")
