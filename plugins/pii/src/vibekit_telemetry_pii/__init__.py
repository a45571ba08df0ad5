"""The ``pii`` plugin: redact personal data and secrets before an event is queued (``before_track``).

Enable with ``[security.pii] enabled = true`` (or ``plugins = ["pii"]``).  Every
string an event carries is scanned: prompt, streamed text, label, action,
error message and stack, and metadata values at any depth (keys too are
checked: a key named like a secret has its whole value replaced).  Findings
become ``[REDACTED_<TYPE>]``, the labels of the TypeScript seed (a custom
detector's ``replacement`` where it has one, in free text and in metadata
alike); the original values are never stored or logged.

``redact_fields`` names fields whose values are replaced whole by
``[REDACTED_FIELD]``, whatever they hold: an event field (``"prompt"``), a
metadata path (``"metadata.customer.note"``, or ``"customer.note"``: only metadata
nests; through lists, every item), or a bare metadata key (``"customer_note"``, at
any depth, any case).

Streamed text is scanned across chunk boundaries: a chunk's trailing word (the
run of characters after its last whitespace, up to ``carry_chars``) is held
back and scanned together with the session's next chunk, so a secret or an
address split between two chunks is still found whole.  The price: each stored
chunk ends at a word boundary, and the last held-back piece is stored with the
session's end (or error) event as its ``stream_data``.  Reassembled text is
unchanged.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs

from vibekit_telemetry import ConfigError, TelemetryEvent, hookimpl

from .detectors import BUILTIN, Scanner, canonical_pattern

__all__ = ["FIELD_LABEL", "CustomDetector", "PIIRedactor", "Scanner", "canonical_pattern"]

DEFAULT_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "api-key",
                       "authorization", "auth", "credential", "private_key", "access_key", "session_key", "cookie")
_TEXT_FIELDS = ("prompt", "stream_data", "label", "action", "error_message", "error_stack")
_TAIL = re.compile(r"\S+\Z")
COUNTS_KEY = "pii_redactions"  # the session's running totals (the session's metadata ends with its totals)
EVENT_COUNTS_KEY = "pii_redacted"  # this event's own counts (analytics sums these)


FIELD_LABEL = "[REDACTED_FIELD]"
#: event fields ``redact_fields`` may not name: without them an event cannot be stored, found or counted
_UNREDACTABLE = frozenset({"id", "event_type", "category", "session_id", "parent_session_id", "timestamp", "value",
                           "status", "error_type", "truncated", "agent", "mode"})
_CAMEL_FIELDS = {"streamData": "stream_data", "errorMessage": "error_message", "errorStack": "error_stack"}


def _pattern(value: Any) -> str | re.Pattern[str]:
    if isinstance(value, (str, re.Pattern)):
        return value
    raise ConfigError(f"custom_detectors: pattern must be a regular expression (a string or re.compile(...)), "
                      f"got {value!r}")


@attrs.frozen
class CustomDetector:
    """``{name, pattern, replacement}`` from ``security.pii.custom_detectors``.

    ``pattern`` is a string or a compiled ``re.Pattern`` (its flags are kept).
    """

    name: str
    pattern: Any = attrs.field(converter=_pattern)
    replacement: str | None = None


def _field_paths(fields: tuple[str, ...]) -> tuple[dict[str, None], list[list[str]], set[str]]:
    """``redact_fields`` split into event fields, metadata paths and bare metadata keys (lower-cased)."""
    top: dict[str, None] = {}
    paths: list[list[str]] = []
    keys: set[str] = set()
    for raw in fields:
        if not isinstance(raw, str) or not raw.strip(".").strip():
            raise ConfigError(f"redact_fields: expected field names such as 'prompt' or 'metadata.note', got {raw!r}")
        head, _, rest = raw.partition(".")
        head = _CAMEL_FIELDS.get(head, head)
        if head in _TEXT_FIELDS and not rest:
            top[head] = None
        elif head == "metadata" and rest:
            paths.append(rest.split("."))
        elif head == "metadata" or head in _TEXT_FIELDS or head in _UNREDACTABLE and not rest:
            what = "name a key inside it: metadata.<key>" if head == "metadata" else \
                f"{head} is text: name it alone" if head in _TEXT_FIELDS else \
                f"{head} is needed to store and find the event; to redact a metadata key of that name write metadata.{head}"
            raise ConfigError(f"redact_fields: {raw!r} cannot be redacted ({what})")
        elif rest:  # only metadata nests, so "customer.note" can only mean metadata.customer.note
            paths.append(raw.split("."))
        else:
            keys.add(raw.lower())
    return top, paths, keys


class PIIRedactor:
    """Redact PII and secrets in every event, counting what it replaced by type."""

    name = "pii"

    @attrs.frozen
    class Config:
        """Options of ``[security.pii]``."""

        patterns: tuple[str, ...] = BUILTIN
        custom_detectors: tuple[CustomDetector, ...] = ()
        #: fields replaced whole by ``[REDACTED_FIELD]`` (the seed's ``security.redaction.fields``)
        redact_fields: tuple[str, ...] = ()
        secret_keys: tuple[str, ...] = DEFAULT_SECRET_KEYS
        phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "AU", "BR", "IN", "IL", "CA", "NL", "ES", "IT", "ZA")
        stream_carry: bool = True
        carry_chars: int = 256
        max_sessions: int = 10_000

    def __init__(self, config: PIIRedactor.Config | None = None) -> None:
        self.config = config or PIIRedactor.Config()
        self.scanner = Scanner(self.config.patterns,
                               [(d.name, d.pattern, d.replacement) for d in self.config.custom_detectors],
                               self.config.phone_regions)
        self._redact_top, self._redact_paths, self._redact_keys = _field_paths(self.config.redact_fields)
        keys = "|".join(re.escape(k) for k in self.config.secret_keys)
        self._secret_key = re.compile(rf"(?:^|[_\-.])(?:{keys})(?:$|[_\-.])", re.IGNORECASE) if keys else None
        self._key_cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._carry: OrderedDict[str, str] = OrderedDict()
        self._session_counts: OrderedDict[str, dict[str, int]] = OrderedDict()
        self.totals: dict[str, int] = {}
        self.carry_dropped = 0

    # -- the hook ------------------------------------------------------------------------------

    @hookimpl
    def before_track(self, event: TelemetryEvent) -> TelemetryEvent:
        """The event with every finding replaced, and the session's running counts in its metadata."""
        fields = event.__dict__
        changes: dict[str, Any] = {}
        counts: dict[str, int] = {}
        sid = fields["session_id"]
        kind = fields["event_type"]
        carrying = self.config.stream_carry and sid is not None
        for name in self._redact_top:
            if fields[name]:
                changes[name] = FIELD_LABEL
                _add(counts, {"FIELD": 1})
        for name in _TEXT_FIELDS:
            if name in self._redact_top:
                continue
            value = fields[name]
            if name == "stream_data" and carrying and (kind == "stream" or kind in ("end", "error")):
                value = self._with_carry(sid, value, keep_tail=kind == "stream")
                if value != fields[name]:
                    changes[name] = value
            if not value:
                continue
            redacted, found = self.scanner.redact(value)
            if found:
                changes[name] = redacted
                _add(counts, found)
        metadata = fields["metadata"]
        if metadata:
            cleaned = metadata
            for path in self._redact_paths:
                cleaned = _redact_path(cleaned, path, counts)
            cleaned = self._scan_json(cleaned, counts)
            if cleaned is not metadata:
                changes["metadata"] = cleaned
        if counts:
            own = dict(counts)
            with self._lock:
                _add(self.totals, counts)
                if sid is not None:
                    running = self._session_counts.pop(sid, {})
                    _add(running, counts)
                    self._session_counts[sid] = running
                    if len(self._session_counts) > self.config.max_sessions:
                        self._session_counts.popitem(last=False)
                    counts = dict(running)
            changes["metadata"] = {**changes.get("metadata", metadata), COUNTS_KEY: counts, EVENT_COUNTS_KEY: own}
        if kind == "end" and sid is not None:
            with self._lock:
                self._session_counts.pop(sid, None)
        return attrs.evolve(event, **changes) if changes else event

    def _with_carry(self, sid: str, text: str | None, *, keep_tail: bool) -> str | None:
        """Prepend what the session's last chunk held back; hold back this chunk's trailing word."""
        with self._lock:
            carried = self._carry.pop(sid, "")
        text = carried + (text or "") if carried or text else text
        if not keep_tail or not text:
            return text or (None if not carried else text)
        tail = _TAIL.search(text)
        if tail is None or len(tail.group()) > self.config.carry_chars:
            return text
        with self._lock:
            self._carry[sid] = tail.group()
            if len(self._carry) > self.config.max_sessions:
                self._carry.popitem(last=False)  # a session that never ended: its last word is lost, and counted
                self.carry_dropped += 1
        return text[: tail.start()]

    def _is_secret_key(self, key: str) -> bool:
        known = self._key_cache.get(key)
        if known is None:
            known = self._secret_key is not None and key not in (COUNTS_KEY, EVENT_COUNTS_KEY) \
                and bool(self._secret_key.search(key))
            if len(self._key_cache) < 10_000:
                self._key_cache[key] = known
        return known

    def _scan_json(self, value: Any, counts: dict[str, int], key: str | None = None) -> Any:
        if key is not None and isinstance(key, str) and value not in (None, "", [], {}):
            if self._redact_keys and key.lower() in self._redact_keys:
                if value != FIELD_LABEL:
                    _add(counts, {"FIELD": 1})
                return FIELD_LABEL
            if self._is_secret_key(key) and not isinstance(value, (dict, list)):
                return self._secret_value(value, counts)
        if isinstance(value, str):
            redacted, found = self.scanner.redact(value)
            if found:
                _add(counts, found)
                return redacted
            return value
        if isinstance(value, Mapping):
            out = {}
            changed = False
            for k, v in value.items():
                new = self._scan_json(v, counts, k)
                changed = changed or new is not v
                out[k] = new
            return out if changed else value
        if isinstance(value, list):
            items = [self._scan_json(v, counts) for v in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    def _secret_value(self, value: Any, counts: dict[str, int]) -> str:
        """A value under a secret-looking key: a detector's label if it is nothing but findings, else ``SECRET``.

        So the seed's ``{"apiKey": "sk-..."}`` with its ``api_key`` detector reads ``[REDACTED_API_KEY]``, while a
        password that no detector knows is still replaced whole.
        """
        if isinstance(value, str):
            findings = self.scanner.find(value)
            outside = "".join(value[b:e] for b, e in zip([0] + [f[1] for f in findings],
                                                         [f[0] for f in findings] + [len(value)], strict=True))
            if findings and not _LEFTOVER.sub("", outside):
                redacted, found = self.scanner.redact(value)
                _add(counts, found)
                return redacted
        _add(counts, {"SECRET": 1})
        return "[REDACTED_SECRET]"

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Counts of what was redacted, by type (never the values)."""
        with self._lock:
            return {"healthy": True, "issues": [], "redactions": dict(self.totals),
                    "held_back_chunks": len(self._carry), "held_back_lost": self.carry_dropped,
                    "detectors": self.scanner.names}


_LEFTOVER = re.compile(r"[\s\"',;:]+")


def _redact_path(value: Any, path: list[str], counts: dict[str, int]) -> Any:
    """``value`` with whatever ``path`` reaches replaced by the field label (through lists, every item)."""
    if isinstance(value, list):
        items = [_redact_path(item, path, counts) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if not isinstance(value, Mapping) or path[0] not in value:
        return value
    inner = value[path[0]]
    if len(path) == 1:
        if inner in (None, "", [], {}) or inner == FIELD_LABEL:
            return value
        _add(counts, {"FIELD": 1})
        return {**value, path[0]: FIELD_LABEL}
    new = _redact_path(inner, path[1:], counts)
    return value if new is inner else {**value, path[0]: new}


def _add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n
