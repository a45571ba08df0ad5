"""Time values as the user writes them: ``30m``, ``1h``, ``2d``, ISO dates, ``now``.

Timestamps inside the system are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import datetime as _dt
import re
import time

from .errors import InvalidQueryError

#: the times an event may carry (2000-01-01 .. 2200-01-01 UTC in epoch ms), as the event gate checks them
#: (``model.MIN_TIMESTAMP_MS``/``MAX_TIMESTAMP_MS``): a query bound outside them is a mistake, such as
#: seconds or nanoseconds given for milliseconds, and one past 64 bits would overflow the store
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 7_258_118_400_000

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
    when the value is none of these (or a number too large to be a time at all).
    The result is not range-checked: :func:`query_time` is for bounds a user gives.
    """
    try:
        return _to_ms(value, now)
    except OverflowError:  # inf, or a span of more days than a datetime holds
        raise ValueError(f"{value!r} is too large to be a time") from None


def _to_ms(value: object, now: int | None) -> int:
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
        return _to_ms(_dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc), now)
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
            return _to_ms(parsed, now)
    raise ValueError(
        f"expected a time (epoch ms, datetime, 'now', a span like '30m', '1h', '2d', "
        f"or an ISO date), got {value!r}"
    )


def query_time(value: object, name: str, *, now: int | None = None) -> int:
    """A time bound a user gives (``since``, ``until``, a window's start) as epoch ms, range-checked.

    Takes every form :func:`to_ms` does, so relative spans (``"1h"``) and ``"now"``
    keep working.  Raises :class:`~vibekit_telemetry.InvalidQueryError` naming
    ``name`` when the value is not a time, or lies before the epoch or after 2200, the latest
    time a stored event can have (the usual cause: nanoseconds instead of milliseconds).
    """
    try:
        ms = to_ms(value, now=now)
    except ValueError as exc:
        raise InvalidQueryError(name, str(exc)) from None
    check_time_range(ms, name, value)
    return max(ms, -MAX_TIME_MS)  # far in the past is as good as the epoch; a bound no store can compare is not


def check_time_range(ms: int, name: str, given: object = None) -> None:
    """Raise :class:`~vibekit_telemetry.InvalidQueryError` naming ``name`` unless ``ms`` is a usable bound.

    A bound may reach back as far as it likes (``since=0``, a retention cutoff of centuries: stored
    events are all after 2000) but not past 2200-01-01, the latest time an event can have: beyond it
    lies a mistake such as nanoseconds for milliseconds, or a number no store can compare.
    """
    if ms > MAX_TIME_MS:
        shown = ms if given is None else given
        raise InvalidQueryError(
            name, f"must be a time before 2200-01-01 (epoch milliseconds up to {MAX_TIME_MS}), "
                  f"a span such as '1h' or an ISO date, got {shown!r}")


def span_ms(value: object) -> int:
    """A duration in milliseconds from ``30m``-style text or a number of milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, _dt.timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, str):
        match = _RELATIVE.match(value)
        if match:
            try:
                return int(float(match.group(1)) * _UNITS_MS[match.group(2).lower()])
            except OverflowError:
                raise ValueError(f"{value!r} is too long a duration") from None
    raise ValueError(f"expected a duration such as '30m', '1h', '2d' or milliseconds, got {value!r}")


def format_ms(ms: int | None) -> str:
    """An epoch-milliseconds timestamp as an ISO 8601 UTC string (empty for ``None``)."""
    if ms is None:
        return ""
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def time_range(value: object = None, *, default: str = "24h", now: int | None = None,
               names: tuple[str, str] = ("start", "end")) -> tuple[int, int]:
    """A ``(start, end)`` window in epoch ms from what a user may pass as ``time_range``.

    ``None`` means the last ``default``; a span such as ``"1h"`` means the last
    hour; a pair ``(start, end)`` or a mapping ``{"start": ..., "end": ...}``
    takes any form :func:`to_ms` accepts (``end`` defaults to now).  Both ends
    are checked like :func:`query_time`; an error is an
    :class:`~vibekit_telemetry.InvalidQueryError` (a ``ValueError``) naming the
    end at fault by ``names`` (``("since", "until")`` for a command line or a URL).
    The window must not be empty or reversed.
    """
    current = now_ms() if now is None else now
    if value is None:
        value = default
    if isinstance(value, (str, _dt.timedelta)) and (not isinstance(value, str) or _RELATIVE.match(value)):
        try:
            start_ms = current - span_ms(value)
        except ValueError as exc:
            raise InvalidQueryError(names[0], str(exc)) from None
        check_time_range(start_ms, names[0], value)
        return start_ms, current
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end", "now")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        start, end = value
    else:
        raise InvalidQueryError(names[0], "expected a time range: a span like '24h', (start, end) or "
                                          f"{{'start', 'end'}}, got {value!r}")
    if start is None:
        raise InvalidQueryError(names[0], "the time range needs a start")
    start_ms = query_time(start, names[0], now=current)
    end_ms = query_time(end if end is not None else "now", names[1], now=current)
    if end_ms <= start_ms:
        raise InvalidQueryError(names[1], f"the time range ends ({format_ms(end_ms)}) before it starts "
                                          f"({format_ms(start_ms)})")
    return start_ms, end_ms
