"""Request validation with cattrs: query parameters and JSON bodies to attrs objects, or field-level errors.

Every rejection becomes ``{"error": "Validation Error", "message": ..., "details":
[{"field": ..., "message": ...}]}`` with status 400 (query parameters) or 422
(a body that parsed but does not fit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.v import format_exception

from vibekit_telemetry import InvalidEventError, InvalidQueryError, query_time


class APIError(Exception):
    """An error answered as JSON: status, a short error name, a message and optional field details."""

    def __init__(self, status: int, error: str, message: str, details: list[dict[str, str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body of the response."""
        out: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


def validation_error(message: str, details: list[dict[str, str]], status: int = 400) -> APIError:
    """A ``Validation Error`` with one entry per bad field."""
    return APIError(status, "Validation Error", message, details)


def _make_converter() -> cattrs.Converter:
    """A converter for query strings: numbers and booleans arrive as text and are read strictly."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def to_int(value: Any, _type: type) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 19:
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")

    def to_bool(value: Any, _type: type) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"expected true or false, got {value!r}")

    def to_str(value: Any, _type: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value

    def to_dict(value: Any, _type: type) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected an object, got {type(value).__name__}")
        return dict(value)

    def to_time(value: Any, _type: type) -> int | str | None:
        if value is None and _type == int | str | None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("expected epoch milliseconds, an ISO date or a span such as 1h")
        return value

    converter.register_structure_hook(int, to_int)
    converter.register_structure_hook(bool, to_bool)
    converter.register_structure_hook(str, to_str)
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], to_dict)
    converter.register_structure_hook_func(lambda t: t in (int | str, int | str | None), to_time)
    return converter


converter = _make_converter()


#: what a class-level check (an attrs validator, __attrs_post_init__) raises: "field: message"
_FIELD_MESSAGE = re.compile(r"^([a-z_]+): (.+)$", re.DOTALL)


def _format(exc: BaseException, type_: Any) -> str:
    text = str(exc)
    if isinstance(exc, ValueError) and (text.startswith(("expected", "must")) or _FIELD_MESSAGE.match(text)):
        return text
    if "not in literal" in text:
        choices = ", ".join(repr(c) for c in getattr(type_, "__args__", ()))
        return f"must be one of {choices}"
    if isinstance(exc, KeyError):
        return "required"
    return format_exception(exc, type_)


def structure(data: Mapping[str, Any], cls: type, *, what: str, status: int = 400) -> Any:
    """``data`` as ``cls``, or an :class:`APIError` listing every bad field."""
    try:
        return converter.structure(dict(data), cls)
    except cattrs.BaseValidationError as exc:
        details = []
        for line in cattrs.transform_error(exc, path="$", format_exception=_format):
            text, _, where = line.rpartition(" @ ")
            field = where.removeprefix("$").lstrip(".") or "body"
            named = _FIELD_MESSAGE.match(text) if field == "body" else None
            if named and attrs.has(cls) and named.group(1) in attrs.fields_dict(cls):
                field, text = named.groups()
            if text.startswith("extra fields found"):
                for name in text[text.find("(") + 1 : text.rfind(")")].split(", "):
                    details.append({"field": name, "message": "unknown parameter"})
                continue
            details.append({"field": field, "message": text})
        raise validation_error(f"Invalid {what}", details, status) from None
    except (InvalidQueryError, InvalidEventError) as exc:
        raise from_telemetry_error(exc, what, status) from None
    except ValueError as exc:
        raise validation_error(f"Invalid {what}", [{"field": "body", "message": str(exc)}], status) from None


def kernel_filter(cls: type, data: Mapping[str, Any]) -> Any:
    """A kernel :class:`QueryFilter`/:class:`SessionFilter` from validated parameters, or a 400 naming the field."""
    details = []
    for key in ("since", "until"):
        if data.get(key) is not None:
            try:
                query_time(data[key], key)  # the kernel's parser: the same forms, and times events can have
            except InvalidQueryError as exc:
                details.append({"field": key, "message": str(exc).split(": ", 2)[-1]})
    if details:
        raise validation_error("Invalid query parameters", details)
    try:
        return cls.build(dict(data))
    except InvalidQueryError as exc:
        raise from_telemetry_error(exc, "query parameters") from None


def from_telemetry_error(exc: InvalidQueryError | InvalidEventError, what: str, status: int = 400,
                         prefix: str = "") -> APIError:
    """A kernel validation error (which names its field) as an API validation error."""
    message = str(exc).split(": ", 2)[-1]
    return validation_error(f"Invalid {what}", [{"field": f"{prefix}{exc.field}", "message": message}], status)


def _limit_check(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name}: must be at least 1")


@attrs.frozen
class EventsQuery:
    """``GET /api/events``: the query filter as parameters (``meta.<key>=value`` match metadata)."""

    category: str | None = None
    event_type: Literal["start", "stream", "end", "error", "custom"] | None = None
    session_id: str | None = None
    session_ids: str | None = None
    action: str | None = None
    label: str | None = None
    since: int | str | None = None
    until: int | str | None = None
    text: str | None = None
    limit: int = attrs.field(default=100, validator=_limit_check)
    order: Literal["asc", "desc"] = "desc"
    cursor: str | None = None

    def filter(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The kernel query filter for this request."""
        out = {k: v for k, v in attrs.asdict(self).items() if v is not None}
        if self.session_ids:
            out["session_ids"] = tuple(s for s in self.session_ids.split(",") if s)
        if metadata:
            out["metadata"] = dict(metadata)
        return out


