"""The OpenTelemetry GenAI conventions: telemetry events to and from OTLP/JSON spans and log records.

Plain dicts in the OTLP/JSON shape (lowerCamelCase keys, hex trace and span
ids, 64-bit integers as decimal strings), so the kernel needs no OpenTelemetry
package; plugins turn them into protobuf messages with ``opentelemetry-proto``
(``hex_ids``/``base64_ids`` convert the ids between the two JSON mappings).

From OTLP (``span_events``, ``log_event``, ``trace_request_events``,
``log_request_events``):

* every span becomes a **session**: a start event (agent from
  ``gen_ai.provider.name``/``gen_ai.system``, else ``gen_ai.agent.name``, else
  the resource's ``service.name``; mode from ``gen_ai.operation.name``, else the
  span name; prompt from ``gen_ai.input.messages``/``gen_ai.prompt``), one
  stream event per completion (span events ``gen_ai.choice``,
  ``gen_ai.content.completion``, ``gen_ai.assistant.message`` or the
  ``gen_ai.output.messages`` attribute), an error event per ``exception`` span
  event (or for an ERROR status without one), other span events as custom
  events, and an end event carrying the model and ``gen_ai.usage.*`` tokens.
  A parent span becomes the parent session.  Attributes ``vibekit.metadata.<key>``
  (written by ``TraceBuilder``) become metadata ``<key>`` again.
* every log record becomes a **custom event** (linked to its span's session
  when it carries a span context); GenAI completion events become stream events.

Ids are derived from the trace, span and position, so a client that retries a
request does not store anything twice (storage ignores a known event id).

To OTLP (``TraceBuilder``): sessions become CLIENT spans named
``"{operation} {model}"`` with the GenAI attributes, their chunks
``gen_ai.choice`` span events, their errors ``exception`` events and an ERROR
status when they failed; events outside sessions become log records.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from .model import TelemetryEvent, TokenUsage

SPAN_STATUS_ERROR = 2
SPAN_KIND_CLIENT = 3
#: span and log attributes that carry event metadata keys, so a round trip restores them
METADATA_PREFIX = "vibekit.metadata."
_COMPLETION_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.completion", "gen_ai.assistant.message"})
_PROMPT_EVENTS = frozenset({"gen_ai.content.prompt", "gen_ai.user.message"})
_TEXT_KEYS = frozenset({"gen_ai.completion", "message", "content", "index"})
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_USAGE_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons",
               "gen_ai.response.id")
_OUTCOME_KEYS = frozenset({*_USAGE_KEYS, "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.prompt",
                           "gen_ai.completion"})


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain JSON value."""
    if not isinstance(value, Mapping) or not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(items: Any) -> dict[str, Any]:
    """A list of OTLP ``KeyValue`` as a dict."""
    out: dict[str, Any] = {}
    for item in items or ():
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            out[item["key"]] = any_value(item.get("value"))
    return out


def _hex_id(value: Any, length: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != length:
        raise ValueError(f"{what} must be {length} hex digits")
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} must be {length} hex digits") from None
    if not any(raw):
        raise ValueError(f"{what} must not be all zeros")
    return value.lower()


def _ms(value: Any, what: str) -> int:
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be nanoseconds since the epoch") from None
    if nanos <= 0:
        raise ValueError(f"{what} must be nanoseconds since the epoch")
    return nanos // 1_000_000


def session_id_of(trace_id: str, span_id: str) -> str:
    """The session id a span becomes (also how the OTLP exporter finds a session's span again)."""
    return f"{trace_id}-{span_id}"


def _event_id(*parts: Any) -> str:
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=16).hexdigest()


