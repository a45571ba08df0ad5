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

from . import conventions
from .model import _ANY_TOKEN_KEY, TelemetryEvent, TokenUsage

SPAN_STATUS_ERROR = 2
SPAN_KIND_CLIENT = 3
#: span and log attributes that carry event metadata keys, so a round trip restores them
METADATA_PREFIX = "vibekit.metadata."
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
#: the end event's token counts, under the names ``TokenUsage.from_metadata`` reads first
_TOKEN_METADATA = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cache_read_tokens",
                   "cache_creation": "cache_creation_tokens", "reasoning": "reasoning_tokens"}
#: completion events of a span: chunks of the answer when they arrive before its end
_COMPLETION_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.completion", "gen_ai.assistant.message"})
_NOT_CUSTOM = _COMPLETION_EVENTS | conventions.INPUT_EVENTS | conventions.FIRST_CHUNK_EVENTS | {"exception"}


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


def _metadata(attrs: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Attributes as event metadata: ``vibekit.metadata.<key>`` back to ``<key>``, other ``vibekit.*`` left out,
    and what :func:`conventions.read_call` turned into fields (messages, usage) left out too."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in skip:
            continue
        if key.startswith(METADATA_PREFIX):
            out[key[len(METADATA_PREFIX):]] = _unpack(value)
        elif not key.startswith(("vibekit.", *conventions.CONSUMED_PREFIXES)) and key not in _ANY_TOKEN_KEY:
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


def _labels(call: conventions.Call) -> dict[str, Any]:
    """What a session summary lifts into fields (``SESSION_LABELS``), from a call."""
    out: dict[str, Any] = {}
    if call.kind:
        out["kind"] = call.kind
    if call.conversation_id:
        out["conversation_id"] = call.conversation_id
    if call.user_id:
        out["user_id"] = call.user_id
    return out


def _conversation(call: conventions.Call) -> dict[str, Any]:
    """The structured side of a call kept in metadata: messages with roles, system prompt, tools offered."""
    out: dict[str, Any] = {}
    if call.messages and (len(call.messages) > 1 or call.messages[0].get("role") != "user"
                          or call.messages[0].get("tool_calls")):
        out["messages"] = call.messages
    if call.system:
        out["system_prompt"] = call.system
    if call.tools:
        out["tools"] = call.tools
    return out


def span_events(span: Mapping[str, Any], resource: Mapping[str, Any],
                folder: CallFolder | None = None, scope: str | None = None) -> list[dict[str, Any]]:
    """The events one span becomes; raises ``ValueError`` for a span that cannot be read.

    A session: a start event (prompt, labels, messages), stream events for the chunks that arrived
    (with their own times: the first sets the time to first token), error events, custom events for
    other span events, and an end event with the model, the token usage (counted once, here) and, for a
    call that streamed nothing, the answer's text.  A call with no sign of when its first chunk came has
    no time to first token.
    """
    trace_id = _hex_id(span.get("traceId"), 32, "traceId")
    span_id = _hex_id(span.get("spanId"), 16, "spanId")
    parent = span.get("parentSpanId")
    parent_id = _hex_id(parent, 16, "parentSpanId") if parent else None
    start = _ms(span.get("startTimeUnixNano"), "startTimeUnixNano")
    end_raw = span.get("endTimeUnixNano")
    end = _ms(end_raw, "endTimeUnixNano") if end_raw not in (None, "0", 0) else None
    if end is not None and end < start:
        raise ValueError("endTimeUnixNano is before startTimeUnixNano")
    events = []
    for raw in span.get("events") or ():
        if isinstance(raw, Mapping):
            ts = _ms(raw.get("timeUnixNano"), "events.timeUnixNano") if raw.get("timeUnixNano") else start
            events.append((raw.get("name") or "event", ts, _jsonable(attributes(raw.get("attributes")))))
    status = span.get("status") or {}
    return mapped_span_events(
        trace_id=trace_id, span_id=span_id, parent_id=parent_id, name=span.get("name") or "", start=start, end=end,
        attrs=_jsonable(attributes(span.get("attributes"))), events=events, kind=span.get("kind"),
        failed=int(status.get("code") or 0) == SPAN_STATUS_ERROR, status_message=status.get("message") or None,
        resource=resource, folder=folder, scope=scope)


def mapped_span_events(*, trace_id: str, span_id: str, parent_id: str | None, name: str, start: int, end: int | None,
                       attrs: Mapping[str, Any], events: list[tuple[str, int, Mapping[str, Any]]], kind: Any,
                       failed: bool, status_message: str | None, resource: Mapping[str, Any],
                       folder: CallFolder | None = None, scope: str | None = None) -> list[dict[str, Any]]:
    """:func:`span_events` from a span's parts already decoded (the in-process bridge calls this directly).

    With a ``folder``, a span describing a call already seen folds into that call's session.
    """
    sid = session_id_of(trace_id, span_id)
    call = conventions.read_call(attrs, events, name=name, start_ms=start, resource=resource)
    if folder is not None:
        first = folder.same_call(session_id=sid, trace_id=trace_id, parent_id=parent_id, start=start, end=end,
                                 call=call, scope=scope, failed=failed)
        if first is not None:
            # the second span of a call: what it adds (content, tool calls) is kept, its usage is not counted again
            first_session, learns_model = first
            duplicate: dict[str, Any] = {"otel.trace_id": trace_id, "otel.span_id": span_id, "otel.span_name": name,
                                         **_conversation(call)}
            if learns_model and call.model:
                duplicate["model"] = call.model
            if call.tool_calls:
                duplicate["tool_calls"] = call.tool_calls
            if call.finish_reasons:
                duplicate["finish_reasons"] = call.finish_reasons
            return [{"id": _event_id(trace_id, span_id, "duplicate"), "event_type": "custom",
                     "session_id": first_session,
                     "category": call.provider or _str(resource.get("service.name")) or "otlp",
                     "action": "otel.duplicate_span", "timestamp": start, "prompt": call.prompt,
                     "stream_data": call.response, "metadata": duplicate}]
    ours = "vibekit.session_id" in attrs  # written by TraceBuilder: every completion event is a chunk
    category = attrs.get("vibekit.category")
    service_name = _str(resource.get("service.name"))
    if service_name and service_name.startswith("unknown_service"):
        service_name = None  # the SDK's placeholder when the application named no service
    agent = (call.agent_name if call.kind in ("agent", "tool") else None) or call.provider or call.agent_name \
        or service_name or "otlp"
    category = category if isinstance(category, str) and category else agent
    mode = call.operation or name or None
    context = {"otel.trace_id": trace_id, "otel.span_id": span_id, "otel.span_name": name}
    if resource.get("service.name"):
        context["service.name"] = resource["service.name"]
    labels = _labels(call)
    taught: list[dict[str, Any]] = []
    if folder is not None:
        inherited, learners, named = folder.share_labels(trace_id, sid, labels)
        labels.update(inherited)
        taught = [{"id": _event_id(trace_id, span_id, "labels", learner), "event_type": "custom",
                   "session_id": learner, "category": call.provider or _str(resource.get("service.name")) or "otlp",
                   "action": "otel.trace_labels", "timestamp": start, "metadata": dict(named)}
                  for learner in learners if learner != sid]
    start_meta = {**context, **_metadata(attrs), **labels, **_conversation(call)}
    if kind:
        start_meta["otel.kind"] = int(kind)
    if call.request_model or call.model:
        start_meta["model"] = call.request_model or call.model
    out: list[dict[str, Any]] = [{
        "id": _event_id(trace_id, span_id, "start"), "event_type": "start", "session_id": sid, "category": category,
        "agent": agent, "mode": mode, "action": mode, "prompt": call.prompt, "timestamp": start,
        "parent_session_id": session_id_of(trace_id, parent_id) if parent_id else None, "metadata": start_meta,
    }]
    errored = False
    chunks: list[dict[str, Any]] = []
    for index, (event_name, ts, ev_attrs) in enumerate(events):
        base = {"id": _event_id(trace_id, span_id, "event", index), "session_id": sid, "category": category,
                "timestamp": ts}
        if event_name == "exception":
            errored = True
            out.append({**base, "event_type": "error",
                        "error_type": _type_name(_str(ev_attrs.get("exception.type"))) or "Exception",
                        "error_message": ev_attrs.get("exception.message") or "",
                        "error_stack": ev_attrs.get("exception.stacktrace"),
                        "metadata": _metadata({k: v for k, v in ev_attrs.items() if not k.startswith("exception.")})})
        elif event_name in conventions.FIRST_CHUNK_EVENTS or (event_name in _COMPLETION_EVENTS and ours):
            # a chunk arriving (or the mark of the first one): its time is real.  Another instrumentation's
            # gen_ai.choice is the whole output message, whenever its event is stamped: never a chunk, never a TTFT
            text = conventions.text_of(ev_attrs.get("gen_ai.completion.chunk") or ev_attrs.get("gen_ai.completion")
                                       or ev_attrs.get("message") or ev_attrs.get("content")
                                       or ev_attrs.get("llm.content.completion.chunk"))
            chunk = {**base, "event_type": "stream", "stream_data": text or "", "action": event_name,
                     "metadata": _metadata(ev_attrs, frozenset({"gen_ai.completion", "message", "content", "index",
                                                                "gen_ai.completion.chunk"}))}
            chunks.append(chunk)
            out.append(chunk)
        elif event_name not in _NOT_CUSTOM:
            out.append({**base, "event_type": "custom", "action": event_name, "label": ev_attrs.get("vibekit.label"),
                        "value": ev_attrs.get("vibekit.value"), "metadata": _metadata(ev_attrs)})
    response = call.response
    answered_in_chunks = any(c["stream_data"] for c in chunks)
    if chunks and not answered_in_chunks and response:
        chunks[0]["stream_data"] = response  # a first-token mark without text: the answer begins there
        answered_in_chunks = True
    elif not chunks and call.first_chunk_at is not None and (end is None or call.first_chunk_at <= end):
        out.append({"id": _event_id(trace_id, span_id, "first-chunk"), "event_type": "stream", "session_id": sid,
                    "category": category, "stream_data": response or "", "timestamp": max(start, call.first_chunk_at),
                    "action": "first_chunk"})
        answered_in_chunks = True
    error_type = _type_name(_str(attrs.get("error.type")))
    if failed and not errored:
        out.append({"id": _event_id(trace_id, span_id, "status"), "event_type": "error", "session_id": sid,
                    "category": category, "timestamp": end or start, "error_type": error_type or "Error",
                    "error_message": status_message or (f"{error_type}" if error_type else "span status ERROR")})
    if end is not None:
        end_meta: dict[str, Any] = {**context}
        if call.model:
            end_meta["model"] = call.model
        for field, count in call.tokens.items():
            end_meta[_TOKEN_METADATA[field]] = count
        if call.finish_reasons:
            end_meta["finish_reasons"] = call.finish_reasons
        if call.tool_calls:
            end_meta["tool_calls"] = call.tool_calls
        if call.response_id:
            end_meta["response_id"] = call.response_id
        if call.cost_usd is not None:
            end_meta["reported_cost_usd"] = call.cost_usd
        if status_message:
            end_meta["status_message"] = status_message
        out.append({"id": _event_id(trace_id, span_id, "end"), "event_type": "end", "session_id": sid,
                    "category": category, "status": "failed" if failed else "completed", "timestamp": end,
                    "stream_data": None if answered_in_chunks else response, "metadata": end_meta})
    return out + taught


_CLASS_REPR = re.compile(r"^<class '([^']+)'>$")


def _type_name(value: str | None) -> str | None:
    """An error type as a name: ``<class 'openai.RateLimitError'>`` (what str() of a class gives) is the class."""
    if value:
        match = _CLASS_REPR.match(value.strip())
        if match:
            return match.group(1)
    return value

def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Seen:
    __slots__ = ("session_id", "trace_id", "parent_id", "start", "end", "models", "response_id", "scopes")

    def __init__(self, session_id: str, trace_id: str, parent_id: str | None, start: int, end: int,
                 models: frozenset[str], response_id: str | None, scope: str) -> None:
        self.session_id, self.trace_id, self.parent_id = session_id, trace_id, parent_id
        self.start, self.end, self.models, self.response_id = start, end, models, response_id
        self.scopes = {scope}


class CallFolder:
    """Recognises two spans that describe the same model call, so that the call is one session.

    The anthropic SDK 2.x records its own ``anthropic.messages.create`` span beside the span of an
    instrumentation (OpenLLMetry's ``anthropic.chat``) for the same request: two sessions, and usage
    counted twice.  Two LLM spans are one call when they come from different instrumentation scopes (one
    instrumentation never describes one call twice, so identical calls made in parallel stay apart),
    report the same provider response id or the same input and output token counts (a failed call: the
    failure), contradict each other on neither (two different response ids, or models with no name in
    common, are two calls; a span may lack either, as OpenLLMetry's does in its events mode, as long as
    one of the two names a model), overlap in time, and sit side by side: siblings under one parent in
    one trace (a call inside an agent), or both roots of traces of their own.  The two need not agree on
    usage when the response id matches (OpenLLMetry counts one output token more than the SDK does): the
    first one seen is kept.
    The second one seen folds into the first one's session: it adds its text, if the first had none, and
    a ``otel.duplicate_span`` custom event naming it, never its usage or chunks again.

    Holds the last ``max_calls`` LLM spans seen (in memory, per service).
    """

    def __init__(self, max_calls: int = 4096, max_traces: int = 4096) -> None:
        self.max_calls = max_calls
        self.max_traces = max_traces
        self._seen: OrderedDict[tuple[Any, ...], list[_Seen]] = OrderedDict()
        #: per trace: the conversation and user some span of it named, and the sessions seen without them
        self._traces: OrderedDict[str, tuple[dict[str, str], list[str]]] = OrderedDict()
        self.folded = 0

    def share_labels(self, trace_id: str, session_id: str, labels: Mapping[str, Any]
                     ) -> tuple[dict[str, str], list[str], dict[str, str]]:
        """A trace's spans share its conversation and user, whichever span names them.

        Returns what this span inherits, the earlier sessions of the trace that must learn what this span
        names, and that (an agent span, which ends last, usually carries ``gen_ai.conversation.id``).
        """
        entry = self._traces.get(trace_id)
        if entry is None:
            entry = self._traces[trace_id] = ({}, [])
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
        known, sessions = entry
        inherited = {k: v for k, v in known.items() if not labels.get(k)}
        named = {k: labels[k] for k in ("conversation_id", "user_id") if labels.get(k) and k not in known}
        learners = list(sessions) if named else []
        known.update(named)
        if len(sessions) < 256 and not all(labels.get(k) or k in known for k in ("conversation_id", "user_id")):
            sessions.append(session_id)
        return inherited, learners, named

    def same_call(self, *, session_id: str, trace_id: str, parent_id: str | None, start: int, end: int | None,
                  call: conventions.Call, scope: str | None, failed: bool = False) -> tuple[str, bool] | None:
        """The session of an earlier span describing this call, and whether that span named no model
        (so this one's model is the session's); ``None`` when there is none (and this span is remembered)."""
        tokens = call.tokens
        if call.kind != "llm" or end is None or not scope:
            return None
        models = frozenset(m.lower() for m in (call.request_model, call.response_model) if m)
        response_id = call.response_id
        keys: list[tuple[Any, ...]] = []
        if response_id:
            keys.append(("response", response_id))  # the provider's id names the call
        if tokens.get("input") and tokens.get("output"):
            keys.append(("usage", tokens["input"], tokens["output"]))
        elif failed and not tokens:
            keys.append(("failed",))  # a refused call (a 429) reports neither: the model and the times decide
        if not keys:
            return None
        for key in keys:
            for seen in self._seen.get(key, ()):
                if seen.session_id == session_id or scope in seen.scopes:
                    continue
                if seen.response_id and response_id and seen.response_id != response_id:
                    continue
                if (seen.models and models and not (seen.models & models)) or not (seen.models or models):
                    continue
                if not (start <= seen.end and seen.start <= end):
                    continue
                siblings = seen.trace_id == trace_id and seen.parent_id == parent_id
                separate_roots = seen.trace_id != trace_id and seen.parent_id is None and parent_id is None
                if siblings or separate_roots:
                    self.folded += 1
                    seen.scopes.add(scope)
                    learns_model = not seen.models
                    if learns_model:
                        seen.models = models
                    return seen.session_id, learns_model
        entry = _Seen(session_id, trace_id, parent_id, start, end, models, response_id, scope)
        for key in keys:
            candidates = self._seen.get(key)
            if candidates is None:
                candidates = self._seen[key] = []
            candidates.append(entry)
            del candidates[:-64]  # identical calls in a burst: the latest are the ones a duplicate can be of
            self._seen.move_to_end(key)
        while len(self._seen) > self.max_calls:
            self._seen.popitem(last=False)
        return None


def log_event(record: Mapping[str, Any], resource: Mapping[str, Any], position: tuple[int, ...]) -> dict[str, Any]:
    """The event one log record becomes; raises ``ValueError`` for a record that cannot be read.

    A record with a span context belongs to that span's session and only **enriches** it: its prompt
    fills the session's when the span carried none (content sent as events only), its answer is kept as
    text, its messages and tool calls in metadata, and its token counts are left out, since the span
    counts them once.  It is never a stream event, so it cannot fake a time to first token.
    """
    attrs = _jsonable(attributes(record.get("attributes")))
    ts_raw = record.get("timeUnixNano") or record.get("observedTimeUnixNano")
    if not ts_raw or ts_raw in ("0", 0):
        raise ValueError("a log record needs timeUnixNano or observedTimeUnixNano")
    timestamp = _ms(ts_raw, "timeUnixNano")
    name = record.get("eventName") or attrs.pop("event.name", None) or "log"
    trace, span = record.get("traceId"), record.get("spanId")
    sid = session_id_of(_hex_id(trace, 32, "traceId"), _hex_id(span, 16, "spanId")) if trace and span else None
    body = any_value(record.get("body"))
    digest = _event_id(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode(), *position)
    if attrs.get("vibekit.event_type") in ("custom", "error"):  # written by TraceBuilder: restore the event
        metadata = _metadata(attrs)
        agent = _str(attrs.get("gen_ai.provider.name")) or _str(resource.get("service.name")) or "otlp"
        return {"id": digest, "category": attrs.get("vibekit.category") or agent, "timestamp": timestamp,
                "session_id": sid, "label": attrs.get("vibekit.label"), "value": attrs.get("vibekit.value"),
                "event_type": attrs["vibekit.event_type"], "action": attrs.get("vibekit.action"),
                "error_type": attrs.get("exception.type"), "error_message": attrs.get("exception.message"),
                "error_stack": attrs.get("exception.stacktrace"),
                "metadata": {k: v for k, v in metadata.items() if not k.startswith("exception.")}}
    content = dict(attrs)
    if isinstance(body, Mapping):
        content = {**{k: v for k, v in body.items() if k not in content}, **content}
    call = conventions.read_call(content, [(name, timestamp, {"body": body, **attrs})], name=name,
                                 start_ms=timestamp, resource=resource)
    agent = call.provider or _str(resource.get("service.name")) or "otlp"
    metadata = _metadata(attrs)
    if resource.get("service.name"):
        metadata["service.name"] = resource["service.name"]
    if record.get("severityNumber"):
        metadata["severity_number"] = int(record["severityNumber"])
    event: dict[str, Any] = {"id": digest, "category": agent, "timestamp": timestamp, "session_id": sid,
                             "action": name, "label": record.get("severityText") or None, "event_type": "custom"}
    gen_ai = name == conventions.DETAILS_EVENT or name in conventions.INPUT_EVENTS or name in conventions.OUTPUT_EVENTS
    if gen_ai:
        event["prompt"] = call.prompt if name != "gen_ai.assistant.message" else None
        event["stream_data"] = call.response
        metadata.update(_conversation(call))
        if call.tool_calls:
            metadata["tool_calls"] = call.tool_calls
        for key, value in _labels(call).items():
            if key != "kind":
                metadata[key] = value
    elif body is not None:
        metadata["body"] = body
    if sid:
        # the span counts the call's usage once; a record of the same call must not count it again
        metadata = {k: v for k, v in metadata.items() if k not in _ANY_TOKEN_KEY}
    event["metadata"] = metadata
    return event


def trace_request_events(data: Mapping[str, Any], folder: CallFolder | None = None
                         ) -> tuple[list[TelemetryEvent], int, list[str]]:
    """The validated events of an ``ExportTraceServiceRequest``, the number of rejected spans and why.

    A span is taken whole or not at all: storing its start without its end (whose timestamp the gate
    refused, say) would leave a session open for ever.  The reasons name the span.  ``folder`` (the
    service's ``call_folder``) folds two spans of one call into one session.
    """
    events: list[TelemetryEvent] = []
    rejected, reasons = 0, []
    for resource_spans in _items(data.get("resourceSpans")):
        resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in _items(resource_spans.get("scopeSpans")):
            scope = (scope_spans.get("scope") or {}).get("name") if isinstance(scope_spans.get("scope"), Mapping) else None
            for index, span in enumerate(_items(scope_spans.get("spans"))):
                try:  # InvalidEventError is a ValueError
                    events.extend([TelemetryEvent.from_dict(e) for e in span_events(span, resource, folder, scope)])
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