@attrs.frozen
class SessionsQuery:
    """``GET /api/sessions``: sessions by status, agent, mode, parent, kind, model, conversation, user, start time
    and prompt text.

    ``sort`` picks the column, ``order`` its direction; ``count=true`` adds ``total`` (all matches).
    """

    status: Literal["active", "completed", "failed", "cancelled", "timeout"] | None = None
    agent: str | None = None
    mode: str | None = None
    parent_id: str | None = None
    kind: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    user_id: str | None = None
    root_only: bool = False
    since: int | str | None = None
    until: int | str | None = None
    text: str | None = None
    limit: int = attrs.field(default=100, validator=_limit_check)
    offset: int = 0
    order: Literal["asc", "desc"] = "desc"
    sort: Literal["started_at", "ended_at", "duration_ms", "ttft_ms", "event_count", "error_count", "tokens", "agent",
                  "status"] = "started_at"
    count: bool = False

    def __attrs_post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError("offset: must be at least 0")

    def filter(self) -> dict[str, Any]:
        """The kernel ``SessionFilter`` fields."""
        return {k: v for k, v in attrs.asdict(self).items() if k != "count"}


@attrs.frozen
class SessionQuery:
    """``GET /api/sessions/{id}``."""

    with_events: bool = False
    tree: bool = False


@attrs.frozen
class WindowQuery:
    """``GET /api/metrics`` and friends: a window (``since``/``until``, default the last 24 hours)."""

    since: int | str = "24h"
    until: int | str | None = None
    categories: str | None = None


@attrs.frozen
class SeriesQuery:
    """``GET /api/series``: one metric per step over a window (analytics)."""

    metric: str = "throughput"
    since: int | str = "1h"
    until: int | str | None = None
    step: str = "1m"


@attrs.frozen
class AnomalyQuery:
    """``GET /api/anomalies``: run the detectors over the stored metric history."""

    since: int | str = "24h"
    until: int | str | None = None
    metrics: str = "response_time,error_rate,throughput"
    sensitivity: Literal["low", "medium", "high"] = "medium"
    step: str = "1m"


def _alerts_limit(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 1 <= value <= 100:
        raise ValueError(f"{attribute.name}: must be between 1 and 100")


@attrs.frozen
class AlertsQuery:
    """``GET /api/alerts``: the alert channels, their counters and the latest ``limit`` deliveries."""

    limit: int = attrs.field(default=50, validator=_alerts_limit)


@attrs.frozen
class StreamQuery:
    """``GET /api/stream`` and ``/ws/events``: which live events to deliver."""

    category: str | None = None
    event_type: Literal["start", "stream", "end", "error", "custom"] | None = None
    session_id: str | None = None
    action: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    #: a window such as ``24h``: also send that window's metrics (analytics) every couple of seconds
    metrics: str | None = None

    def filter(self) -> dict[str, Any]:
        """The kernel query filter for this subscription."""
        return {k: v for k, v in attrs.asdict(self).items() if v is not None and k not in ("api_key", "metrics")}


@attrs.frozen
class ExportQuery:
    """``GET /api/export``: the format, the filter and options, and optionally a file name in the export directory.

    The names are ``export()``'s and ``telemetry export``'s (``compress`` is ``compression``, ``headers`` is
    ``header``, ``sessions`` is ``session_ids``); any other parameter is passed to ``export()`` as well, which
    refuses one that no filter or exporter takes, naming the valid ones.
    """

    format: str
    category: str | None = None
    event_type: Literal["start", "stream", "end", "error", "custom"] | None = None
    session_id: str | None = None
    session_ids: str | None = None
    sessions: str | None = None
    since: int | str | None = None
    until: int | str | None = None
    path: str | None = None
    #: gzip, zstd or none for any format (true: gzip); a Parquet codec for Parquet (snappy, zstd, gzip, lz4, none)
    compression: str | None = None
    compress: str | None = None
    compression_level: int | None = None
    delimiter: str | None = None
    header: bool | None = None
    headers: bool | None = None
    metadata: Literal["json", "flatten", "struct"] | None = None
    schema: str | None = None
    row_group_size: int | None = None

    def arguments(self) -> dict[str, Any]:
        """The filter keys and options for ``export()``, in its vocabulary (the file name aside)."""
        out = {k: v for k, v in attrs.asdict(self).items() if v is not None and k not in ("format", "path")}
        for key in ("compression", "compress"):
            if isinstance(out.get(key), str) and out[key].lower() in ("true", "false"):
                out[key] = out[key].lower() == "true"
        return out

    def filter(self) -> dict[str, Any]:
        """The kernel query filter of the export (oldest first)."""
        out = {k: v for k, v in attrs.asdict(self).items()
               if v is not None and k in ("category", "event_type", "session_id", "since", "until")}
        ids = self.session_ids or self.sessions
        if ids:
            out["session_ids"] = tuple(s for s in ids.split(",") if s)
        out["order"] = "asc"
        return out


@attrs.frozen
class SessionStart:
    """``POST /api/sessions``: start a session for a client in another language."""

    agent: str
    mode: str | None = None
    prompt: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    session_id: str | None = None
    parent_session_id: str | None = None
    timestamp: int | str | None = None
    kind: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    user_id: str | None = None


@attrs.frozen
class SessionEnd:
    """``POST /api/sessions/{id}/end``."""

    status: Literal["completed", "failed", "cancelled", "timeout"] = "completed"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    timestamp: int | str | None = None