def _text(value: Any) -> str | None:
    """Text out of a GenAI message value: a string, a message list (``parts``/``content``) or JSON of one."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                return _text(orjson.loads(stripped)) or value
            except orjson.JSONDecodeError:
                return value
        return value
    if isinstance(value, list):
        texts = [t for t in (_text(v) for v in value) if t]
        return "\n".join(texts) if texts else None
    if isinstance(value, Mapping):
        for key in ("content", "text", "message"):
            if key in value:
                return _text(value[key])
        if "parts" in value:
            return _text(value["parts"])
    return None


def _prompt(attrs: Mapping[str, Any], events: list[Mapping[str, Any]]) -> str | None:
    messages = attrs.get("gen_ai.input.messages")
    if isinstance(messages, str):
        try:
            messages = orjson.loads(messages)
        except orjson.JSONDecodeError:
            return messages
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") in (None, "user")]
        text = _text(users or messages)
        if text:
            return text
    for key in ("gen_ai.prompt", "gen_ai.user.message"):
        if attrs.get(key):
            return _text(attrs[key])
    for event in events:
        if event.get("name") in _PROMPT_EVENTS:
            ev_attrs = attributes(event.get("attributes"))
            text = _text(ev_attrs.get("gen_ai.prompt") or ev_attrs.get("content"))
            if text:
                return text
    return None


def _agent(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> str:
    for key in ("gen_ai.provider.name", "gen_ai.system", "gen_ai.agent.name"):
        if isinstance(attrs.get(key), str) and attrs[key]:
            return attrs[key]
    name = resource.get("service.name")
    return name if isinstance(name, str) and name else "otlp"


def _metadata(attrs: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Attributes as event metadata: ``vibekit.metadata.<key>`` back to ``<key>``, other ``vibekit.*`` left out."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in skip:
            continue
        if key.startswith(METADATA_PREFIX):
            out[key[len(METADATA_PREFIX):]] = _unpack(value)
        elif not key.startswith("vibekit."):
            out[key] = value
    return out


def _unpack(value: Any) -> Any:
    """A metadata value that ``TraceBuilder`` wrote as JSON text (a mapping or a list) read back."""
    if isinstance(value, str) and value[:1] in ("{", "[") and value.endswith(("}", "]")):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


def span_events(span: Mapping[str, Any], resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events one span becomes; raises ``ValueError`` for a span that cannot be read."""
    trace_id = _hex_id(span.get("traceId"), 32, "traceId")
    span_id = _hex_id(span.get("spanId"), 16, "spanId")
    parent = span.get("parentSpanId")
    parent_id = _hex_id(parent, 16, "parentSpanId") if parent else None
    start = _ms(span.get("startTimeUnixNano"), "startTimeUnixNano")
    end_raw = span.get("endTimeUnixNano")
    end = _ms(end_raw, "endTimeUnixNano") if end_raw not in (None, "0", 0) else None
    if end is not None and end < start:
        raise ValueError("endTimeUnixNano is before startTimeUnixNano")
    attrs = _jsonable(attributes(span.get("attributes")))
    raw_events = [e for e in span.get("events") or () if isinstance(e, Mapping)]
    sid = session_id_of(trace_id, span_id)
    agent = _agent(attrs, resource)
    mode = attrs.get("gen_ai.operation.name") or span.get("name") or None
    model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")
    context = {"otel.trace_id": trace_id, "otel.span_id": span_id, "otel.span_name": span.get("name") or ""}
    if resource.get("service.name"):
        context["service.name"] = resource["service.name"]
    # token counts go on the end event only, where the session summary adds them up once
    start_meta = {**context, **_metadata(attrs, _OUTCOME_KEYS)}
    if span.get("kind"):
        start_meta["otel.kind"] = int(span["kind"])
    if model:
        start_meta["model"] = model
    out: list[dict[str, Any]] = [{
        "id": _event_id(trace_id, span_id, "start"), "event_type": "start", "session_id": sid, "category": agent,
        "agent": agent, "mode": mode, "action": mode, "prompt": _prompt(attrs, raw_events), "timestamp": start,
        "parent_session_id": session_id_of(trace_id, parent_id) if parent_id else None, "metadata": start_meta,
    }]
    errored = False
    streamed = False
    for index, event in enumerate(raw_events):
        name = event.get("name") or "event"
        ev_attrs = _jsonable(attributes(event.get("attributes")))
        ts = _ms(event.get("timeUnixNano"), "events.timeUnixNano") if event.get("timeUnixNano") else start
        base = {"id": _event_id(trace_id, span_id, "event", index), "session_id": sid, "category": agent,
                "timestamp": ts}
        if name == "exception":
            errored = True
            out.append({**base, "event_type": "error", "error_type": ev_attrs.get("exception.type") or "Exception",
                        "error_message": ev_attrs.get("exception.message") or "", "error_stack": ev_attrs.get("exception.stacktrace"),
                        "metadata": _metadata({k: v for k, v in ev_attrs.items() if not k.startswith("exception.")})})
        elif name in _COMPLETION_EVENTS:
            streamed = True
            text = _text(ev_attrs.get("gen_ai.completion") or ev_attrs.get("message") or ev_attrs.get("content")) or ""
            out.append({**base, "event_type": "stream", "stream_data": text, "action": name,
                        "metadata": _metadata(ev_attrs, _TEXT_KEYS)})
        elif name not in _PROMPT_EVENTS:
            out.append({**base, "event_type": "custom", "action": name, "label": ev_attrs.get("vibekit.label"),
                        "value": ev_attrs.get("vibekit.value"), "metadata": _metadata(ev_attrs)})
    output = attrs.get("gen_ai.output.messages") or attrs.get("gen_ai.completion")
    if output and not streamed:
        out.append({"id": _event_id(trace_id, span_id, "output"), "event_type": "stream", "session_id": sid,
                    "category": agent, "stream_data": _text(output) or "", "timestamp": end or start})
    status = span.get("status") or {}
    failed = int(status.get("code") or 0) == SPAN_STATUS_ERROR
    if failed and not errored:
        out.append({"id": _event_id(trace_id, span_id, "status"), "event_type": "error", "session_id": sid,
                    "category": agent, "timestamp": end or start, "error_type": attrs.get("error.type") or "Error",
                    "error_message": status.get("message") or "span status ERROR"})
    if end is not None:
        end_meta: dict[str, Any] = {**context}
        if model:
            end_meta["model"] = model
        for key in _USAGE_KEYS:
            if key in attrs:
                end_meta[key] = attrs[key]
        if status.get("message"):
            end_meta["status_message"] = status["message"]
        out.append({"id": _event_id(trace_id, span_id, "end"), "event_type": "end", "session_id": sid,
                    "category": agent, "status": "failed" if failed else "completed", "timestamp": end,
                    "metadata": end_meta})
    return out


