"""OpenTelemetry SDK data as OTLP/JSON export requests, the form the captures are saved in.

The SDK's own OTLP encoders build the protobuf export requests (exactly what an
OTLP exporter would send); protobuf's JSON mapping then gives base64 ids and
enum names, which :func:`otlp_json` turns into OTLP/JSON's hex ids and integer
enums.  The id conversion is kept here rather than imported from the kernel so
that the captures do not depend on the mapping they are there to test.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


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


def otlp_json(message: Message) -> dict[str, Any]:
    """A protobuf export request as OTLP/JSON: camelCase keys, integer enums, hex ids."""
    data = MessageToDict(message, use_integers_for_enums=True)
    hex_ids(data)
    return data


def spans_json(spans: Sequence[Any]) -> dict[str, Any] | None:
    """Finished SDK spans as an ``ExportTraceServiceRequest`` dict (``None`` for no spans)."""
    if not spans:
        return None
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return otlp_json(encode_spans(spans))


def logs_json(records: Sequence[Any]) -> dict[str, Any] | None:
    """Finished SDK log records as an ``ExportLogsServiceRequest`` dict (``None`` for no records)."""
    if not records:
        return None
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    return otlp_json(encode_logs(records))


def metrics_json(data: Any) -> dict[str, Any] | None:
    """SDK ``MetricsData`` as an ``ExportMetricsServiceRequest`` dict (``None`` when it holds no points)."""
    if data is None or not any(scope.metrics for rm in data.resource_metrics for scope in rm.scope_metrics):
        return None
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    return otlp_json(encode_metrics(data))
