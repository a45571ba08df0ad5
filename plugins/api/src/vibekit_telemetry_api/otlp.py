"""OTLP/HTTP ingest: decode ``/v1/traces``, ``/v1/logs`` and ``/v1/metrics`` requests (protobuf or JSON) and answer them.

The mapping to telemetry events lives in the kernel, shared with the ``grpc``
plugin: spans and log records follow the GenAI conventions
(:mod:`vibekit_telemetry.genai`, shared with the ``otlp`` exporter too), metric
data points become metric events (:mod:`vibekit_telemetry.otlp_metrics`).
There each span's events, each log record's and each data point's event are
validated before any is tracked, so a record the kernel refuses (a timestamp
out of range, say) is reported in ``partialSuccess`` alone and the rest of the
request is stored.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import orjson

from vibekit_telemetry.genai import hex_ids, log_request_events, trace_request_events
from vibekit_telemetry.otlp_metrics import MetricDeltas, metric_request_events

__all__ = ["SIGNALS", "MetricDeltas", "OTLPDecodeError", "decode", "encode_response", "encode_status",
           "log_request_events", "metric_request_events", "trace_request_events"]

#: signal -> (protobuf module, request message, response message, partial success field in JSON, in protobuf)
SIGNALS = {
    "traces": ("opentelemetry.proto.collector.trace.v1.trace_service_pb2", "ExportTraceServiceRequest",
               "ExportTraceServiceResponse", "rejectedSpans", "rejected_spans"),
    "logs": ("opentelemetry.proto.collector.logs.v1.logs_service_pb2", "ExportLogsServiceRequest",
             "ExportLogsServiceResponse", "rejectedLogRecords", "rejected_log_records"),
    "metrics": ("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2", "ExportMetricsServiceRequest",
                "ExportMetricsServiceResponse", "rejectedDataPoints", "rejected_data_points"),
}


class OTLPDecodeError(ValueError):
    """The request body is not a valid OTLP message (HTTP 400, not retryable)."""


def decode(signal: str, body: bytes, content_type: str) -> dict[str, Any]:
    """An export request as a dict in the OTLP/JSON shape; ``signal`` is ``traces``, ``logs`` or ``metrics``."""
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

    module, request_name = SIGNALS[signal][:2]
    request = getattr(import_module(module), request_name)
    try:
        message = request.FromString(body)
    except DecodeError as exc:
        raise OTLPDecodeError(f"the body is not a valid protobuf {request_name}: {exc}") from None
    data = MessageToDict(message, use_integers_for_enums=True)
    hex_ids(data)
    return data


def encode_response(signal: str, content_type: str, rejected: int, message: str) -> bytes:
    """The export response: empty on full success, ``partialSuccess`` when something was rejected."""
    module, _, response_name, json_field, proto_field = SIGNALS[signal]
    if content_type == "application/json":
        return orjson.dumps({"partialSuccess": {json_field: str(rejected), "errorMessage": message}} if rejected else {})
    response = getattr(import_module(module), response_name)()
    if rejected:
        setattr(response.partial_success, proto_field, rejected)
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