def log_event(record: Mapping[str, Any], resource: Mapping[str, Any], position: tuple[int, ...]) -> dict[str, Any]:
    """The event one log record becomes; raises ``ValueError`` for a record that cannot be read."""
    attrs = _jsonable(attributes(record.get("attributes")))
    ts_raw = record.get("timeUnixNano") or record.get("observedTimeUnixNano")
    if not ts_raw or ts_raw in ("0", 0):
        raise ValueError("a log record needs timeUnixNano or observedTimeUnixNano")
    timestamp = _ms(ts_raw, "timeUnixNano")
    name = record.get("eventName") or attrs.pop("event.name", None) or "log"
    agent = _agent(attrs, resource)
    trace, span = record.get("traceId"), record.get("spanId")
    sid = session_id_of(_hex_id(trace, 32, "traceId"), _hex_id(span, 16, "spanId")) if trace and span else None
    body = any_value(record.get("body"))
    metadata = _metadata(attrs)
    digest = _event_id(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode(), *position)
    event: dict[str, Any] = {"id": digest, "category": agent, "timestamp": timestamp, "session_id": sid,
                             "action": name, "label": record.get("severityText") or None}
    if attrs.get("vibekit.event_type") in ("custom", "error"):  # written by TraceBuilder: restore the event
        event.update(category=attrs.get("vibekit.category") or agent, label=attrs.get("vibekit.label"),
                     value=attrs.get("vibekit.value"), event_type=attrs["vibekit.event_type"], metadata=metadata,
                     action=attrs.get("vibekit.action"), error_type=attrs.get("exception.type"),
                     error_message=attrs.get("exception.message"), error_stack=attrs.get("exception.stacktrace"))
        event["metadata"] = {k: v for k, v in metadata.items() if not k.startswith("exception.")}
        return event
    if resource.get("service.name"):
        metadata["service.name"] = resource["service.name"]
    if record.get("severityNumber"):
        metadata["severity_number"] = int(record["severityNumber"])
    if sid and name in _COMPLETION_EVENTS:
        event.update(event_type="stream", stream_data=_text(body) or "", metadata=metadata)
    else:
        if body is not None:
            metadata["body"] = body
        event.update(event_type="custom", metadata=metadata)
    return event


