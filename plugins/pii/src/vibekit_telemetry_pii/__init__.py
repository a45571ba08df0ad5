"""The ``pii`` plugin: redact personal data and secrets before an event is queued (``before_track``).

Enable with ``[security.pii] enabled = true`` (or ``plugins = ["pii"]``).  Every
string an event carries is scanned: prompt, streamed text, label, action,
error message and stack, and metadata values at any depth (keys too are
checked: a key named like a secret has its whole value replaced).  Findings
become ``[REDACTED_<TYPE>]``; the original values are never stored or logged.

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

from vibekit_telemetry import TelemetryEvent, hookimpl

from .detectors import BUILTIN, Scanner

__all__ = ["PIIRedactor", "Scanner"]

DEFAULT_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "api-key",
                       "authorization", "auth", "credential", "private_key", "access_key", "session_key", "cookie")
_TEXT_FIELDS = ("prompt", "stream_data", "label", "action", "error_message", "error_stack")
_TAIL = re.compile(r"\S+\Z")
COUNTS_KEY = "pii_redactions"  # the session's running totals (the session's metadata ends with its totals)
EVENT_COUNTS_KEY = "pii_redacted"  # this event's own counts (analytics sums these)


@attrs.frozen
class CustomDetector:
    """``{name, pattern, replacement}`` from ``security.pii.custom_detectors``."""

    name: str
    pattern: str
    replacement: str | None = None


class PIIRedactor:
    """Redact PII and secrets in every event, counting what it replaced by type."""

    name = "pii"

    @attrs.frozen
    class Config:
        """Options of ``[security.pii]``."""

        patterns: tuple[str, ...] = BUILTIN
        custom_detectors: tuple[CustomDetector, ...] = ()
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
        for name in _TEXT_FIELDS:
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
            cleaned = self._scan_json(metadata, counts)
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
        if key is not None and isinstance(key, str) and self._is_secret_key(key) and value not in (None, "", [], {}):
            if not isinstance(value, (dict, list)):
                _add(counts, {"SECRET": 1})
                return "[REDACTED_SECRET]"
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

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Counts of what was redacted, by type (never the values)."""
        with self._lock:
            return {"healthy": True, "issues": [], "redactions": dict(self.totals),
                    "held_back_chunks": len(self._carry), "held_back_lost": self.carry_dropped,
                    "detectors": self.scanner.names}


def _add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n
