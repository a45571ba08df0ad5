"""The ``grpc`` plugin: a gRPC server (grpcio) for a telemetry service.

* **OTLP/gRPC ingest**: the standard ``opentelemetry.proto.collector.trace.v1.TraceService/Export``,
  ``logs.v1.LogsService/Export`` and ``metrics.v1.MetricsService/Export``, so an
  application's OpenTelemetry SDK can export here (default port 4317).  Spans
  and log records become sessions and events by the GenAI conventions
  (:mod:`vibekit_telemetry.genai`), metric data points metric events
  (:mod:`vibekit_telemetry.otlp_metrics`, as ``/v1/metrics`` does); unreadable
  ones, and ones the kernel refuses, are reported as a partial success.
* **Live events**: a server-streaming ``vibekit.telemetry.v1.Events/Subscribe``.
  The request is a JSON object (the query filter: ``category``, ``event_type``,
  ``session_id``, ``action``); each response message is one event as JSON.
  Any grpcio client can call it with bytes (de)serializers, see ``subscribe()``.
  A subscriber that falls behind loses the newest events, never server memory.

Enable it with ``streaming = {enabled = true, provider = "grpc", options = {port = 4317}}``
or ``plugins = [{name = "grpc", options = {port = 4317}}]``.  It binds to
127.0.0.1 unless ``host`` says otherwise; optional ``api_keys`` are checked
against the ``x-api-key`` (or ``authorization: Bearer``) metadata.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from vibekit_telemetry import ConfigError, InvalidEventError, InvalidQueryError, QueryFilter, hookimpl
from vibekit_telemetry.genai import hex_ids, log_request_events, trace_request_events
from vibekit_telemetry.otlp_metrics import MetricDeltas, metric_request_events

if TYPE_CHECKING:
    import grpc

    from vibekit_telemetry import TelemetryService

# grpcio and the protobuf modules load when the server starts (or a client subscribes), not when the CLI starts.

__all__ = ["SUBSCRIBE", "GRPCPlugin", "subscribe"]

log = logging.getLogger("vibekit_telemetry.grpc")

#: the full method name of the live stream
SUBSCRIBE = "/vibekit.telemetry.v1.Events/Subscribe"
_FILTER_KEYS = frozenset({"category", "event_type", "session_id", "action"})


def subscribe(channel: grpc.Channel, filter: dict[str, Any] | None = None, timeout: float | None = None) -> Iterator[dict]:
    """Client side: iterate over live events (dicts) from a server's ``Subscribe``."""
    call = channel.unary_stream(SUBSCRIBE, request_serializer=orjson.dumps, response_deserializer=orjson.loads)
    return call(filter or {}, timeout=timeout)


