"""Chart geometry for the HTML report: pure arithmetic, no SVG strings.

A :class:`~engine.reporting.model.Chart` carries pixel coordinates already
scaled, tick labels already formatted and series already split where data is
missing, so the template only draws lines, dots and text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from engine.reporting.model import Chart, Point, RefLine, Series, Tick

#: Okabe-Ito: distinguishable with the common kinds of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3")
WIDTH, HEIGHT = 640, 240
LEFT, TOP, RIGHT, BOTTOM = 64, 16, WIDTH - 16, HEIGHT - 28


def nice_max(value: float, integer: bool = False) -> tuple[float, float]:
    """A round upper bound >= ``value`` and a step (1, 2, 2.5 or 5 times a power of ten) dividing it in <= 5.

    ``integer`` keeps steps whole, for axes of counts.
    """
    if value <= 0 or not math.isfinite(value):
        return (1.0, 1.0) if integer else (1.0, 0.25)
    if integer:
        value = max(value, 1.0)
    exp = 10.0 ** math.floor(math.log10(value / 5))
    for base in (1, 2, 2.5, 5, 10, 20, 25, 50):
        step = base * exp
        if integer and (step < 1 or not float(step).is_integer()):
            continue
        parts = max(1, math.ceil(value / step - 1e-9))
        if parts <= 5:
            return parts * step, step
    return value, value  # not reached: 50 * exp >= value


def line_chart(key: str, title: str, unit: str, labels: Sequence[str],
               series: Sequence[tuple[str, Sequence[float | None]]], label: Callable[[float], str], *,
               refs: Sequence[tuple[float, str, str]] = (), minimum_top: float = 0.0,
               every: int = 3, integer: bool = False, empty: str = "No calls on this day.") -> Chart:
    """A chart of one value per label (an hour) per series; ``None`` breaks a line."""
    n = len(labels)
    values = [v for _, vs in series for v in vs if v is not None]
    top, step = nice_max(max([*values, *(r[0] for r in refs), minimum_top, 0.0]), integer)
    width = (RIGHT - LEFT) / max(n, 1)

    def x(i: int) -> float:
        return round(LEFT + (i + 0.5) * width, 1)

    def y(v: float) -> float:
        return round(BOTTOM - (BOTTOM - TOP) * (v / top), 1)

    x_ticks = tuple(Tick(x(i), labels[i]) for i in range(0, n, every))
    y_ticks = tuple(Tick(y(i * step), label(i * step)) for i in range(round(top / step) + 1))
    out = []
    for k, (name, vs) in enumerate(series):
        segments: list[list[str]] = [[]]
        dots = []
        for i, v in enumerate(vs):
            if v is None:
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append(f"{x(i)},{y(v)}")
            dots.append(Point(x(i), y(v), f"{name} · {labels[i]} · {label(v)}"))
        out.append(Series(name, PALETTE[k % len(PALETTE)], DASHES[k % len(DASHES)],
                          tuple(" ".join(s) for s in segments if s), tuple(dots)))
    ref_lines = tuple(RefLine(y(v), text, kind) for v, text, kind in refs)
    return Chart(key, title, unit, WIDTH, HEIGHT, LEFT, TOP, RIGHT, BOTTOM, x_ticks, y_ticks, tuple(out),
                 ref_lines, "" if values else empty)
