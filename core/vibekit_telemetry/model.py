"""The values that flow through vibekit-telemetry: events, sessions, filters, findings.

All are frozen attrs classes.  Storage plugins build them from their rows and
the kernel hands them to hooks, so they are the whole vocabulary a plugin needs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import itertools
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import orjson

from .errors import InvalidEventError, InvalidQueryError
from .times import now_ms, to_ms

EVENT_TYPES = frozenset({"start", "stream", "end", "error", "custom"})
SESSION_STATUSES = ("active", "completed", "failed", "cancelled", "timeout")

_sequence = itertools.count()
_time_ns = time.time_ns
_salt = 0
#: the millisecond the last clock-made id was made in, and its bits above the counter (one tuple: read and
#: replaced whole, so a thread never pairs one millisecond with another's bits)
_current: tuple[int, int] = (-1, 0)


def _new_salt() -> None:
    """Draw this process's 32 random bits of every id (again in a forked child, which must not share them)."""
    global _salt, _current
    _salt = int.from_bytes(os.urandom(4), "big") << 48
    _current = (-1, 0)


_new_salt()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_salt)


def new_id(timestamp_ms: int | None = None) -> str:
    """A 32-hex-digit id that sorts by creation time.

    48 bits of milliseconds, 32 random bits drawn once per process (ids of different processes never
    collide), and 48 bits of a per-process counter (ids of one process never collide, even if the clock
    steps back, and those made within one millisecond stay in order).  Time-ordered keys also keep SQLite
    appends cheap.  ``track()`` makes one per event, so the bits above the counter are worked out once per
    millisecond and the id is one integer written out once (``int.to_bytes().hex()``, twice as fast as
    ``%x`` formatting).
    """
    if timestamp_ms is None:
        ms = _time_ns() // 1_000_000
        current = _current
        if current[0] != ms:
            current = _set_current(ms)
        return (current[1] | next(_sequence) & 0xFFFFFFFFFFFF).to_bytes(16).hex()
    return ((timestamp_ms & 0xFFFFFFFFFFFF) << 80 | _salt | next(_sequence) & 0xFFFFFFFFFFFF).to_bytes(16).hex()


def _set_current(ms: int) -> tuple[int, int]:
    """The id bits above the counter for millisecond ``ms``, kept as :data:`_current` (once per millisecond)."""
    global _current
    # the clock's milliseconds fit in 48 bits until the year 10889
    _current = current = (ms, ms << 80 | _salt)
    return current


# Not slotted: attrs initialises a frozen dict-backed class by writing its __dict__ directly, which
# measured twice as fast as a frozen slotted one with these 19 fields, and track() builds one per call.
@attrs.frozen(slots=False)
class TelemetryEvent:
    """One thing that happened: a session start, a streamed chunk, an end, an error, or a custom event.

    ``timestamp`` is epoch milliseconds.  Start events carry ``agent``, ``mode``,
    ``prompt`` and optionally ``parent_session_id``; stream events carry
    ``stream_data``; end events ``status``; error events ``error_type``,
    ``error_message`` and ``error_stack``.  ``truncated`` names the fields that
    were cut to ``max_field_bytes`` on the way in.
    """

    event_type: str
    category: str
    id: str = attrs.field(factory=new_id)
    session_id: str | None = None
    action: str | None = None
    label: str | None = None
    value: float | None = None
    timestamp: int = attrs.field(factory=now_ms)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    agent: str | None = None
    mode: str | None = None
    prompt: str | None = None
    parent_session_id: str | None = None
    stream_data: str | None = None
    status: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_stack: str | None = None
    truncated: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetryEvent:
        """Build and validate an event from a mapping (snake_case or the seed's camelCase keys).

        Raises :class:`InvalidEventError` naming the field for unknown keys, wrong
        types, a missing category, an unknown event type, and values no store can
        hold (see :func:`validate_event`).
        """
        if type(data) is not dict and not isinstance(data, Mapping):
            raise InvalidEventError("event", f"expected a mapping, got {type(data).__name__}")
        return event_from_row(checked_row(data))

    @classmethod
    def restore(cls, fields: Mapping[str, Any]) -> TelemetryEvent:
        """Rebuild a stored event from every one of its fields, without validation.

        For storage plugins reading back what they wrote: the values were
        validated on the way in, and skipping ``__init__`` makes reading a page of
        events markedly cheaper.  ``fields`` must hold exactly the event's fields.
        """
        event = object.__new__(cls)
        event.__dict__.update(fields)
        return event

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict with ``None`` fields left out (JSON-ready)."""
        d = self.__dict__
        out = {name: d[name] for name in _FIELD_ORDER if d[name] is not None}
        if out.get("truncated"):
            out["truncated"] = list(out["truncated"])
        else:
            out.pop("truncated", None)
        return out

    def to_row(self) -> tuple[Any, ...]:
        """The event's values in :data:`ROW_FIELDS` order (what the ingest queue carries)."""
        d = self.__dict__
        return (d["id"], d["session_id"], d["event_type"], d["category"], d["action"], d["label"], d["value"],
                d["timestamp"], d["agent"], d["mode"], d["prompt"], d["parent_session_id"], d["stream_data"],
                d["status"], d["error_type"], d["error_message"], d["error_stack"], d["metadata"], d["truncated"])


_FIELD_ORDER = tuple(f.name for f in attrs.fields(TelemetryEvent))
_STRING_FIELDS = (
    "id", "session_id", "action", "label", "agent", "mode", "prompt", "parent_session_id",
    "stream_data", "status", "error_type", "error_message", "error_stack",
)
_SESSION_TYPES = frozenset({"stream", "end", "error"})

#: The range of timestamps accepted, in epoch milliseconds: 2000-01-01 to 2200-01-01 (UTC).  A value
#: outside it is a unit mistake (seconds, nanoseconds) or garbage, and far outside it no store can hold it.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 7_258_118_400_000
#: Integers SQLite, JSON stores and every exporter round-trip exactly: signed 64-bit.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Identifiers (event, session and parent ids) are 1 to this many printable ASCII characters without spaces,
#: so they are safe wherever they go: file names, URLs once quoted, and line-based protocols (SSE, logs).
MAX_ID_LENGTH = 256
#: Names (category, action, label, agent, mode, status, error type) are at most this many characters, without
#: control characters or line breaks.
MAX_NAME_LENGTH = 256

_ID = re.compile(r"[!-~]{1,%d}" % MAX_ID_LENGTH)
#: What a name must not contain: C0 and C1 controls (CR and LF among them), Unicode line and paragraph
#: separators, and lone surrogates (which are not valid UTF-8, so no file or socket can carry them).
_NAME_BAD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_RULE_TEXT, _RULE_NAME, _RULE_ID = 0, 1, 2
#: How each string field is checked: free text must be valid UTF-8; names also have no line breaks and a bounded
#: length; ids are a safe character set.  ``timestamp`` arrives here already converted to an integer.
_STRING_RULES = {
    "prompt": _RULE_TEXT, "stream_data": _RULE_TEXT, "error_message": _RULE_TEXT, "error_stack": _RULE_TEXT,
    "category": _RULE_NAME, "action": _RULE_NAME, "label": _RULE_NAME, "agent": _RULE_NAME, "mode": _RULE_NAME,
    "status": _RULE_NAME, "error_type": _RULE_NAME, "event_type": _RULE_NAME,
    "id": _RULE_ID, "session_id": _RULE_ID, "parent_session_id": _RULE_ID,
}


