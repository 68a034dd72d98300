"""Small SVG charts written by us: the report opens offline, with no script and no CDN.

Pure functions, text out. Each plot is an ``<svg class="plot" data-plot=ID>`` and each data
series a ``<g class="series" data-series=NAME>`` holding its marks, so a test (or a curious
reader of the page source) can count what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 44, 46
#: Colour-blind-safe palette (Okabe-Ito).
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as du -h)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least ``top`` (1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def byte_ticks(top: float, count: int = 5) -> list[float]:
    """:func:`nice_ticks` in the binary unit of ``top`` (0, 256 KiB, 512 KiB ... not 976.6 KiB)."""
    unit = 1.0
    while top / unit >= 1024:
        unit *= 1024
    return [t * unit for t in nice_ticks(top / unit, count)]


def chart(plot_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *,
          kind: str = "line", y_format: Callable[[float], str] = lambda v: f"{v:g}",
          x_title: str = "version", in_bytes: bool = False) -> str:
    """A line or grouped-bar chart of ``series`` over the categories ``labels``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max((v for s in series for v in s.values), default=0)
    ticks = byte_ticks(top) if in_bytes else nice_ticks(top)
    y_max = ticks[-1]
    n = max(1, len(labels))
    slot = plot_w / n

    def x_of(i: int) -> float:
        return LEFT + slot * (i + 0.5)

    def y_of(v: float) -> float:
        return TOP + plot_h - (v / y_max) * plot_h

    out = [f'<svg class="plot" data-plot="{escape(plot_id)}" xmlns="http://www.w3.org/2000/svg" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
           f'aria-label="{escape(title)}">',
           f'<text x="{LEFT}" y="18" class="title">{escape(title)}</text>']
    for t in ticks:
        y = y_of(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{escape(y_format(t))}</text>')
    every = max(1, math.ceil(n / 12))  # at most a dozen labels on the axis
    for i, label in enumerate(labels):
        if i % every == 0:
            out.append(f'<text class="tick" x="{x_of(i):.1f}" y="{TOP + plot_h + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text class="axis" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">{escape(x_title)}</text>')
    out.append(f'<line class="axis-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
               f'y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    bar_w = slot * 0.8 / max(1, len(series))
    for k, s in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        out.append(f'<g class="series" data-series="{escape(s.name)}" fill="{colour}" '
                   f'stroke="{colour}">')
        if kind == "bar":
            for i, v in enumerate(s.values):
                x = x_of(i) - slot * 0.4 + k * bar_w
                out.append(f'<rect x="{x:.1f}" y="{y_of(v):.1f}" width="{bar_w:.1f}" '
                           f'height="{y_of(0) - y_of(v):.1f}"><title>{escape(s.name)} '
                           f'{escape(labels[i])}: {escape(y_format(v))}</title></rect>')
        else:
            points = [(x_of(i), y_of(v)) for i, v in enumerate(s.values)]
            if len(points) > 1:
                d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
                             for i, (x, y) in enumerate(points))
                out.append(f'<path d="{d}" fill="none" stroke-width="2"/>')
            for i, (x, y) in enumerate(points):
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5"><title>{escape(s.name)} '
                           f'{escape(labels[i])}: {escape(y_format(s.values[i]))}</title>'
                           '</circle>')
        out.append("</g>")
        lx = LEFT + 8 + k * 180
        out.append(f'<g class="legend"><rect x="{lx}" y="{TOP - 12}" width="10" height="10" '
                   f'fill="{colour}"/><text x="{lx + 14}" y="{TOP - 3}">{escape(s.name)}'
                   '</text></g>')
    out.append("</svg>")
    return "\n".join(out)
