"""Number and time formatting for the report: one place, so both formats agree."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

DASH = "—"


def count(n: float) -> str:
    return f"{n:,.0f}"


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def pct(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x * 100:.{digits}f}%"


def usd(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    if x == 0 or abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.{2 - math.floor(math.log10(abs(x)))}f}"  # three significant digits below $1


def ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    if x >= 10_000:
        return f"{x / 1000:,.1f} s"
    if x >= 1000:
        return f"{x / 1000:.2f} s"
    return f"{x:.0f} ms"


def tokens(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return DASH
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.2f}{suffix}"
    return f"{n:.0f}"


def change(now: float, before: float | None) -> str:
    """Relative change as ``+12.0%``; ``new`` when there was nothing before."""
    if before is None or before == 0:
        return "new" if now else DASH
    if now / before >= 10:
        return f"×{now / before:,.0f}"  # noqa: RUF001 - a multiplication sign
    return f"{(now - before) / before * 100:+.1f}%"


def ratio(now: float, before: float | None) -> float:
    """The relative change rules see (0 when there is nothing to compare with)."""
    if not before:
        return 0.0
    return (now - before) / before


def clock(t: float, tz: ZoneInfo, seconds: bool = False) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%H:%M:%S" if seconds else "%H:%M")
