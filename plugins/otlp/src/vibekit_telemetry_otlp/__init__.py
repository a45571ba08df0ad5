"""The ``otlp`` plugin: OpenTelemetry out of vibekit-telemetry, following the GenAI conventions.

* **Export formats** ``otlp`` (OTLP/JSON: one export request per line, traces
  or logs, as the OpenTelemetry Collector's file exporter writes them) and
  ``otlp-proto`` (the same requests as protobuf, each framed by a one-byte
  signal, ``T`` or ``L``, and a four-byte big-endian length).  Both read back
  with ``telemetry import``.  Sessions become spans, chunks ``gen_ai.choice``
  span events, errors ``exception`` events, other events log records
  (:mod:`vibekit_telemetry.genai`).
* **Storage provider** ``type = "otlp"``: every stored batch is sent live to a
  collector over OTLP/HTTP (``protocol = "http/protobuf"`` or ``"http/json"``),
  with ``endpoint``, ``headers``, ``resource_attributes`` and ``timeout_ms``, or
  the standard ``OTEL_EXPORTER_OTLP_*`` / ``OTEL_RESOURCE_ATTRIBUTES`` /
  ``OTEL_SERVICE_NAME`` variables.  429 and 5xx answers raise, so the kernel's
  retry, circuit breaker and journal apply; ``Retry-After`` is honoured (up to
  ``max_retry_after_ms``) before the retry; a partial success is logged and
  counted, not retried, as the specification says.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import attrs
import httpx
import orjson

from vibekit_telemetry import ConfigError, StorageError, TelemetryEvent, hookimpl
from vibekit_telemetry.genai import TraceBuilder, base64_ids, hex_ids, log_request_events, trace_request_events

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

__all__ = ["OTLPFormats", "OTLPStorage", "from_protobuf", "resource_attributes", "to_protobuf"]

log = logging.getLogger("vibekit_telemetry.otlp")

_FORMATS = ("otlp", "otlp-proto")
_REQUEST_SIZE = 512
_SIGNALS = {b"T": "traces", b"L": "logs"}
#: event ids the storage provider remembers, so a retried or replayed batch is not sent twice
_SEEN_IDS = 200_000


def _request_class(signal: str) -> Any:
    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        return ExportTraceServiceRequest
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    return ExportLogsServiceRequest


def to_protobuf(signal: str, request: dict[str, Any]) -> bytes:
    """An OTLP/JSON export request (hex ids) as protobuf bytes."""
    from google.protobuf.json_format import ParseDict

    data = orjson.loads(orjson.dumps(request))  # a copy: the ids are rewritten in place
    base64_ids(data)
    return ParseDict(data, _request_class(signal)()).SerializeToString()


def from_protobuf(signal: str, payload: bytes) -> dict[str, Any]:
    """Protobuf bytes of an export request as OTLP/JSON (hex ids)."""
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(_request_class(signal).FromString(payload), use_integers_for_enums=True)
    hex_ids(data)
    return data


def _pairs(text: str) -> dict[str, str]:
    """``key=value,key=value`` (the format of ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_RESOURCE_ATTRIBUTES``)."""
    pairs = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


def resource_attributes(service_name: str, service_version: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resource of exported telemetry: the service, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, ``extra``."""
    resource: dict[str, Any] = {"service.name": service_name, "service.version": service_version,
                                "telemetry.sdk.name": "vibekit-telemetry"}
    resource.update(_pairs(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource["service.name"] = os.environ["OTEL_SERVICE_NAME"]
    resource.update(extra or {})
    return resource


class OTLPFormats:
    """The ``otlp`` and ``otlp-proto`` export formats (loaded on first use)."""

    name = "otlp-formats"

    def __init__(self) -> None:
        self.service_name = "unknown_service"
        self.service_version = "0.0.0"

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Name the resource after the service."""
        self.service_name = service.service_name
        self.service_version = service.config.service_version

    @hookimpl
    def export_formats(self) -> list[str]:
        """``otlp`` (OTLP/JSON lines) and ``otlp-proto``."""
        return list(_FORMATS)

    @hookimpl
    def import_formats(self) -> list[str]:
        """``otlp`` and ``otlp-proto``."""
        return list(_FORMATS)

    @hookimpl
    def export_options(self, format: str) -> list[str] | None:
        """``resource_attributes`` (merged into the service's resource)."""
        return ["resource_attributes"] if format in _FORMATS else None

    @hookimpl
    def export(self, format: str, events: Iterable[TelemetryEvent], output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write export requests of up to 512 spans or log records as the events are read."""
        if format not in _FORMATS:
            return None
        unknown = set(options) - {"resource_attributes"}
        if unknown:
            raise ValueError(f"{format} export has no options {sorted(unknown)}")
        builder = TraceBuilder(resource_attributes(self.service_name, self.service_version,
                                                   options.get("resource_attributes")))
        count = 0
        for event in events:
            builder.add(event)
            count += 1
            if len(builder.spans) >= _REQUEST_SIZE or len(builder.logs) >= _REQUEST_SIZE:
                self._write(format, output, builder)
        builder.finish()
        while builder.spans or builder.logs:
            self._write(format, output, builder)
        return count

    @staticmethod
    def _write(format: str, output: BinaryIO, builder: TraceBuilder) -> None:
        traces, logs = builder.take(_REQUEST_SIZE)
        for signal, request in (("traces", traces), ("logs", logs)):
            if request is None:
                continue
            if format == "otlp":
                output.write(orjson.dumps(request) + b"\n")
            else:
                payload = to_protobuf(signal, request)
                output.write((b"T" if signal == "traces" else b"L") + struct.pack(">I", len(payload)) + payload)

    @hookimpl
    def import_events(self, format: str, input: BinaryIO, options: dict[str, Any]) -> Iterable[Mapping[str, Any]] | None:
        """Read export requests back into events."""
        if format not in _FORMATS:
            return None
        return self._read_json(input) if format == "otlp" else self._read_proto(input)

    @staticmethod
    def _events(signal: str, request: Mapping[str, Any], where: str) -> Iterator[dict[str, Any]]:
        make = trace_request_events if signal == "traces" else log_request_events
        events, rejected, reasons = make(request)
        if rejected:
            raise ValueError(f"{where}: {rejected} unreadable: {'; '.join(reasons[:3])}")
        yield from events

    def _read_json(self, input: BinaryIO) -> Iterator[dict[str, Any]]:
        for number, line in enumerate(input, 1):
            if not line.strip():
                continue
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"line {number}: not valid JSON: {exc}") from None
            if not isinstance(request, dict):
                raise ValueError(f"line {number}: expected an OTLP export request object")
            signal = "traces" if "resourceSpans" in request else "logs" if "resourceLogs" in request else None
            if signal is None:
                raise ValueError(f"line {number}: neither resourceSpans nor resourceLogs")
            yield from self._events(signal, request, f"line {number}")

    def _read_proto(self, input: BinaryIO) -> Iterator[dict[str, Any]]:
        number = 0
        while head := input.read(5):
            number += 1
            if len(head) < 5 or head[:1] not in _SIGNALS:
                raise ValueError(f"record {number}: not an otlp-proto record (a T or L byte and a length)")
            size = struct.unpack(">I", head[1:])[0]
            payload = input.read(size)
            if len(payload) != size:
                raise ValueError(f"record {number}: truncated ({len(payload)} of {size} bytes)")
            signal = _SIGNALS[head[:1]]
            try:
                request = from_protobuf(signal, payload)
            except Exception as exc:
                raise ValueError(f"record {number}: not a valid {signal} request: {exc}") from None
            yield from self._events(signal, request, f"record {number}")



class OTLPStorage:
    """The live OTLP/HTTP storage provider (``[[storage]] type = "otlp"``)."""

    name = "otlp"

    @attrs.frozen
    class Config:
        """Options of the OTLP storage provider (``[[storage]] type = "otlp"``)."""

        endpoint: str | None = None
        protocol: Literal["http/protobuf", "http/json", "grpc"] | None = None
        headers: dict[str, str] = attrs.field(factory=dict)
        resource_attributes: dict[str, Any] = attrs.field(factory=dict)
        timeout_ms: int = 10_000
        compression: Literal["gzip", "none"] = "gzip"
        max_retry_after_ms: int = 30_000

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        self.service_name = "unknown_service"
        self.service_version = "0.0.0"
        self._client: httpx.Client | None = None
        self._channel: Any = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unsent: list[tuple[str, dict[str, Any]]] = []
        self._builder: TraceBuilder | None = None
        self.sent = {"spans": 0, "logs": 0, "rejected": 0, "requests": 0}

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Name the resource after the service; check the protocol now rather than at the first batch."""
        self.service_name = service.service_name
        self.service_version = service.config.service_version
        self._settings()

    def _settings(self) -> tuple[str, str, dict[str, str]]:
        env = os.environ
        protocol = self.config.protocol or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol == "grpc" and importlib.util.find_spec("grpc") is None:
            raise ConfigError("otlp protocol 'grpc' needs grpcio (pip install vibekit-telemetry-grpc or grpcio); "
                              "or use http/protobuf or http/json")
        if protocol not in ("http/protobuf", "http/json", "grpc"):
            raise ConfigError(f"otlp protocol must be http/protobuf, http/json or grpc, got {protocol!r}")
        default = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
        endpoint = self.config.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", default)
        headers = {**_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS", "")), **self.config.headers}
        return protocol, endpoint.rstrip("/"), headers

    def _url(self, endpoint: str, signal: str) -> str:
        specific = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        return specific if specific and not self.config.endpoint else f"{endpoint}/v1/{signal}"

    @hookimpl
    def store(self, events: list[TelemetryEvent]) -> None:
        """Send a batch: sessions that ended in it as spans, the rest as log records; raise to be retried.

        The kernel retries a failed batch (and replays it from its journal later), so this is idempotent:
        events already taken in are skipped by id, and requests that failed to send go first next time.
        """
        protocol, endpoint, headers = self._settings()
        if self._client is None:
            self._client = httpx.Client(timeout=self.config.timeout_ms / 1000)
        if self._builder is None:
            self._builder = TraceBuilder(resource_attributes(self.service_name, self.service_version,
                                                             self.config.resource_attributes), max_events_per_span=10_000)
        builder = self._builder
        for event in events:
            if event.id in self._seen:
                continue
            self._seen[event.id] = None
            if len(self._seen) > _SEEN_IDS:
                self._seen.popitem(last=False)
            builder.add(event)
        traces, logs = builder.take()
        self._unsent += [(signal, request) for signal, request in (("traces", traces), ("logs", logs)) if request]
        while self._unsent:
            signal, request = self._unsent[0]
            self._send(signal, request, protocol, self._url(endpoint, signal), headers)
            self._unsent.pop(0)

    def _send_grpc(self, signal: str, request: dict[str, Any], endpoint: str, headers: dict[str, str]) -> int:
        """Export over OTLP/gRPC; the number of items the collector rejected."""
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        if self._channel is None:
            target = endpoint.split("://", 1)[-1]
            self._channel = grpc.insecure_channel(target) if not endpoint.startswith("https://") else \
                grpc.secure_channel(target, grpc.ssl_channel_credentials())
        stub = trace_service_pb2_grpc.TraceServiceStub(self._channel) if signal == "traces" \
            else logs_service_pb2_grpc.LogsServiceStub(self._channel)
        message = _request_class(signal).FromString(to_protobuf(signal, request))
        try:
            response = stub.Export(message, metadata=[(k.lower(), v) for k, v in headers.items()],
                                   timeout=self.config.timeout_ms / 1000)
        except grpc.RpcError as exc:
            raise StorageError(f"OTLP/gRPC collector at {endpoint}: {exc.code().name} {exc.details()}") from exc
        partial = response.partial_success
        return int(partial.rejected_spans if signal == "traces" else partial.rejected_log_records)

    def _send(self, signal: str, request: dict[str, Any], protocol: str, url: str, headers: dict[str, str]) -> None:
        assert self._client is not None
        if protocol == "grpc":
            rejected = self._send_grpc(signal, request, url.rsplit("/v1/", 1)[0], headers)
            self._count(signal, request, rejected, url)
            return
        if protocol == "http/json":
            body, content_type = orjson.dumps(request), "application/json"
        else:
            body, content_type = to_protobuf(signal, request), "application/x-protobuf"
        send_headers = {**headers, "content-type": content_type}
        if self.config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            send_headers["content-encoding"] = "gzip"
        try:
            response = self._client.post(url, content=body, headers=send_headers)
        except httpx.HTTPError as exc:
            raise StorageError(f"OTLP collector at {url} unreachable: {exc}") from exc
        self.sent["requests"] += 1
        if response.status_code in (429, 502, 503, 504):
            wait = response.headers.get("retry-after", "")
            if wait.isdigit():
                time.sleep(min(int(wait) * 1000, self.config.max_retry_after_ms) / 1000)
            raise StorageError(f"OTLP collector at {url} answered {response.status_code}; will retry")
        if response.status_code >= 400:
            raise StorageError(f"OTLP collector at {url} refused the batch: {response.status_code} "
                               f"{response.text[:200]}")
        self._count(signal, request, self._rejected(signal, response, content_type), url)

    def _count(self, signal: str, request: dict[str, Any], rejected: int, url: str) -> None:
        kind = "spans" if signal == "traces" else "logs"
        total = sum(len(s.get("spans", ())) for r in request.get("resourceSpans", ()) for s in r.get("scopeSpans", ())) \
            if signal == "traces" else \
            sum(len(s.get("logRecords", ())) for r in request.get("resourceLogs", ()) for s in r.get("scopeLogs", ()))
        self.sent[kind] += total
        if rejected:
            self.sent["rejected"] += rejected
            log.warning("OTLP collector at %s rejected %d of %d %s (partial success; not retried)",
                        url, rejected, total, kind)

    @staticmethod
    def _rejected(signal: str, response: httpx.Response, content_type: str) -> int:
        if not response.content:
            return 0
        field = "rejectedSpans" if signal == "traces" else "rejectedLogRecords"
        try:
            if content_type == "application/json":
                return int((orjson.loads(response.content).get("partialSuccess") or {}).get(field, 0))
            if signal == "traces":
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse as R
            else:
                from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse as R
            partial = R.FromString(response.content).partial_success
            return int(partial.rejected_spans if signal == "traces" else partial.rejected_log_records)
        except Exception:
            return 0

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Send the sessions still open as spans, then close the connection."""
        if self._builder is not None and self._builder.open:
            self._builder.finish()
            traces, _ = self._builder.take()
            if traces is not None:
                self._unsent.append(("traces", traces))
        try:
            protocol, endpoint, headers = self._settings()
            while self._unsent:
                signal, request = self._unsent.pop(0)
                self._send(signal, request, protocol, self._url(endpoint, signal), headers)
        except Exception as exc:
            log.error("sending the last spans to the OTLP collector at shutdown failed: %s", exc)
        if self._client is not None:
            self._client.close()
        if self._channel is not None:
            self._channel.close()

    @hookimpl
    def health(self) -> dict[str, Any]:
        """What was sent, and what the collector rejected."""
        return {"healthy": True, "issues": [], **self.sent,
                "open_sessions": len(self._builder.open) if self._builder else 0}
