"""OTLP/HTTP ingest: decode ``/v1/traces`` and ``/v1/logs`` requests (protobuf or JSON) and answer them.

The mapping to telemetry events follows the GenAI conventions and lives in the
kernel (:mod:`vibekit_telemetry.genai`), shared with the ``otlp`` exporter.
There each span's events and each log record's event are validated before any
is tracked, so a record the kernel refuses (a timestamp out of range, say) is
reported in ``partialSuccess`` alone and the rest of the request is stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from vibekit_telemetry.genai import hex_ids, log_request_events, trace_request_events

__all__ = ["OTLPDecodeError", "decode", "encode_response", "encode_status", "log_request_events",
           "trace_request_events"]


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
    hex_ids(data)
    return data


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
