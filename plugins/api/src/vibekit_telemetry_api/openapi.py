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
_EVENT_PROPS: dict[str, Any] = {
    "id": {"type": "string"}, "event_type": {"type": "string", "enum": ["start", "stream", "end", "error", "custom"]},
    "category": {"type": "string", "minLength": 1}, "session_id": {"type": "string"}, "action": {"type": "string"},
    "label": {"type": "string"}, "value": {"type": "number"}, "timestamp": {"type": "integer", "description": "epoch ms"},
    "metadata": {"type": "object"}, "agent": {"type": "string"}, "mode": {"type": "string"},
    "prompt": {"type": "string"}, "parent_session_id": {"type": "string"}, "stream_data": {"type": "string"},
    "status": {"type": "string"}, "error_type": {"type": "string"}, "error_message": {"type": "string"},
    "error_stack": {"type": "string"},
}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "Invalid parameters or body", 401: "No or wrong credentials", 403: "The key lacks the scope",
             404: "Not found", 409: "The export file exists", 413: "Body or batch too large",
             415: "Unsupported content type or encoding", 422: "The body does not fit", 429: "Rate limited",
             503: "Storage or service unavailable"}
    return {str(code): {"description": names[code], "content": {"application/json": {"schema": _ERROR}}} for code in codes}


def _json(description: str, schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}}


def openapi_document(service: TelemetryService, config: APIConfig, *, analytics: bool) -> dict[str, Any]:
    """The document for this server (analytics paths only when analytics is installed)."""
    guarded = _errors(401, 403, 429)
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
                         {"$ref": "#/components/schemas/Event"},
                         {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "maxItems": config.max_batch},
                         {"type": "object", "required": ["events"], "additionalProperties": False,
                          "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}},
                     ]}}}},
                     "responses": {**_json("Accepted", {"type": "object"}, "202"), **_errors(400, 413, 415, 422),
                                   **guarded}, **read},
        },
        "/api/sessions": {
            "get": {"summary": "List sessions", "operationId": "listSessions", "parameters": _parameters(SessionsQuery, max_page=config.max_page),
                    "responses": {**_json("Sessions"), **_errors(400), **guarded}, **read},
            "post": {"summary": "Start a session", "operationId": "startSession",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["agent"], "additionalProperties": False, "properties": {
                             "agent": {"type": "string"}, "mode": {"type": "string"}, "prompt": {"type": "string"},
                             "metadata": {"type": "object"}, "session_id": {"type": "string"},
                             "parent_session_id": {"type": "string"},
                             "timestamp": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}}}}},
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
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "status": {"type": "string", "enum": ["completed", "failed", "cancelled", "timeout"]},
                    "metadata": {"type": "object"}, "timestamp": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}}}}},
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
                "Event": {"type": "object", "required": ["category"], "properties": _EVENT_PROPS},
                "EventPage": {"type": "object", "required": ["events", "count"], "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "count": {"type": "integer"}, "next_cursor": {"type": "string", "nullable": True}}},
            },
        },
    }