class GRPCPlugin:
    """Serves OTLP/gRPC ingest and the ``Subscribe`` stream while the service runs."""

    name = "grpc"

    @attrs.frozen
    class Config:
        """Options of the gRPC server."""

        host: str = "127.0.0.1"
        port: int = 4317
        max_workers: int = 16
        max_subscribers: int = 64
        max_pending: int = 1000
        max_message_bytes: int = 8 * 2**20
        api_keys: list[str] = attrs.field(factory=list)

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        if self.config.host not in ("127.0.0.1", "localhost", "::1") and not self.config.api_keys:
            raise ConfigError(f"grpc host {self.config.host!r} is reachable from other machines: set api_keys")
        self.service: TelemetryService | None = None
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self.subscribers = 0
        self._lock = threading.Lock()
        self.received = {"events": 0, "rejected": 0}
        #: the last cumulative point of each metric series, so ``MetricsService/Export`` stores the change since it
        self.metric_deltas = MetricDeltas()

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Start listening."""
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self.service = service
        options = [("grpc.max_receive_message_length", self.config.max_message_bytes)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.config.max_workers,
                                                        thread_name_prefix="vibekit-grpc"), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_OTLPService(self, "traces"), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_OTLPService(self, "logs"), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_OTLPService(self, "metrics"), server)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("vibekit.telemetry.v1.Events", {
            "Subscribe": grpc.unary_stream_rpc_method_handler(self._subscribe, request_deserializer=orjson.loads,
                                                              response_serializer=orjson.dumps)})])
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} for gRPC: {exc}") from None
        server.start()
        self.server = server
        log.info("gRPC server listening on %s:%s", self.config.host, self.port)

    @hookimpl
    def before_shutdown(self, service: TelemetryService) -> None:
        """Stop taking requests (in-flight ones get two seconds), before the service drains."""
        if self.server is not None:
            self.server.stop(grace=2).wait(5)
            self.server = None

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Where it listens and what it received."""
        return {"healthy": self.server is not None, "issues": [] if self.server is not None else ["not serving"],
                "port": self.port, "subscribers": self.subscribers, **self.received}

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        import grpc

        if not self.config.api_keys:
            return True
        metadata = dict(context.invocation_metadata())
        given = metadata.get("x-api-key") or metadata.get("authorization", "").removeprefix("Bearer ").strip()
        ok = False
        for key in self.config.api_keys:
            ok |= hmac.compare_digest(given.encode(), key.encode())
        if not ok:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "send x-api-key or authorization: Bearer metadata")
        return ok

    def ingest(self, events: list[Any]) -> tuple[int, int, list[str]]:
        """Track decoded events: how many the pipeline did not take (worth sending again), how many the kernel
        refused as invalid (not worth it), and why."""
        assert self.service is not None
        not_taken, invalid, reasons = 0, 0, []
        for event in events:
            try:
                if self.service.track(event) is None:
                    not_taken += 1
            except InvalidEventError as exc:
                invalid += 1
                reasons.append(str(exc))
        self.received["events"] += len(events) - not_taken - invalid
        self.received["rejected"] += not_taken + invalid
        return not_taken, invalid, reasons

    def _subscribe(self, request: Any, context: grpc.ServicerContext) -> Iterator[dict[str, Any]]:
        import grpc

        assert self.service is not None
        self._authorized(context)
        if not isinstance(request, dict) or not set(request) <= _FILTER_KEYS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the filter is a JSON object with keys among {', '.join(sorted(_FILTER_KEYS))}")
        try:
            flt = QueryFilter.build(request)
        except InvalidQueryError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            if self.subscribers >= self.config.max_subscribers:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many subscribers; retry later")
            self.subscribers += 1
        stream = self.service.create_event_stream(flt, max_pending=self.config.max_pending)
        context.add_callback(stream.close)
        try:
            while context.is_active() and not stream.closed:
                event = stream.get(timeout=0.25)
                if event is not None:
                    yield event.to_dict()
        finally:
            stream.close()
            with self._lock:
                self.subscribers -= 1


class _OTLPService:
    """``Export`` of the OTLP TraceService, LogsService or MetricsService (grpcio only needs the method)."""

    def __init__(self, plugin: GRPCPlugin, signal: str) -> None:
        self.plugin = plugin
        self.signal = signal

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - the OTLP method name
        import grpc
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.plugin._authorized(context)
        data = MessageToDict(request, use_integers_for_enums=True)
        hex_ids(data)
        if self.signal == "traces":
            events, rejected, reasons = trace_request_events(data, getattr(self.plugin.service, "call_folder", None))
            response, field = trace_service_pb2.ExportTraceServiceResponse(), "rejected_spans"
        elif self.signal == "metrics":
            events, rejected, reasons = metric_request_events(data, self.plugin.metric_deltas)
            response, field = metrics_service_pb2.ExportMetricsServiceResponse(), "rejected_data_points"
        else:
            events, rejected, reasons = log_request_events(data)
            response, field = logs_service_pb2.ExportLogsServiceResponse(), "rejected_log_records"
        not_taken, invalid, more = self.plugin.ingest(events)
        rejected += invalid
        if not_taken and not_taken == len(events):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the telemetry pipeline is not accepting events")
        if rejected:
            setattr(response.partial_success, field, rejected)
            response.partial_success.error_message = "; ".join((reasons + more)[:5])
        return response