def _not_utf8(value: str) -> bool:
    """Whether ``value`` holds a lone surrogate, which no UTF-8 file or socket can carry.

    Encoding is the fastest test CPython has (a regex scan is six times slower on non-ASCII text, which LLM
    output is full of); ``isascii`` is constant time and settles most strings.
    """
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_text(value: str) -> str | None:
    """Why a free-text value cannot be stored, or ``None``."""
    if _not_utf8(value):
        return "is not valid UTF-8 (it holds a lone surrogate such as '\\ud800')"
    return None


def _bad_string(rule: int, value: str) -> str | None:
    if rule == _RULE_ID:
        if _ID.fullmatch(value) is not None:
            return None
        if not value:
            return "must not be empty"
        if len(value) > MAX_ID_LENGTH:
            return f"is {len(value)} characters long; ids are at most {MAX_ID_LENGTH}"
        return (f"{value[:40]!r} holds characters ids may not have: ids are printable ASCII without spaces "
                "(letters, digits and punctuation)")
    if rule == _RULE_NAME:
        if len(value) > MAX_NAME_LENGTH:
            return f"is {len(value)} characters long; at most {MAX_NAME_LENGTH}"
        if (value.isascii() and value.isprintable()) or _NAME_BAD.search(value) is None:
            return None
        return f"{value[:40]!r} holds a control character, a line break or a lone surrogate"
    return _bad_text(value)


