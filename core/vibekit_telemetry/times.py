"""Time values as the user writes them: ``30m``, ``1h``, ``2d``, ISO dates, ``now``.

Timestamps inside the system are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import datetime as _dt
import re
import time

_UNITS_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)


def now_ms() -> int:
    """The current time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def to_ms(value: object, *, now: int | None = None) -> int:
    """Turn a user-supplied time into epoch milliseconds.

    Accepts ``int``/``float`` epoch milliseconds, ``datetime`` (naive values are
    taken as UTC), ``date``, and strings: ``now``, a relative span such as ``30m``,
    ``1h``, ``2d`` (meaning that long before now), an ISO 8601 date or datetime,
    or digits (epoch milliseconds).  Raises ``ValueError`` with the accepted forms
    when the value is none of these.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a time, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, _dt.date):
        return to_ms(_dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc))
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "now":
            return now_ms() if now is None else now
        if text.isdigit():
            return int(text)
        match = _RELATIVE.match(text)
        if match:
            amount = float(match.group(1)) * _UNITS_MS[match.group(2).lower()]
            return (now_ms() if now is None else now) - int(amount)
        try:
            parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return to_ms(parsed)
    raise ValueError(
        f"expected a time (epoch ms, datetime, 'now', a span like '30m', '1h', '2d', "
        f"or an ISO date), got {value!r}"
    )


def span_ms(value: object) -> int:
    """A duration in milliseconds from ``30m``-style text or a number of milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, _dt.timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, str):
        match = _RELATIVE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS_MS[match.group(2).lower()])
    raise ValueError(f"expected a duration such as '30m', '1h', '2d' or milliseconds, got {value!r}")


def format_ms(ms: int | None) -> str:
    """An epoch-milliseconds timestamp as an ISO 8601 UTC string (empty for ``None``)."""
    if ms is None:
        return ""
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def time_range(value: object = None, *, default: str = "24h", now: int | None = None) -> tuple[int, int]:
    """A ``(start, end)`` window in epoch ms from what a user may pass as ``time_range``.

    ``None`` means the last ``default``; a span such as ``"1h"`` means the last
    hour; a pair ``(start, end)`` or a mapping ``{"start": ..., "end": ...}``
    takes any form :func:`to_ms` accepts (``end`` defaults to now).  Raises
    ``ValueError`` when the window is empty or reversed.
    """
    current = now_ms() if now is None else now
    if value is None:
        value = default
    if isinstance(value, str) and _RELATIVE.match(value):
        return current - span_ms(value), current
    if isinstance(value, _dt.timedelta):
        return current - span_ms(value), current
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end", "now")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        start, end = value
    else:
        raise ValueError(f"expected a time range: a span like '24h', (start, end) or {{'start', 'end'}}, got {value!r}")
    start_ms = to_ms(start, now=current)
    end_ms = to_ms(end if end is not None else "now", now=current)
    if end_ms <= start_ms:
        raise ValueError(f"the time range ends ({format_ms(end_ms)}) before it starts ({format_ms(start_ms)})")
    return start_ms, end_ms