def trace_request_events(data: Mapping[str, Any]) -> tuple[list[TelemetryEvent], int, list[str]]:
    """The validated events of an ``ExportTraceServiceRequest``, the number of rejected spans and why.

    A span is taken whole or not at all: storing its start without its end (whose timestamp the gate
    refused, say) would leave a session open for ever.  The reasons name the span.
    """
    events: list[TelemetryEvent] = []
    rejected, reasons = 0, []
    for resource_spans in _items(data.get("resourceSpans")):
        resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in _items(resource_spans.get("scopeSpans")):
            for index, span in enumerate(_items(scope_spans.get("spans"))):
                try:  # InvalidEventError is a ValueError
                    events.extend([TelemetryEvent.from_dict(e) for e in span_events(span, resource)])
                except (ValueError, TypeError) as exc:
                    rejected += 1
                    reasons.append(f"span {span.get('name')!r} (#{index}): {_reason(exc)}")
    return events, rejected, reasons


def log_request_events(data: Mapping[str, Any]) -> tuple[list[TelemetryEvent], int, list[str]]:
    """The validated events of an ``ExportLogsServiceRequest``, the number of rejected log records and why."""
    events: list[TelemetryEvent] = []
    rejected, reasons = 0, []
    for r, resource_logs in enumerate(_items(data.get("resourceLogs"))):
        resource = attributes((resource_logs.get("resource") or {}).get("attributes"))
        for s, scope_logs in enumerate(_items(resource_logs.get("scopeLogs"))):
            for index, record in enumerate(_items(scope_logs.get("logRecords"))):
                try:
                    events.append(TelemetryEvent.from_dict(log_event(record, resource, (r, s, index))))
                except (ValueError, TypeError) as exc:
                    rejected += 1
                    reasons.append(f"log record #{index}: {_reason(exc)}")
    return events, rejected, reasons


def _reason(exc: Exception) -> str:
    return str(exc).removeprefix("invalid event: ")


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))


def hex_ids(node: Any) -> None:
    """In place: trace and span ids from protobuf's JSON mapping (base64) to OTLP/JSON (hex)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids(item)

def base64_ids(node: Any) -> None:
    """In place: trace and span ids from OTLP/JSON (hex) to protobuf's JSON mapping (base64), for ``ParseDict``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                base64_ids(value)
    elif isinstance(node, list):
        for item in node:
            base64_ids(item)


def to_any_value(value: Any) -> dict[str, Any] | None:
    """A plain JSON value as an OTLP ``AnyValue`` (``None`` for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": to_attributes(value)}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [v for v in (to_any_value(i) for i in value) if v is not None]}}
    return {"stringValue": str(value)}


def to_attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict as OTLP ``KeyValue`` attributes (null values left out)."""
    return [{"key": str(k), "value": v} for k, v in ((k, to_any_value(val)) for k, val in values.items()) if v is not None]


def _metadata_attributes(metadata: Mapping[str, Any]) -> dict[str, Any]:
    # attribute values must be scalars or arrays of scalars: mappings and mixed lists travel as JSON text
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, (Mapping, list, tuple)):
            value = orjson.dumps(value).decode()
        out[METADATA_PREFIX + key] = value
    return out


def _nanos(ms: int) -> str:
    return str(ms * 1_000_000)