def _reject(field: str, value: Any) -> None:
    if field == "event_type":
        raise InvalidEventError(field, f"must be one of {', '.join(sorted(EVENT_TYPES))}, got {value!r}")
    if field == "category":
        raise InvalidEventError(field, f"must be a non-empty string, got {value!r}")
    if field == "value":
        raise InvalidEventError(field, f"must be a finite number that fits in 64 bits, got {value!r}")
    if field == "timestamp":
        raise InvalidEventError(field, f"must be epoch milliseconds between {MIN_TIMESTAMP_MS} (2000-01-01) and "
                                       f"{MAX_TIMESTAMP_MS} (2200-01-01), got {value!r}")
    if field == "metadata":
        raise InvalidEventError(field, f"must be a JSON object (mapping), got {type(value).__name__}")
    if field == "truncated":
        raise InvalidEventError(field, "must be a list of field names")
    raise InvalidEventError(field, f"must be a string, got {type(value).__name__}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_ALIASES = {_camel(n): n for n in _FIELD_ORDER if "_" in n}


def validate_event(event: TelemetryEvent) -> None:
    """Check an event's field types and values; raise :class:`InvalidEventError` naming the field.

    Besides types, it refuses what no store can hold, so that one bad value never
    costs the batch it would travel in: timestamps outside 2000-2200 (epoch ms),
    integers outside signed 64 bits and non-finite floats (in ``value`` and
    metadata), strings that are not valid UTF-8, ids outside printable ASCII (or
    longer than :data:`MAX_ID_LENGTH`), and names with line breaks.
    """
    checked_event_row(event)


def checked_event_row(event: TelemetryEvent) -> tuple[Any, ...]:
    """:func:`validate_event`, returning the event's row (:data:`ROW_FIELDS` order)."""
    fields = event.__dict__
    if type(fields.get("timestamp")) is not int:
        raise InvalidEventError("timestamp", f"must be integer epoch milliseconds, got {fields.get('timestamp')!r}")
    try:
        return checked_row(fields, convert=False)
    except _NeedsPlainCopy as exc:
        raise InvalidEventError(exc.path, f"holds a {exc.kind.__name__}, which JSON cannot store as it is: use plain "
                                          "float, dict and list values (a mapping given to track() is converted)") from None


#: An event's fields in the order of its row: what the ingest queue carries (``TelemetryEvent.to_row``) and what a
#: storage plugin's ``store_rows`` hook receives, ``truncated`` a tuple, ``metadata`` a dict (or, flat, its JSON text
#: in the queue's rows).  (The SQLite plugin's columns are in this order.)
ROW_FIELDS = ("id", "session_id", "event_type", "category", "action", "label", "value", "timestamp", "agent", "mode",
              "prompt", "parent_session_id", "stream_data", "status", "error_type", "error_message", "error_stack",
              "metadata", "truncated")
_RULE_VALUE, _RULE_TIMESTAMP, _RULE_METADATA, _RULE_TRUNCATED = 3, 4, 5, 6  # checked_row writes them as literals
_ROW_RULES = tuple(_STRING_RULES.get(name, {"value": _RULE_VALUE, "timestamp": _RULE_TIMESTAMP,
                                            "metadata": _RULE_METADATA, "truncated": _RULE_TRUNCATED}.get(name))
                   for name in ROW_FIELDS)
#: the row position of every field name, snake_case and the seed's camelCase
_ROW_INDEX = {name: i for i, name in enumerate(ROW_FIELDS)}
_ROW_INDEX.update({alias: _ROW_INDEX[name] for alias, name in _ALIASES.items()})


def event_from_row(row: tuple[Any, ...]) -> TelemetryEvent:
    """The event a row (:data:`ROW_FIELDS` order) holds, without validation (as :meth:`TelemetryEvent.restore`)."""
    if type(row[17]) is str:
        row = unpacked(row)
    event = object.__new__(TelemetryEvent)
    event.__dict__.update(zip(ROW_FIELDS, row))
    return event


def unpacked(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as the ingest queue may hold it (flat metadata as its JSON text) with its metadata a dict."""
    return (*row[:17], _loads(row[17]), row[18])


def row_metadata(value: Mapping[str, Any] | str | None) -> Mapping[str, Any]:
    """A row's metadata as a mapping: rows from the ingest queue may hold flat metadata as its JSON text."""
    if type(value) is str:
        return _loads(value) if value != "{}" else {}
    return value or {}


def events_of(items: Iterable[TelemetryEvent | tuple[Any, ...]]) -> list[TelemetryEvent]:
    """Events and rows (what the ingest queue holds) as events."""
    return [event_from_row(item) if type(item) is tuple else item for item in items]  # type: ignore[misc]


def rows_of(items: Iterable[TelemetryEvent | tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Events and rows (what the ingest queue holds) as rows (flat metadata may be its JSON text)."""
    return [item if type(item) is tuple else item.to_row() for item in items]  # type: ignore[union-attr]


def checked_row(data: Mapping[str, Any], convert: bool = True, pack: bool = False) -> tuple[Any, ...]:
    """Validate a mapping of event fields in one pass and return the event's row (:data:`ROW_FIELDS` order).

    What ``from_dict`` and ``track()`` run for every event: unknown keys, wrong types, a missing category or
    session id, an unknown event type and values no store can hold raise :class:`InvalidEventError` naming the
    field.  ``None`` values are "not given"; the id, the timestamp (now) and the event type (``custom``) get
    their defaults.  The common case (ASCII strings, short names, plain metadata) is decided with C-level
    string predicates; only a suspicious value takes the slow, explaining path.  ``convert`` turns what
    converts losslessly (numpy numbers, read-only mappings, named tuples, timestamps given as text, floats or
    datetimes) into plain values; without it those raise ``_NeedsPlainCopy``.  ``pack`` (the ingest queue's
    form) holds flat metadata (string keys, scalar values) as its JSON text: the row is then a tuple of atoms,
    which the garbage collector stops tracking at its first look, where a dict would keep it tracked (and
    the JSON is what a store writes anyway).

    A plain dict goes first through the checker compiled for its keys in their order (:func:`_shape_checker`,
    made the first time a shape is seen): it returns the same row for what it is sure of, without a loop over
    the keys, and hands anything else to the general checker, which converts or explains what is wrong.
    """
    if type(data) is dict:
        packed = True if pack else False
        try:
            fast = _SHAPES[packed][tuple(data)]
        except KeyError:
            fast = _learn_shape(data, packed)
        if fast is not None:
            row = fast(data)
            if row is not None:
                return row
    return _general_row(data, convert, pack)


def _general_row(data: Mapping[str, Any], convert: bool, pack: bool) -> tuple[Any, ...]:
    """:func:`checked_row` for any mapping, one key at a time (what the compiled checkers fall back on)."""
    slots: list[Any] = [None] * 19
    index = _ROW_INDEX
    rules = _ROW_RULES
    # the rule numbers are written as literals (0 text, 1 name, 2 id, 3 value, 4 timestamp, 5 metadata,
    # 6 truncated): constants cost less than globals, and this loop runs for every key of every event
    for key, val in data.items():
        if val is None:
            continue
        try:
            i = index[key]
        except KeyError:
            _unknown_field(key)
        rule = rules[i]
        kind = type(val)
        if kind is str:
            if rule == 0:
                if not val.isascii() and _not_utf8(val):
                    raise InvalidEventError(ROW_FIELDS[i], _bad_text(val) or "")
            elif rule == 1:
                if not (len(val) <= 256 and val.isascii() and val.isprintable()):
                    problem = _bad_string(rule, val)
                    if problem is not None:
                        raise InvalidEventError(ROW_FIELDS[i], problem)
            elif rule == 2:
                if not (0 < len(val) <= 256 and val.isascii() and val.isprintable() and " " not in val):
                    problem = _bad_string(rule, val)
                    if problem is not None:
                        raise InvalidEventError(ROW_FIELDS[i], problem)
            elif rule == 4 and convert:
                val = _timestamp(val)
            else:  # a string where a number, a mapping or a list belongs
                _reject(ROW_FIELDS[i], val)
        elif rule == 4:
            if kind is not int:
                if not convert or kind is bool or not isinstance(val, (float, _dt.date)):
                    _reject("timestamp", val)
                val = _timestamp(val)
            elif not MIN_TIMESTAMP_MS <= val <= MAX_TIMESTAMP_MS:
                _reject("timestamp", val)
        elif rule == 5:
            if kind is not dict:
                if not isinstance(val, Mapping):
                    _reject("metadata", val)
                if not convert:
                    raise _NeedsPlainCopy("metadata", kind)
                val = _plain(val)
        elif rule == 3:
            if kind is bool or not isinstance(val, (int, float)):
                _reject("value", val)
            if isinstance(val, int):
                if not INT64_MIN <= val <= INT64_MAX:
                    _reject("value", val)
            elif not math.isfinite(val):
                _reject("value", val)
            elif kind is not float:
                if not convert:
                    raise _NeedsPlainCopy("value", kind)
                val = float(val)
        elif rule == 6:
            if not isinstance(val, (list, tuple)) or not all(type(name) is str and not _not_utf8(name)
                                                              for name in val):
                _reject("truncated", val)
            if kind is not tuple:
                val = tuple(val)
        else:  # a string field given something else
            _reject(ROW_FIELDS[i], val)
        slots[i] = val
    event_type = slots[2]
    if event_type is None:
        slots[2] = event_type = "custom"
    elif event_type not in EVENT_TYPES:
        _reject("event_type", event_type)
    if not slots[3]:
        raise InvalidEventError("category", f"required: a non-empty string, got {slots[3]!r}")
    if event_type in _SESSION_TYPES and not slots[1]:
        raise InvalidEventError("session_id", f"required for {event_type} events")
    metadata = slots[17]
    if metadata:
        for mkey, item in metadata.items():  # the top level's common values decided here, the rest by _check_json
            if type(mkey) is str and mkey.isascii():
                mkind = type(item)
                if mkind is str:
                    if item.isascii():
                        continue
                elif mkind is int:
                    if -9223372036854775808 <= item <= 9223372036854775807:
                        continue
                elif mkind is float:
                    if _isfinite(item):
                        continue
                elif mkind is bool or item is None:
                    continue
            break
        else:
            if pack:
                slots[17] = _dumps(metadata).decode()
            metadata = None
    if metadata:
        try:
            _check_metadata(metadata)
        except _NeedsPlainCopy as exc:
            if not convert:
                raise
            # numpy numbers, read-only mappings, named tuples inside: converted losslessly, then checked again
            metadata = slots[17] = _plain(metadata)
            try:
                _check_metadata(metadata)
            except _NeedsPlainCopy:  # pragma: no cover - _plain converts every kind it raises for
                raise InvalidEventError(exc.path, f"holds a {exc.kind.__name__} that cannot be stored") from None
    elif slots[17] is None or (pack and not slots[17]):
        slots[17] = "{}" if pack else {}
    if slots[0] is None:
        slots[0] = new_id()
    if slots[7] is None:
        slots[7] = _time_ns() // 1_000_000
    if slots[18] is None:
        slots[18] = ()
    return tuple(slots)


#: The checkers compiled so far, by ``pack`` and then by a dict's keys in their order.  Only shapes a checker
#: can be made for are kept: not those with an unknown key, a missing category or a field named twice (errors,
#: which a hostile client could make endlessly), nor those with ``truncated``; past the limit nothing new is.
_SHAPES: dict[bool, dict[tuple[Any, ...], Callable[[dict[str, Any]], tuple[Any, ...] | None]]] = {
    False: {}, True: {}}
_SHAPE_LIMIT = 512
#: The metadata values the compiled checkers take as they are, besides finite floats (a subclass, a container or
#: anything else goes to the general checker).
_FLAT_TYPES = frozenset({str, int, bool, type(None)})


#: Names and ids that passed the checks lately (a session's id and its category come with every event of it):
#: looked up, not checked again.  Never the empty string (a name may be empty, a category may not).  Emptied
#: when full, so a stream of distinct ids costs memory no more than this many.
_NAMES_SEEN: set[str] = set()
_IDS_SEEN: set[str] = set()
_SEEN_LIMIT = 4096


def _new_name(value: str) -> bool:
    """Whether ``value`` (a str) is a name the compiled checkers may take as it is; kept in :data:`_NAMES_SEEN`."""
    if not (0 < len(value) <= MAX_NAME_LENGTH and value.isascii() and value.isprintable()):
        return False
    if len(_NAMES_SEEN) >= _SEEN_LIMIT:
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(value)
    return True


def _new_id_text(value: str) -> bool:
    """Whether ``value`` (a str) is an id the compiled checkers may take as it is; kept in :data:`_IDS_SEEN`."""
    if not (0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable() and " " not in value):
        return False
    if len(_IDS_SEEN) >= _SEEN_LIMIT:
        _IDS_SEEN.clear()
    _IDS_SEEN.add(value)
    return True


def _learn_shape(data: dict[str, Any], pack: bool) -> Callable[[dict[str, Any]], tuple[Any, ...] | None] | None:
    """The compiled checker for ``data``'s shape, made and kept the first time it is seen (see :data:`_SHAPES`)."""
    keys = tuple(data)
    if not all(type(key) is str and key in _ROW_INDEX for key in keys):
        return None
    shapes = _SHAPES[pack]
    if len(shapes) >= _SHAPE_LIMIT:
        return None
    checker = _shape_checker(keys, pack)
    if checker is not None:  # a shape only the general path takes costs little to find again, and is not kept
        shapes[keys] = checker
    return checker


def _shape_checker(keys: tuple[str, ...], pack: bool) -> Callable[[dict[str, Any]], tuple[Any, ...] | None] | None:
    """A function that checks a dict with exactly these keys, in this order, without a loop over them.

    It returns the row :func:`checked_row`'s general path would return, for the values it is sure of: plain
    ASCII names and ids (those seen lately looked up, not checked again), valid text, integer timestamps in
    range, finite numbers, flat metadata of plain scalars (ASCII, integers within 53 bits, finite floats,
    ``None``).  For anything else (a field given as ``None``, a subclass, a long or non-ASCII name, nested
    metadata, a number near a limit) it returns ``None`` and the general path decides, so both always agree;
    ``tests/test_shapes.py`` holds them to it.  ``None`` when the shape itself needs the general path (a
    missing category, two names of one field, ``truncated``).
    """
    slots = [_ROW_INDEX[key] for key in keys]
    if len(set(slots)) != len(slots) or 3 not in slots or 18 in slots:
        return None
    names = [f"v{j}" for j in range(len(keys))]
    at = dict(zip(slots, names))
    tests = []
    for slot, name in zip(slots, names):
        rule = _ROW_RULES[slot]
        if slot == 2:  # event_type: one of the five (all short ASCII names)
            tests.append(f"type({name}) is str and {name} in EVENT_TYPES")
            if 1 not in at:
                tests.append(f"{name} not in _SESSION_TYPES")
        elif rule == 0:
            tests.append(f"type({name}) is str and ({name}.isascii() or not _not_utf8({name}))")
        elif rule == 1:
            tests.append(f"type({name}) is str and ({name} in _NAMES_SEEN or _new_name({name}))")
        elif rule == 2:
            tests.append(f"type({name}) is str and ({name} in _IDS_SEEN or _new_id_text({name}))")
        elif rule == 3:
            tests.append(f"(type({name}) is float and _isfinite({name}) or type({name}) is int and "
                         f"{INT64_MIN} <= {name} <= {INT64_MAX})")
        elif rule == 4:
            tests.append(f"type({name}) is int and {MIN_TIMESTAMP_MS} <= {name} <= {MAX_TIMESTAMP_MS}")
        elif rule == 5:
            tests.append(f"type({name}) is dict")
    # keys and values taken in one step (unpacking runs in C, no other thread runs in between), and the keys
    # compared with the shape's: a dict another thread changed meanwhile goes to the general path
    pairs = ", ".join(f"(k{j}, {name})" for j, name in enumerate(names))
    same_keys = " and ".join(f"k{j} == {key!r}" for j, key in enumerate(keys))
    lines = ["def check(data):",
             "    try:",
             f"        {pairs}, = data.items()",
             "    except ValueError:",
             "        return None",
             f"    if not ({same_keys} and {' and '.join(tests)}):",
             "        return None"]
    metadata = at.get(17)
    if metadata is not None:
        lines += [f"    if {metadata}:",
                  f"        for item in {metadata}.values():",
                  "            kind = type(item)",
                  "            if kind not in _FLAT_TYPES and (kind is not float or not _isfinite(item)):",
                  "                return None",
                  "        try:",
                  f"            text = _dumps({metadata}, option={orjson.OPT_STRICT_INTEGER})  # > 53 bits: raises",
                  "        except TypeError:  # a key that is not a str, a lone surrogate, a big integer",
                  "            return None",
                  "        if not text.isascii():",
                  "            return None"]
        if pack:  # the queue's form: flat metadata as its JSON text
            lines += ["        meta = text.decode()", "    else:", "        meta = '{}'"]
        else:  # the caller's dict itself, as the general path keeps it
            lines += [f"    meta = {metadata}"]
    if 0 not in at:  # new_id(), written out: one call less per event
        lines += ["    ms = _time_ns() // 1000000",
                  "    current = _current",
                  "    if current[0] != ms:",
                  "        current = _set_current(ms)",
                  "    made = (current[1] | next(_sequence) & 0xFFFFFFFFFFFF).to_bytes(16).hex()"]
    # the row: the given values in their slots, the defaults elsewhere (a fresh {} for each event)
    defaults = {0: "made", 2: "'custom'", 7: "_time_ns() // 1000000" if 0 in at else "ms",
                17: "'{}'" if pack else "{}", 18: "()"}
    row = ["meta" if slot == 17 and metadata is not None else at.get(slot) or defaults.get(slot, "None")
           for slot in range(19)]
    lines.append(f"    return ({', '.join(row)})")
    made: dict[str, Any] = {}
    # defined with this module's globals: the id's state (_current, _sequence) is read live, as new_id reads it
    exec(compile("\n".join(lines), f"<checked_row {', '.join(keys)}>", "exec"), globals(), made)  # noqa: S102
    return made["check"]  # type: ignore[no-any-return]


def _timestamp(value: Any) -> int:
    """A timestamp given as text, a float or a datetime, as epoch milliseconds in the accepted range."""
    try:
        ms = to_ms(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidEventError("timestamp", str(exc)) from None
    if type(ms) is not int or not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        _reject("timestamp", value)
    return ms


def _unknown_field(key: Any) -> None:
    shown = key if isinstance(key, str) and key.isprintable() else repr(key)
    raise InvalidEventError(shown[:100], f"unknown field; known fields: {', '.join(_FIELD_ORDER)}")


_isfinite = math.isfinite
_dumps = orjson.dumps
_loads = orjson.loads


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    """Metadata's top level with the common values decided inline; anything else goes to :func:`_check_json`."""
    for key, item in metadata.items():
        if type(key) is str and key.isascii():
            kind = type(item)
            if kind is str:
                if item.isascii():
                    continue
            elif kind is int:
                if INT64_MIN <= item <= INT64_MAX:
                    continue
            elif kind is float:
                if _isfinite(item):
                    continue
            elif kind is bool or item is None:
                continue
        _check_json("metadata", {key: item}, 0)


class _NeedsPlainCopy(Exception):
    """Internal: a value JSON encoders refuse as it is but that converts losslessly (a float subclass such as
    ``numpy.float64``, a ``MappingProxyType``, a namedtuple).  ``from_dict`` converts and checks again."""

    def __init__(self, path: str, kind: type) -> None:
        self.path = path
        self.kind = kind
        super().__init__(path)


def _check_json(path: str, value: Any, depth: int) -> None:
    """Raise :class:`InvalidEventError` at the first part of ``value`` that JSON (and every store) cannot hold.

    Strings must be valid UTF-8, integers signed 64-bit, floats finite, keys strings.  Containers and numbers
    of other types than JSON's own (and the subclasses every encoder takes) raise :class:`_NeedsPlainCopy`.
    """
    if depth > 32:
        raise InvalidEventError(path, "nested more than 32 levels deep")
    kind = type(value)
    if kind is dict or (kind is not str and kind is not list and isinstance(value, dict)):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidEventError(f"{path}.{key!r}"[:200], "object keys must be strings")
            if _not_utf8(key):
                raise InvalidEventError(f"{path}.{key.encode('utf-8', 'backslashreplace').decode()}"[:200],
                                        "the key is not valid UTF-8 (a lone surrogate)")
            item_kind = type(item)
            if item_kind is str:
                if _not_utf8(item):
                    raise InvalidEventError(f"{path}.{key}"[:200], _bad_text(item) or "")
            elif item_kind is int:
                if not INT64_MIN <= item <= INT64_MAX:
                    raise InvalidEventError(f"{path}.{key}"[:200], f"integer {item} does not fit in 64 bits")
            elif item_kind is not bool and item is not None:
                _check_json(f"{path}.{key}", item, depth + 1)
    elif kind is list or kind is tuple or (kind is not str and isinstance(value, list)):
        for index, item in enumerate(value):
            _check_json(f"{path}[{index}]", item, depth + 1)
    elif isinstance(value, str):
        if _not_utf8(value):
            raise InvalidEventError(path[:200], _bad_text(value) or "")
    elif kind is float:
        if not math.isfinite(value):
            raise InvalidEventError(path[:200], f"must be a finite number, got {value!r}")
    elif kind is bool or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidEventError(path[:200], f"integer {value} does not fit in 64 bits")
    elif isinstance(value, (float, Mapping, tuple)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEventError(path[:200], f"must be a finite number, got {value!r}")
        raise _NeedsPlainCopy(path[:200], kind)
    else:
        raise InvalidEventError(path[:200], f"is not JSON-serialisable ({kind.__name__})")


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts, tuples as lists and float subclasses as floats (what ``_check_json`` asks)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    return value


_TOKEN_KEYS = {
    "input": ("input_tokens", "prompt_tokens", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output": ("output_tokens", "completion_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read": ("cache_read_tokens", "cache_read_input_tokens", "cached_tokens",
                   "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "cache_creation": ("cache_creation_tokens", "cache_creation_input_tokens",
                       "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"),
    "reasoning": ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}


_ANY_TOKEN_KEY = frozenset(k for keys in _TOKEN_KEYS.values() for k in keys) | {"usage"}


@attrs.frozen
class TokenUsage:
    """Token counts of a call or a session.

    ``input`` already includes ``cache_read`` and ``cache_creation``, and
    ``output`` already includes ``reasoning``: those three are subsets, so
    ``total`` is ``input + output`` and nothing is counted twice.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        """Input plus output tokens."""
        return self.input + self.output

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.input + other.input, self.output + other.output, self.cache_read + other.cache_read,
                          self.cache_creation + other.cache_creation, self.reasoning + other.reasoning)

    def __bool__(self) -> bool:
        return bool(self.input or self.output or self.cache_read or self.cache_creation or self.reasoning)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TokenUsage:
        """Read token counts from event metadata.

        Understands ``input_tokens``/``output_tokens`` (and the OpenAI names
        ``prompt_tokens``/``completion_tokens``), ``cache_read_tokens``,
        ``cache_creation_tokens``, ``reasoning_tokens``, the OpenTelemetry
        ``gen_ai.usage.*`` names, and the same keys inside a ``usage`` object.
        """
        if not metadata or metadata.keys().isdisjoint(_ANY_TOKEN_KEY):
            return _NO_TOKENS
        sources = [metadata]
        usage = metadata.get("usage")
        if isinstance(usage, Mapping):
            sources.append(usage)
        counts = {}
        for field, keys in _TOKEN_KEYS.items():
            for source in sources:
                for key in keys:
                    val = source.get(key)
                    if val is not None and isinstance(val, (int, float)) and not isinstance(val, bool) and val > 0:
                        counts[field] = int(val)
                        break
                if field in counts:
                    break
        return cls(**counts) if counts else _NO_TOKENS


_NO_TOKENS = TokenUsage()
_TOKEN_FIELDS = frozenset(f.name for f in attrs.fields(TokenUsage))


@attrs.frozen
class Session:
    """A session: one AI interaction from start to end, summarised from its events.

    ``duration_ms`` and ``ttft_ms`` (time to the first streamed chunk) are
    derived from the timestamps.  ``started_at`` is the time of the start event,
    or of the earliest event while no start event has been seen (``has_start``).  ``parent_id`` links a session to the one it
    ran inside (agent -> LLM call -> tool call); ``children`` is filled when a
    tree is asked for.
    """

    id: str
    agent: str | None = None
    mode: str | None = None
    prompt: str | None = None
    status: str = "active"
    parent_id: str | None = None
    started_at: int | None = None
    ended_at: int | None = None
    first_event_at: int | None = None
    last_event_at: int | None = None
    first_stream_at: int | None = None
    event_count: int = 0
    stream_count: int = 0
    error_count: int = 0
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    tokens: TokenUsage = _NO_TOKENS
    last_error: str | None = None
    has_start: bool = False
    children: tuple[Session, ...] = ()
    #: what the session is: ``llm`` (a model call), ``agent``, ``tool``, ``chain``, ``embedding``, ``retriever``...
    kind: str | None = None
    #: the model that answered (the response model when it was reported, else the requested one)
    model: str | None = None
    #: the conversation (chat thread, user session) the session belongs to, across traces and processes
    conversation_id: str | None = None
    user_id: str | None = None
    #: estimated dollars of this session's own calls (the analytics plugin's price table), ``None`` unknown
    cost_usd: float | None = None
    #: with ``get_session(id, tree=True)``: tokens and dollars of the session and all its descendants
    tree_tokens: TokenUsage | None = None
    tree_cost_usd: float | None = None

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from start to end, or ``None`` while the session is open."""
        if self.ended_at is None or self.started_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def ttft_ms(self) -> int | None:
        """Milliseconds from start to the first streamed chunk, if there was one."""
        if self.first_stream_at is None or self.started_at is None:
            return None
        return self.first_stream_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """The session as a JSON-ready dict, with derived durations and nested children."""
        out = attrs.asdict(self, recurse=False)
        out["tokens"] = attrs.asdict(self.tokens) | {"total": self.tokens.total}
        if self.tree_tokens is not None:
            out["tree_tokens"] = attrs.asdict(self.tree_tokens) | {"total": self.tree_tokens.total}
        out["metadata"] = dict(self.metadata)
        out["duration_ms"] = self.duration_ms
        out["ttft_ms"] = self.ttft_ms
        out["children"] = [child.to_dict() for child in self.children]
        return out


def summarize_sessions(events: Iterable[TelemetryEvent], existing: Mapping[str, Session]) -> dict[str, Session]:
    """Fold events into the sessions they belong to.

    ``existing`` holds the current state of the sessions concerned (missing
    ones start empty).  Returns the updated sessions by id.  Every storage
    plugin calls this (or :func:`fold_session_rows`, the same fold on rows) so
    that all of them agree on what a session is; the result does not depend on
    the order in which events or batches arrive.
    """
    folded = fold_session_rows([event.to_row() for event in events],
                               {sid: session_to_row(session) for sid, session in existing.items()})
    return {sid: session_from_row(row) for sid, row in folded.items()}


#: A session's stored fields in the order of its row (:func:`fold_session_rows`), ``metadata`` a dict, the token
#: counts flattened.  (The SQLite plugin's columns are in this order.)
SESSION_ROW_FIELDS = (
    "id", "agent", "mode", "prompt", "status", "parent_id", "started_at", "ended_at", "first_event_at",
    "last_event_at", "first_stream_at", "event_count", "stream_count", "error_count", "metadata",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "reasoning_tokens", "last_error",
    "has_start", "kind", "model", "conversation_id", "user_id",
)


def session_to_row(s: Session) -> tuple[Any, ...]:
    """A session's stored fields in :data:`SESSION_ROW_FIELDS` order."""
    t = s.tokens
    return (s.id, s.agent, s.mode, s.prompt, s.status, s.parent_id, s.started_at, s.ended_at, s.first_event_at,
            s.last_event_at, s.first_stream_at, s.event_count, s.stream_count, s.error_count, s.metadata,
            t.input, t.output, t.cache_read, t.cache_creation, t.reasoning, s.last_error, bool(s.has_start),
            s.kind, s.model, s.conversation_id, s.user_id)


def session_from_row(row: tuple[Any, ...], *, metadata_json: bool = False) -> Session:
    """The session a row (:data:`SESSION_ROW_FIELDS` order, ``metadata`` a mapping) holds; with
    ``metadata_json`` the row's metadata is JSON text (as a SQL column keeps it), parsed here."""
    (id_, agent, mode, prompt, status, parent_id, started_at, ended_at, first_event_at, last_event_at,
     first_stream_at, event_count, stream_count, error_count, metadata, tin, tout, tcr, tcc, treas, last_error,
     has_start, kind, model, conversation_id, user_id) = row
    if metadata_json:
        metadata = orjson.loads(metadata) if metadata else None
    return Session(
        id=id_, agent=agent, mode=mode, prompt=prompt, status=status, parent_id=parent_id, started_at=started_at,
        ended_at=ended_at, first_event_at=first_event_at, last_event_at=last_event_at,
        first_stream_at=first_stream_at, event_count=event_count or 0, stream_count=stream_count or 0,
        error_count=error_count or 0, metadata=metadata if metadata is not None else {},
        tokens=TokenUsage(tin or 0, tout or 0, tcr or 0, tcc or 0, treas or 0), last_error=last_error,
        has_start=bool(has_start), kind=kind, model=model, conversation_id=conversation_id, user_id=user_id,
    )


def fold_session_rows(rows: Iterable[tuple[Any, ...]], existing: Mapping[str, tuple[Any, ...]]
                      ) -> dict[str, tuple[Any, ...]]:
    """:func:`summarize_sessions` on rows: event rows (:data:`ROW_FIELDS`) into session rows
    (:data:`SESSION_ROW_FIELDS`), ``existing`` the current rows of the sessions concerned.

    What a storage plugin's writer runs per batch: no ``Session`` or ``TokenUsage`` objects on the way.
    """
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        sid = row[1]
        if sid:
            bucket = grouped.get(sid)
            if bucket is None:
                grouped[sid] = [row]
            else:
                bucket.append(row)
    return {sid: _fold(sid, batch, existing.get(sid)) for sid, batch in grouped.items()}


def fold_session_deltas(rows: Iterable[tuple[Any, ...]]) -> dict[str, tuple[tuple[Any, ...], bool, bool]]:
    """A batch's sessions folded as if new (``fold_session_rows(rows, {})``), each with whether a start event
    of the batch gave its agent and its prompt: what :func:`merge_session_rows` needs to add the batch to the
    stored rows later, elsewhere (another process, or the database server), exactly as
    :func:`fold_session_rows` with those rows as ``existing`` would.

    A fold falls back to the category for the agent and to any event's prompt; a stored session's own values
    outrank those fallbacks but not a start event's, hence the two flags.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    folds = fold_session_rows(rows, {})
    given: dict[str, list[bool]] = {}
    for r in rows:
        if r[2] == "start" and r[1]:
            flags = given.get(r[1])
            if flags is None:
                flags = given[r[1]] = [False, False]
            flags[0] = flags[0] or r[8] is not None
            flags[1] = flags[1] or r[10] is not None
    return {sid: (row, *given.get(sid, (False, False))) for sid, row in folds.items()}  # type: ignore[misc]


def merge_session_rows(deltas: Mapping[str, tuple[tuple[Any, ...], bool, bool]],
                       existing: Mapping[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """The session rows after adding each delta (:func:`fold_session_deltas`) to its stored row in ``existing``
    (a session not there is its delta).  Equal to :func:`fold_session_rows` over the delta's events with
    ``existing`` as the prior: counts and tokens add up, first times take the least and last times the
    greatest, the latest end decides the status, metadata merges (newer keys win), a start names the agent and
    the prompt.  The PostgreSQL plugin runs the same merge in SQL."""
    merged: dict[str, tuple[Any, ...]] = {}
    for sid, (delta, agent_given, prompt_given) in deltas.items():
        prior = existing.get(sid)
        merged[sid] = delta if prior is None else _merge(prior, delta, agent_given, prompt_given)
    return merged


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None or a <= b else b


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None or a >= b else b


def _merge(prior: tuple[Any, ...], delta: tuple[Any, ...], agent_given: bool, prompt_given: bool) -> tuple[Any, ...]:
    (sid, p_agent, p_mode, p_prompt, p_status, p_parent, p_started, p_ended, p_first, p_last, p_first_stream,
     p_events, p_streams, p_errors, p_metadata, p_tin, p_tout, p_tcr, p_tcc, p_treas, p_error, p_has_start,
     *_labels) = prior
    (_, d_agent, d_mode, d_prompt, d_status, d_parent, d_started, d_ended, d_first, d_last, d_first_stream,
     d_events, d_streams, d_errors, d_metadata, d_tin, d_tout, d_tcr, d_tcc, d_treas, d_error, d_has_start,
     *_labels) = delta
    if d_ended is not None and (p_ended is None or d_ended >= p_ended):
        ended, status = d_ended, d_status
    else:
        ended, status = p_ended, p_status
    first = _least(p_first, d_first)
    if p_has_start and d_has_start:
        started = _least(p_started, d_started)
    else:
        started = d_started if d_has_start else p_started if p_has_start else first
    metadata = {**p_metadata, **d_metadata} if p_metadata else dict(d_metadata or {})
    return (sid, d_agent if agent_given or p_agent is None else p_agent,
            d_mode if d_mode is not None else p_mode,
            d_prompt if prompt_given or p_prompt is None else p_prompt,
            status, d_parent or p_parent, started, ended, first, _greatest(p_last, d_last),
            _least(p_first_stream, d_first_stream), (p_events or 0) + d_events, (p_streams or 0) + d_streams,
            (p_errors or 0) + d_errors, metadata, (p_tin or 0) + d_tin, (p_tout or 0) + d_tout,
            (p_tcr or 0) + d_tcr, (p_tcc or 0) + d_tcc, (p_treas or 0) + d_treas, d_error or p_error,
            bool(p_has_start or d_has_start), _label(metadata, "kind"), _label(metadata, "model"),
            _label(metadata, "conversation_id"), _label(metadata, "user_id"))


def _fold(sid: str, rows: list[tuple[Any, ...]], prior: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if prior is None:
        agent = mode = prompt = parent_id = started = ended = first = last = first_stream = last_error = None
        status, event_count, stream_count, error_count, has_start = "active", 0, 0, 0, False
        tin = tout = tcr = tcc = treas = 0
        metadata: dict[str, Any] = {}
    else:
        (_, agent, mode, prompt, status, parent_id, started, ended, first, last, first_stream, event_count,
         stream_count, error_count, prior_metadata, tin, tout, tcr, tcc, treas, last_error, has_start,
         *_labels) = prior
        if not has_start:
            started = None
        metadata = dict(prior_metadata) if prior_metadata else {}
        event_count, stream_count, error_count = event_count or 0, stream_count or 0, error_count or 0
        tin, tout, tcr, tcc, treas = tin or 0, tout or 0, tcr or 0, tcc or 0, treas or 0
    for r in rows:
        ts = r[7]
        if first is None or ts < first:
            first = ts
        if last is None or ts > last:
            last = ts
        kind = r[2]
        event_metadata = r[17]
        if type(event_metadata) is str:  # flat metadata from the ingest queue, as JSON text
            event_metadata = _loads(event_metadata) if event_metadata != "{}" else None
        if kind == "stream":
            stream_count += 1
            if first_stream is None or ts < first_stream:
                first_stream = ts
        elif kind == "start":
            if started is None or ts < started:
                started = ts
            agent = r[8] if r[8] is not None else agent
            mode = r[9] if r[9] is not None else mode
            prompt = r[10] if r[10] is not None else prompt
            parent_id = r[11] or parent_id
        elif kind == "end":
            if ended is None or ts >= ended:
                ended = ts
                status = r[13] or "completed"
            tally = event_metadata.get("sampled_out") if event_metadata else None
            if isinstance(tally, Mapping):
                # events sampling dropped from this session, added back so the summary stays exact
                event_count += int(tally.get("events", 0))
                stream_count += int(tally.get("streams", 0))
                tally_first = tally.get("first_stream_at")
                if isinstance(tally_first, int) and (first_stream is None or tally_first < first_stream):
                    first_stream = tally_first
                counts = tally.get("tokens")
                if isinstance(counts, Mapping):
                    extra = TokenUsage(**{k: int(v) for k, v in counts.items() if k in _TOKEN_FIELDS})
                    tin, tout, tcr = tin + extra.input, tout + extra.output, tcr + extra.cache_read
                    tcc, treas = tcc + extra.cache_creation, treas + extra.reasoning
        elif kind == "error":
            error_count += 1
            # an error event that says nothing (no message, no type) leaves the last known error standing
            last_error = r[15] or r[14] or last_error
        if prompt is None and r[10] is not None:
            # no start event gave one (content sent apart from the span, as OTel GenAI log events are)
            prompt = r[10]
        if agent is None:
            agent = r[3]
        if event_metadata:
            metadata.update(event_metadata)
            if not event_metadata.keys().isdisjoint(_ANY_TOKEN_KEY):
                t = TokenUsage.from_metadata(event_metadata)
                tin, tout, tcr = tin + t.input, tout + t.output, tcr + t.cache_read
                tcc, treas = tcc + t.cache_creation, treas + t.reasoning
    return (sid, agent, mode, prompt, status, parent_id, started if started is not None else first, ended, first,
            last, first_stream, event_count + len(rows), stream_count, error_count, metadata, tin, tout, tcr, tcc,
            treas, last_error, started is not None, _label(metadata, "kind"), _label(metadata, "model"),
            _label(metadata, "conversation_id"), _label(metadata, "user_id"))


#: Metadata keys a session summary lifts into fields of its own (``Session.kind`` ...): the GenAI mapping and
#: ``track_start(kind=..., conversation_id=..., user_id=...)`` write them; the latest event's value wins, so the
#: end event's response model replaces the start's requested one.
SESSION_LABELS = ("kind", "model", "conversation_id", "user_id")


def _label(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if isinstance(value, str):
        return value[:MAX_NAME_LENGTH] or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a numeric user or conversation id
    return None


_ORDERS = ("asc", "desc")
_WORD = re.compile(r"[^\W_]+")


def search_words(text: str) -> list[str]:
    """The words full-text search looks for: runs of letters and digits, lower-cased, a Latin letter with one
    diacritic folded to its base letter (``café`` is ``cafe``).

    This is how SQLite's ``unicode61`` tokenizer (``remove_diacritics 1``) splits and folds text, so every
    storage plugin matches ``QueryFilter.text`` the same way: an event matches when it contains every word, in
    its prompt or its streamed text.
    """
    if text.isascii():
        # bytes.translate maps every byte in C: letters lowered, digits kept, anything else a space
        return text.encode().translate(_ASCII_WORDS).decode().split()
    return _WORD.findall(text.translate(_FOLD).lower())


#: ``bytes.translate`` table of :func:`search_words` for ASCII text: a letter to its lower case, a digit to
#: itself, every other byte (``_`` included, as ``[^\W_]`` has it) to a space
_ASCII_WORDS = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or 48 <= c <= 57 else 32 for c in range(256))


class _DiacriticFolding(dict[int, int | None]):
    """``str.translate`` table, filled on demand: a character whose canonical decomposition is an ASCII letter
    and one combining mark stands for that letter (``é`` -> ``e``, ``İ`` -> ``I``); ``ǘ`` (two marks), Greek and
    Cyrillic letters stay as they are; a combining diacritic (U+0300-U+036F) on its own is dropped, joining the
    letters around it, as in SQLite's ``remove_diacritics 1``."""

    def __missing__(self, code: int) -> int | None:
        import unicodedata

        if 0x300 <= code <= 0x36F:  # a combining diacritic written apart is part of the word, and dropped
            self[code] = None
            return None
        parts = unicodedata.normalize("NFD", chr(code))
        folded = code
        if len(parts) == 2 and parts[0].isascii() and parts[0].isalpha() and unicodedata.combining(parts[1]):
            folded = ord(parts[0])
        self[code] = folded
        return folded


_FOLD = _DiacriticFolding()


def _opt_time(value: object, field: attrs.Attribute) -> int | None:
    if value is None:
        return None
    try:
        return to_ms(value)
    except ValueError as exc:  # a filter's error names its field, as every other filter check does
        raise InvalidQueryError(field.name, str(exc)) from None


_TIME_FIELD = attrs.Converter(_opt_time, takes_field=True)


def _tuple(value: object) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    return tuple(value)


@attrs.frozen
class QueryFilter:
    """Which events a query returns.

    Every field is optional.  ``since``/``until`` accept anything
    :func:`vibekit_telemetry.times.to_ms` does (``"1h"``, ISO dates, datetimes).
    ``metadata`` matches top-level metadata keys by equality.  ``text`` is a
    full-text search over prompts and streamed text.  Results are ordered by
    time (``order="desc"``, newest first, by default); ``cursor`` continues from
    the page that returned it.
    """

    category: str | None = None
    event_type: str | None = None
    session_id: str | None = None
    session_ids: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    action: str | None = None
    label: str | None = None
    since: int | None = attrs.field(default=None, converter=_TIME_FIELD)
    until: int | None = attrs.field(default=None, converter=_TIME_FIELD)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    text: str | None = None
    limit: int | None = None
    offset: int = 0
    order: str = "desc"
    cursor: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.order not in _ORDERS:
            raise InvalidQueryError("order", f"must be 'asc' or 'desc', got {self.order!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise InvalidQueryError("limit", f"must be a non-negative integer, got {self.limit!r}")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise InvalidQueryError("offset", f"must be a non-negative integer, got {self.offset!r}")
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            raise InvalidQueryError("event_type", f"must be one of {', '.join(sorted(EVENT_TYPES))}")
        if not isinstance(self.metadata, Mapping):
            raise InvalidQueryError("metadata", "must be a mapping of key to value")
        if self.cursor is not None:
            decode_cursor(self.cursor)
        if self.text is not None and not search_words(self.text):
            raise InvalidQueryError("text", f"{self.text!r} has no words to search for")

    @classmethod
    def build(cls, filter: QueryFilter | Mapping[str, Any] | None = None, **kwargs: Any) -> QueryFilter:
        """A filter from an existing filter, a mapping, and/or keyword arguments.

        Also accepts the seed's ``time_range={"start": ..., "end": ...}`` and
        camelCase keys such as ``eventType``.
        """
        return _build_filter(cls, filter, kwargs)

    def matches(self, event: TelemetryEvent) -> bool:
        """Whether an event satisfies every condition of this filter (limit, order and cursor aside)."""
        if self.category is not None and event.category != self.category:
            return False
        if self.event_type is not None and event.event_type != self.event_type:
            return False
        if self.session_id is not None and event.session_id != self.session_id:
            return False
        if self.session_ids and event.session_id not in self.session_ids:
            return False
        if self.action is not None and event.action != self.action:
            return False
        if self.label is not None and event.label != self.label:
            return False
        if self.since is not None and event.timestamp < self.since:
            return False
        if self.until is not None and event.timestamp > self.until:
            return False
        for key, val in self.metadata.items():
            if key not in event.metadata or event.metadata[key] != val:
                return False
        if self.text:
            found = set(search_words(f"{event.prompt or ''} {event.stream_data or ''}"))
            if not all(word in found for word in search_words(self.text)):
                return False
        return True


@attrs.frozen
class SessionFilter:
    """Which sessions ``get_sessions`` returns: by status, agent, mode, parent, kind, model, conversation, user,
    start time and prompt text.

    ``text`` matches prompts containing it (case-insensitive, for ASCII letters in SQLite; an encrypted prompt
    never matches).  ``sort`` is the column to order by (one of
    :data:`SESSION_SORTS`), ``order`` its direction; ties go by start time, then id.
    """

    status: str | None = None
    agent: str | None = None
    mode: str | None = None
    parent_id: str | None = None
    kind: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    user_id: str | None = None
    root_only: bool = False
    since: int | None = attrs.field(default=None, converter=_TIME_FIELD)
    until: int | None = attrs.field(default=None, converter=_TIME_FIELD)
    text: str | None = None
    limit: int | None = None
    offset: int = 0
    order: str = "desc"
    sort: str = "started_at"

    def __attrs_post_init__(self) -> None:
        if self.order not in _ORDERS:
            raise InvalidQueryError("order", f"must be 'asc' or 'desc', got {self.order!r}")
        if self.sort not in SESSION_SORTS:
            raise InvalidQueryError("sort", f"must be one of {', '.join(SESSION_SORTS)}, got {self.sort!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise InvalidQueryError("limit", f"must be a non-negative integer, got {self.limit!r}")

    def sort_key(self, session: Session) -> tuple[Any, ...]:
        """The ordering ``sort`` asks for, as a key for ``sorted`` (missing values sort first)."""
        value = SESSION_SORTS[self.sort](session)
        return (value is not None, value if value is not None else 0, session.started_at or 0, session.id)

    @classmethod
    def build(cls, filter: SessionFilter | Mapping[str, Any] | None = None, **kwargs: Any) -> SessionFilter:
        """A session filter from an existing filter, a mapping, and/or keyword arguments."""
        return _build_filter(cls, filter, kwargs)

    def matches(self, session: Session) -> bool:
        """Whether a session satisfies this filter (limit and order aside)."""
        if self.status is not None and session.status != self.status:
            return False
        if self.agent is not None and session.agent != self.agent:
            return False
        if self.mode is not None and session.mode != self.mode:
            return False
        if self.parent_id is not None and session.parent_id != self.parent_id:
            return False
        if self.kind is not None and session.kind != self.kind:
            return False
        if self.model is not None and session.model != self.model:
            return False
        if self.conversation_id is not None and session.conversation_id != self.conversation_id:
            return False
        if self.user_id is not None and session.user_id != self.user_id:
            return False
        if self.root_only and session.parent_id is not None:
            return False
        started = session.started_at or 0
        if self.since is not None and started < self.since:
            return False
        if self.until is not None and started > self.until:
            return False
        if self.text and self.text.casefold() not in (session.prompt or "").casefold():
            return False
        return True


#: What ``SessionFilter.sort`` accepts, and how each reads a session.
SESSION_SORTS: dict[str, Callable[[Session], Any]] = {
    "started_at": lambda s: s.started_at,
    "ended_at": lambda s: s.ended_at,
    "duration_ms": lambda s: s.duration_ms,
    "ttft_ms": lambda s: s.ttft_ms,
    "event_count": lambda s: s.event_count,
    "error_count": lambda s: s.error_count,
    "tokens": lambda s: s.tokens.total,
    "agent": lambda s: s.agent,
    "status": lambda s: s.status,
}


def _build_filter(cls: type, filter: Any, kwargs: dict[str, Any]) -> Any:
    base: dict[str, Any] = {}
    if isinstance(filter, cls):
        base = attrs.asdict(filter, recurse=False)
    elif filter is not None:
        base = dict(filter)
    base.update(kwargs)
    return cls(**_normalise_filter_keys(cls, base))


def _normalise_filter_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in attrs.fields(cls)}
    out: dict[str, Any] = {}
    for key, val in data.items():
        if key in ("time_range", "timeRange") and val is not None:
            out["since"] = val.get("start")
            out["until"] = val.get("end")
            continue
        name = key if key in names else _snake(key)
        if name not in names:
            raise InvalidQueryError(key, f"unknown filter; known filters: {', '.join(sorted(names))}")
        out[name] = val
    return out


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def encode_cursor(event: TelemetryEvent) -> str:
    """An opaque cursor pointing just past ``event`` in time order."""
    return base64.urlsafe_b64encode(f"{event.timestamp}:{event.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The ``(timestamp, id)`` a cursor points past; raises :class:`InvalidQueryError` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, event_id = raw.partition(":")
        if not event_id:
            raise ValueError
        return int(ts), event_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidQueryError("cursor", "malformed; pass the next_cursor of a previous page") from None


@attrs.frozen
class Page:
    """One page of a query: the events and the cursor of the next page (``None`` at the end)."""

    events: list[TelemetryEvent]
    next_cursor: str | None


@attrs.frozen
class Anomaly:
    """A finding of an anomaly detector (the ``detect`` hook)."""

    metric: str
    timestamp: int
    value: float
    expected_low: float | None = None
    expected_high: float | None = None
    score: float = 0.0
    severity: str = "medium"
    description: str = ""
    detector: str = ""
