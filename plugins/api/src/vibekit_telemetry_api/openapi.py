"""The OpenAPI 3.0 document served at ``/openapi.json``.

Query parameters come from the same attrs classes that validate them, so the
document cannot drift from what the server accepts; bodies and responses are
described once here.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any, Literal

import attrs

from vibekit_telemetry import MAX_ID_LENGTH, MAX_NAME_LENGTH, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS

from .validation import (
    AlertsQuery,
    AnomalyQuery,
    EventsQuery,
    ExportQuery,
    SeriesQuery,
    SessionQuery,
    SessionsQuery,
    StreamQuery,
    WindowQuery,
)

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

    from .config import APIConfig

_TIME = "epoch milliseconds, an ISO 8601 date, or a span back from now such as 1h, 7d"


def _schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if set(args) == {int, str}:
            return {"type": "string", "description": _TIME}
        return _schema(args[0])
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    return {"type": "string"}


def _parameters(cls: type, skip: tuple[str, ...] = (), max_page: int = 1000) -> list[dict[str, Any]]:
    out = []
    for field in attrs.fields(attrs.resolve_types(cls)):
        if field.name in skip:
            continue
        schema = _schema(field.type)
        if field.default is not attrs.NOTHING and field.default is not None and not isinstance(field.default, attrs.Factory):
            schema["default"] = field.default
        if field.name == "limit":
            schema.update(minimum=1, maximum=max_page)
        if field.name == "offset":
            schema["minimum"] = 0
        param = {"name": field.name, "in": "query", "required": field.default is attrs.NOTHING, "schema": schema}
        out.append(param)
    return out


_ERROR = {"$ref": "#/components/schemas/Error"}

# What the kernel's gate accepts, so that a body this document allows is a body the server takes;
# test_openapi.py checks both against the running server.
_MIN_TIMESTAMP_MS, _MAX_TIMESTAMP_MS = MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS  # 2000-01-01 and 2200-01-01, UTC
_MAX_ID_LENGTH, _MAX_NAME_LENGTH = MAX_ID_LENGTH, MAX_NAME_LENGTH

# In every body ``null`` means "not given" (the field's default), as TelemetryEvent.from_dict reads it, so every
# optional field says ``nullable`` (OpenAPI 3.0: on the schema that has the ``type``, and null in an ``enum``).
_ID = {"type": "string", "pattern": f"^[!-~]{{1,{_MAX_ID_LENGTH}}}$",
       "description": "printable ASCII without spaces (letters, digits, punctuation)"}
_NAME = {"type": "string", "maxLength": _MAX_NAME_LENGTH, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$",
         "description": "no control characters or line breaks"}
_TEXT = {"type": "string"}
_EPOCH_MS = {"minimum": _MIN_TIMESTAMP_MS, "maximum": _MAX_TIMESTAMP_MS}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = {**schema, "nullable": True}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _timestamp(number: str) -> dict[str, Any]:
    """Epoch milliseconds (``number``: integer, or any number for events) or a string the kernel reads as a time."""
    return {"description": "epoch milliseconds between 2000 and 2200, or an ISO 8601 date-time ('2025-05-01T12:00:00Z')",
            "oneOf": [_nullable({"type": number, **_EPOCH_MS}), {"type": "string", "minLength": 1}]}


_EVENT_TYPE = {"type": "string", "enum": ["start", "stream", "end", "error", "custom"]}
_EVENT_PROPS: dict[str, Any] = {
    "id": _nullable(_ID), "event_type": _nullable(_EVENT_TYPE),
    "category": {**_NAME, "minLength": 1}, "session_id": _nullable(_ID), "action": _nullable(_NAME),
    "label": _nullable(_NAME), "value": _nullable({"type": "number", "description": "integers fit in 64 bits"}),
    "timestamp": _timestamp("number"), "metadata": _nullable({"type": "object"}), "agent": _nullable(_NAME),
    "mode": _nullable(_NAME), "prompt": _nullable(_TEXT), "parent_session_id": _nullable(_ID),
    "stream_data": _nullable(_TEXT), "status": _nullable(_NAME), "error_type": _nullable(_NAME),
    "error_message": _nullable(_TEXT), "error_stack": _nullable(_TEXT),
    "truncated": _nullable({"type": "array", "items": {"type": "string"}}),
}
# the seed's camelCase names, which event bodies also take
_EVENT_PROPS.update({
    name.split("_")[0] + "".join(part.capitalize() for part in name.split("_")[1:]):
        {**schema, "description": f"the same as {name}"}
    for name, schema in list(_EVENT_PROPS.items()) if "_" in name})
_EVENT = {"type": "object", "required": ["category"], "additionalProperties": False, "properties": _EVENT_PROPS,
          "description": "stream, end and error events need a session_id"}
_SESSION_START = {"type": "object", "required": ["agent"], "additionalProperties": False, "properties": {
    "agent": {**_NAME, "minLength": 1}, "mode": _nullable(_NAME), "prompt": _nullable(_TEXT),
    "metadata": _nullable({"type": "object"}), "session_id": _nullable(_ID), "parent_session_id": _nullable(_ID),
    "timestamp": _timestamp("integer")}}
_SESSION_END = {"type": "object", "additionalProperties": False, "properties": {
    "status": _nullable({"type": "string", "enum": ["completed", "failed", "cancelled", "timeout"]}),
    "metadata": _nullable({"type": "object"}), "timestamp": _timestamp("integer")}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "Invalid parameters or body", 401: "No or wrong credentials",
             403: "The key lacks the scope, or the request's Origin is not trusted", 404: "Not found",
             409: "The export file exists", 413: "Body or batch too large", 415: "Unsupported content type or encoding",
             421: "A Host this server does not answer to (api.allowed_hosts)", 422: "The body does not fit",
             429: "Rate limited, or too many connections from this client", 503: "Storage or service unavailable"}
    return {str(code): {"description": names[code], "content": {"application/json": {"schema": _ERROR}}} for code in codes}


def _json(description: str, schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}}


def openapi_document(service: TelemetryService, config: APIConfig, *, analytics: bool) -> dict[str, Any]:
    """The document for this server (analytics paths only when analytics is installed)."""
    guarded = _errors(401, 403, 421, 429)
    batch = {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1,
             "maxItems": config.max_batch}
    read = {"security": [{"apiKey": []}, {"bearer": []}]}
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness and component health", "operationId": "health",
                            "responses": _json("Health report")}},
        "/api/events": {
            "get": {"summary": "Query events (cursor paging)", "operationId": "listEvents",
                    "parameters": _parameters(EventsQuery, max_page=config.max_page),
                    "responses": {**_json("A page of events", {"$ref": "#/components/schemas/EventPage"}),
                                  **_errors(400), **guarded}, **read},
            "post": {"summary": "Ingest one event or a batch", "operationId": "ingestEvents",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                         {"$ref": "#/components/schemas/Event"}, batch,
                         {"type": "object", "required": ["events"], "additionalProperties": False,
                          "properties": {"events": batch}},
                     ]}}}},
                     "responses": {**_json("Accepted: the valid events (invalid ones are listed in `rejected`)",
                                           {"$ref": "#/components/schemas/Accepted"}, "202"),
                                   **_errors(400, 413, 415, 422), **guarded}, **read},
        },
        "/api/sessions": {
            "get": {"summary": "List sessions", "operationId": "listSessions", "parameters": _parameters(SessionsQuery, max_page=config.max_page),
                    "responses": {**_json("Sessions"), **_errors(400), **guarded}, **read},
            "post": {"summary": "Start a session", "operationId": "startSession",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/SessionStart"}}}},
                     "responses": {**_json("Started", {"type": "object"}, "201"), **_errors(400, 413, 415, 422),
                                   **guarded}, **read},
        },
        "/api/sessions/{session_id}": {"get": {
            "summary": "One session", "operationId": "getSession",
            "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}},
                           *_parameters(SessionQuery)],
            "responses": {**_json("The session"), **_errors(400, 404), **guarded}, **read}},
        "/api/sessions/{session_id}/end": {"post": {
            "summary": "End a session", "operationId": "endSession",
            "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SessionEnd"}}}},
            "responses": {**_json("Ended", {"type": "object"}, "202"), **_errors(400, 413, 415, 422), **guarded}, **read}},
        "/api/export": {"get": {
            "summary": "Export events (streamed), or write them to a file in the export directory",
            "operationId": "exportEvents", "parameters": _parameters(ExportQuery),
            "responses": {"200": {"description": "The export", "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
                **_json("Written to the export directory", {"type": "object"}, "201"), **_errors(400, 409), **guarded},
            **read}},
        "/api/stream": {"get": {
            "summary": "Live events as Server-Sent Events (with metrics=<window>, also `metrics` messages)",
            "operationId": "streamEvents",
            "parameters": _parameters(StreamQuery, skip=("api_key",)),
            "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {
                "schema": {"type": "string"}}}}, **_errors(400, 503), **guarded}, **read}},
        "/v1/traces": {"post": {
            "summary": "OTLP/HTTP trace ingest (GenAI spans become sessions)", "operationId": "otlpTraces",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                          "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_json("Export response (partialSuccess when something was rejected)"),
                          "400": {"description": "Undecodable"}, "413": {"description": "Too large"},
                          "415": {"description": "Unsupported content type"}, **guarded}, **read}},
        "/v1/logs": {"post": {
            "summary": "OTLP/HTTP log ingest (log records become events)", "operationId": "otlpLogs",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                          "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_json("Export response (partialSuccess when something was rejected)"),
                          "400": {"description": "Undecodable"}, "413": {"description": "Too large"},
                          "415": {"description": "Unsupported content type"}, **guarded}, **read}},
        "/v1/metrics": {"post": {
            "summary": "OTLP/HTTP metric ingest (data points become metric events)", "operationId": "otlpMetrics",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                          "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_json("Export response (partialSuccess when something was rejected)"),
                          "400": {"description": "Undecodable"}, "413": {"description": "Too large"},
                          "415": {"description": "Unsupported content type"}, **guarded}, **read}},
    }
    if analytics:
        paths["/api/metrics"] = {"get": {"summary": "Live metrics of a window", "operationId": "getMetrics",
                                         "parameters": _parameters(WindowQuery, skip=("categories",)),
                                         "responses": {**_json("Metrics"), **_errors(400), **guarded}, **read}}
        paths["/api/insights"] = {"get": {"summary": "Insights about a window", "operationId": "getInsights",
                                          "parameters": _parameters(WindowQuery),
                                          "responses": {**_json("Insights"), **_errors(400), **guarded}, **read}}
        paths["/api/series"] = {"get": {"summary": "One metric per step over a window", "operationId": "getSeries",
                                        "parameters": _parameters(SeriesQuery),
                                        "responses": {**_json("Series"), **_errors(400), **guarded}, **read}}
        paths["/api/anomalies"] = {"get": {"summary": "Anomalies in the metric history", "operationId": "getAnomalies",
                                           "parameters": _parameters(AnomalyQuery),
                                           "responses": {**_json("Anomalies"), **_errors(400), **guarded}, **read}}
    if service.host.impls("get_alerts"):
        paths["/api/alerts"] = {"get": {"summary": "Alert channels, counters and latest deliveries",
                                        "operationId": "getAlerts", "parameters": _parameters(AlertsQuery),
                                        "responses": {**_json("Alerts"), **_errors(400), **guarded}, **read}}
    if config.metrics.prometheus:
        paths[config.metrics.endpoint] = {"get": {
            "summary": "Prometheus metrics", "operationId": "prometheusMetrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}, **guarded}, **read}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{service.service_name} telemetry API", "version": "1",
                 "description": "vibekit-telemetry HTTP API: ingest, queries, live streams, OTLP ingest, metrics."},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
                "Event": _EVENT,
                "Accepted": {"type": "object", "required": ["accepted", "ids", "not_accepted"], "properties": {
                    "accepted": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "string"}},
                    "not_accepted": {"type": "array", "items": {"type": "integer"},
                                     "description": "positions refused for now (send them again after Retry-After)"},
                    "rejected": {"type": "array", "description": "positions of invalid events (do not send again)",
                                 "items": {"type": "object", "properties": {
                                     "index": {"type": "integer"}, "field": {"type": "string"},
                                     "message": {"type": "string"}}}}}},
                "SessionStart": _SESSION_START,
                "SessionEnd": _SESSION_END,
                "EventPage": {"type": "object", "required": ["events", "count"], "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "count": {"type": "integer"}, "next_cursor": {"type": "string", "nullable": True}}},
            },
        },
    }