def _hash_id(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


_OTLP_SESSION = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{16})$")


class _OpenSpan:
    __slots__ = ("session_id", "trace_id", "span_id", "parent_span_id", "start", "last", "agent", "mode", "category",
                 "prompt", "metadata", "events", "error", "chunks", "tokens", "model", "end_metadata", "status")

    def __init__(self, session_id: str, trace_id: str, span_id: str, parent_span_id: str | None, start: int) -> None:
        self.session_id, self.trace_id, self.span_id, self.parent_span_id = session_id, trace_id, span_id, parent_span_id
        self.start = self.last = start
        self.agent = self.mode = self.prompt = self.model = self.status = self.error = None
        self.category = "session"
        self.metadata: dict[str, Any] = {}
        self.end_metadata: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.chunks = 0
        self.tokens = TokenUsage()


class TraceBuilder:
    """Telemetry events (oldest first) to OTLP/JSON spans and log records, one session at a time.

    ``add`` events; take the finished spans and log records with ``take``; ``finish``
    closes the sessions still open (their span ends at their last event).  Only open
    sessions are held (at most ``max_open``; past it the oldest is closed early), so
    memory stays bounded on any number of events.
    """

    def __init__(self, resource: Mapping[str, Any], *, scope: str = "vibekit-telemetry", max_open: int = 100_000,
                 max_events_per_span: int = 1000) -> None:
        self.resource = to_attributes(resource)
        self.scope = {"name": scope}
        self.max_open = max_open
        self.max_events_per_span = max_events_per_span
        self.open: OrderedDict[str, _OpenSpan] = OrderedDict()
        self.traces: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.spans: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []

    def _ids(self, session_id: str, parent: str | None) -> tuple[str, str, str | None]:
        known = self.traces.get(session_id)
        if known is not None:
            trace_id, span_id = known
        else:
            match = _OTLP_SESSION.match(session_id)
            span_id = match.group(2) if match else _hash_id(session_id, 8)
            if match:
                trace_id = match.group(1)
            elif parent is not None:
                trace_id = self._ids(parent, None)[0]  # a child joins its parent's trace
            else:
                trace_id = _hash_id(session_id, 16)
            self.traces[session_id] = (trace_id, span_id)
            if len(self.traces) > 2 * self.max_open:
                self.traces.popitem(last=False)
        parent_span = self._ids(parent, None)[1] if parent is not None else None
        return trace_id, span_id, parent_span

    def add(self, event: TelemetryEvent) -> None:
        """Take one event into the span of its session, or as a log record."""
        sid = event.session_id
        if sid is None:
            self.logs.append(self._log(event))
            return
        span = self.open.get(sid)
        if span is None:
            trace_id, span_id, parent_span = self._ids(sid, event.parent_session_id)
            span = _OpenSpan(sid, trace_id, span_id, parent_span, event.timestamp)
            span.category = event.category
            self.open[sid] = span
            if len(self.open) > self.max_open:
                self._close(next(iter(self.open.values())))
        span.last = max(span.last, event.timestamp)
        kind = event.event_type
        if kind == "start":
            span.start = min(span.start, event.timestamp)
            span.agent, span.mode, span.prompt, span.category = event.agent, event.mode, event.prompt, event.category
            span.metadata = dict(event.metadata)
            span.model = event.metadata.get("model") or span.model
        elif kind == "stream":
            span.chunks += 1
            self._span_event(span, event, "gen_ai.choice", {"message": event.stream_data or "", "index": span.chunks - 1,
                                                            **_metadata_attributes(event.metadata)})
        elif kind == "error":
            span.error = event.error_message or event.error_type
            self._span_event(span, event, "exception", {
                "exception.type": event.error_type or "Error", "exception.message": event.error_message or "",
                "exception.stacktrace": event.error_stack, **_metadata_attributes(event.metadata)})
        elif kind == "custom":
            self._span_event(span, event, event.action or "event", {
                "vibekit.label": event.label, "vibekit.value": event.value, **_metadata_attributes(event.metadata)})
        span.tokens = span.tokens + TokenUsage.from_metadata(event.metadata)
        if kind == "end":
            span.status = event.status
            span.end_metadata = dict(event.metadata)
            span.model = event.metadata.get("model") or span.model
            self._close(span)

    def _span_event(self, span: _OpenSpan, event: TelemetryEvent, name: str, attrs: dict[str, Any]) -> None:
        if len(span.events) < self.max_events_per_span:
            span.events.append({"timeUnixNano": _nanos(event.timestamp), "name": name, "attributes": to_attributes(attrs)})

    def _close(self, span: _OpenSpan) -> None:
        self.open.pop(span.session_id, None)
        operation = span.mode or "chat"
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": span.agent or span.category,
            "gen_ai.system": span.agent or span.category, "gen_ai.request.model": span.model,
            "vibekit.session_id": span.session_id, "vibekit.category": span.category,
            **_metadata_attributes({k: v for k, v in span.metadata.items() if k != "model"}),
        }
        if span.prompt is not None:
            attrs["gen_ai.input.messages"] = orjson.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": span.prompt}]}]).decode()
        if span.tokens.input:
            attrs["gen_ai.usage.input_tokens"] = span.tokens.input
        if span.tokens.output:
            attrs["gen_ai.usage.output_tokens"] = span.tokens.output
        for key in ("finish_reason", "finish_reasons"):
            if key in span.end_metadata:
                attrs["gen_ai.response.finish_reasons"] = span.end_metadata[key]
        failed = span.status in ("failed", "timeout") or (span.status is None and span.error is not None)
        if failed:
            attrs["error.type"] = span.status or "error"
        record: dict[str, Any] = {
            "traceId": span.trace_id, "spanId": span.span_id, "name": f"{operation} {span.model}" if span.model else operation,
            "kind": SPAN_KIND_CLIENT, "startTimeUnixNano": _nanos(span.start), "endTimeUnixNano": _nanos(span.last),
            "attributes": to_attributes(attrs), "events": span.events,
            "status": {"code": SPAN_STATUS_ERROR, "message": span.error or span.status or ""} if failed else {"code": 1},
        }
        if span.parent_span_id:
            record["parentSpanId"] = span.parent_span_id
        self.spans.append(record)

    def _log(self, event: TelemetryEvent) -> dict[str, Any]:
        attrs: dict[str, Any] = {"vibekit.event_type": event.event_type, "vibekit.category": event.category,
                                 "vibekit.action": event.action, "vibekit.label": event.label,
                                 "vibekit.value": event.value, **_metadata_attributes(event.metadata)}
        severity = (17, "ERROR") if event.event_type == "error" else (9, "INFO")
        if event.event_type == "error":
            attrs.update({"exception.type": event.error_type, "exception.message": event.error_message,
                          "exception.stacktrace": event.error_stack})
        return {"timeUnixNano": _nanos(event.timestamp), "observedTimeUnixNano": _nanos(event.timestamp),
                "severityNumber": severity[0], "severityText": severity[1],
                "eventName": event.action or event.event_type, "attributes": to_attributes(attrs)}

    def finish(self) -> None:
        """Close every session still open (their spans end at their last event)."""
        for span in list(self.open.values()):
            self._close(span)

    def take(self, limit: int | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """An ``ExportTraceServiceRequest`` and an ``ExportLogsServiceRequest`` of what is ready (``None`` when empty)."""
        spans, self.spans = (self.spans, []) if limit is None else (self.spans[:limit], self.spans[limit:])
        logs, self.logs = (self.logs, []) if limit is None else (self.logs[:limit], self.logs[limit:])
        traces = {"resourceSpans": [{"resource": {"attributes": self.resource},
                                     "scopeSpans": [{"scope": self.scope, "spans": spans}]}]} if spans else None
        records = {"resourceLogs": [{"resource": {"attributes": self.resource},
                                     "scopeLogs": [{"scope": self.scope, "logRecords": logs}]}]} if logs else None
        return traces, records
