"""OTLP/HTTP ingest: decode ``/v1/traces`` and ``/v1/logs`` requests and map them to telemetry events.

Both encodings are read into the same shape (OTLP/JSON: lowerCamelCase keys,
hex trace and span ids, integer enums).  Mapping follows the OpenTelemetry
GenAI semantic conventions:

* every span becomes a **session**: a start event (agent from
  ``gen_ai.provider.name``/``gen_ai.system``, else ``gen_ai.agent.name``, else
  the resource's ``service.name``; mode from ``gen_ai.operation.name``, else the
  span name; prompt from ``gen_ai.input.messages``/``gen_ai.prompt``), one
  stream event per completion (span events ``gen_ai.choice``,
  ``gen_ai.content.completion``, ``gen_ai.assistant.message`` or the
  ``gen_ai.output.messages`` attribute), an error event per ``exception`` span
  event (or for an ERROR status without one), other span events as custom
  events, and an end event carrying the model and ``gen_ai.usage.*`` tokens.
  A parent span becomes the parent session.
* every log record becomes a **custom event** (linked to its span's session
  when it carries a span context); GenAI completion events become stream events.

Ids are derived from the trace, span and position, so a client that retries a
request does not store anything twice (storage ignores a known event id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

SPAN_STATUS_ERROR = 2
_COMPLETION_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.completion", "gen_ai.assistant.message"})
_PROMPT_EVENTS = frozenset({"gen_ai.content.prompt", "gen_ai.user.message"})
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_USAGE_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons",
               "gen_ai.response.id")
_OUTCOME_KEYS = frozenset({*_USAGE_KEYS, "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.prompt",
                           "gen_ai.completion"})


class OTLPDecodeError(ValueError):
    """The request body is not a valid OTLP message (HTTP 400, not retryable)."""


def decode(signal: str, body: bytes, content_type: str) -> dict[str, Any]:
    """An export request as a dict in the OTLP/JSON shape; ``signal`` is ``traces`` or ``logs``."""
    if content_type == "application/json":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OTLPDecodeError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise OTLPDecodeError("the body must be a JSON object (an OTLP export request)")
        return data
    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import DecodeError

    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest as Request
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest as Request
    try:
        message = Request.FromString(body)
    except DecodeError as exc:
        raise OTLPDecodeError(f"the body is not a valid protobuf {Request.__name__}: {exc}") from None
    data = MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(data)
    return data


def _ids_to_hex(node: Any) -> None:
    """Protobuf's JSON mapping writes bytes as base64; OTLP/JSON writes trace and span ids as hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


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
    start_meta = {**context, **{k: v for k, v in attrs.items() if k not in _OUTCOME_KEYS}}
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
                        "metadata": {k: v for k, v in ev_attrs.items() if not k.startswith("exception.")}})
        elif name in _COMPLETION_EVENTS:
            streamed = True
            text = _text(ev_attrs.get("gen_ai.completion") or ev_attrs.get("message") or ev_attrs.get("content")) or ""
            out.append({**base, "event_type": "stream", "stream_data": text, "action": name,
                        "metadata": {k: v for k, v in ev_attrs.items() if k not in ("gen_ai.completion", "message", "content")}})
        elif name not in _PROMPT_EVENTS:
            out.append({**base, "event_type": "custom", "action": name, "metadata": ev_attrs})
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
    metadata: dict[str, Any] = {**attrs}
    if resource.get("service.name"):
        metadata["service.name"] = resource["service.name"]
    if record.get("severityNumber"):
        metadata["severity_number"] = int(record["severityNumber"])
    digest = _event_id(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode(), *position)
    event: dict[str, Any] = {"id": digest, "category": agent, "timestamp": timestamp, "session_id": sid,
                             "action": name, "label": record.get("severityText") or None}
    if sid and name in _COMPLETION_EVENTS:
        event.update(event_type="stream", stream_data=_text(body) or "", metadata=metadata)
    else:
        if body is not None:
            metadata["body"] = body
        event.update(event_type="custom", metadata=metadata)
    return event


def trace_request_events(data: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Events from an ``ExportTraceServiceRequest``, the number of rejected spans and why."""
    events: list[dict[str, Any]] = []
    rejected, reasons = 0, []
    for resource_spans in _items(data.get("resourceSpans")):
        resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in _items(resource_spans.get("scopeSpans")):
            for index, span in enumerate(_items(scope_spans.get("spans"))):
                try:
                    events.extend(span_events(span, resource))
                except (ValueError, TypeError) as exc:
                    rejected += 1
                    reasons.append(f"span {span.get('name')!r} (#{index}): {exc}")
    return events, rejected, reasons


def log_request_events(data: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Events from an ``ExportLogsServiceRequest``, the number of rejected log records and why."""
    events: list[dict[str, Any]] = []
    rejected, reasons = 0, []
    for r, resource_logs in enumerate(_items(data.get("resourceLogs"))):
        resource = attributes((resource_logs.get("resource") or {}).get("attributes"))
        for s, scope_logs in enumerate(_items(resource_logs.get("scopeLogs"))):
            for index, record in enumerate(_items(scope_logs.get("logRecords"))):
                try:
                    events.append(log_event(record, resource, (r, s, index)))
                except (ValueError, TypeError) as exc:
                    rejected += 1
                    reasons.append(f"log record #{index}: {exc}")
    return events, rejected, reasons


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))


def encode_response(signal: str, content_type: str, rejected: int, message: str) -> bytes:
    """The export response: empty on full success, ``partialSuccess`` when something was rejected."""
    field = "rejectedSpans" if signal == "traces" else "rejectedLogRecords"
    if content_type == "application/json":
        return orjson.dumps({"partialSuccess": {field: str(rejected), "errorMessage": message}} if rejected else {})
    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse as Response
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse as Response
    response = Response()
    if rejected:
        setattr(response.partial_success, "rejected_spans" if signal == "traces" else "rejected_log_records", rejected)
        response.partial_success.error_message = message
    return response.SerializeToString()


def encode_status(content_type: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` body for an error response (protobuf or JSON, like the request)."""
    if content_type == "application/json":
        return orjson.dumps({"code": code, "message": message})
    text = message.encode()
    return bytes([0x08]) + _varint(code) + bytes([0x12]) + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
