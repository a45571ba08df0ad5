"""The in-process OpenTelemetry bridge: an SDK span processor and log record processor that record into a service.

``TracerProvider().add_span_processor(telemetry.span_processor())`` makes every
OpenTelemetry GenAI instrumentation a local-first capture with no collector and
no server: a finished span is read straight from the SDK's ``ReadableSpan``
into the kernel's GenAI mapping (:func:`vibekit_telemetry.genai.mapped_span_events`),
the same one ``/v1/traces`` uses, so the same spans give the same sessions
either way.  ``on_end`` does no I/O: it validates and queues, as ``track()``
does.  The OpenTelemetry SDK is the application's; it is imported only when a
processor is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vibekit_telemetry import InvalidEventError, hookimpl
from vibekit_telemetry.genai import log_event, mapped_span_events, to_any_value, to_attributes

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

log = logging.getLogger("vibekit_telemetry.otlp.bridge")

_ERROR = 2  # opentelemetry.trace.StatusCode.ERROR


def _plain(attributes: Any) -> dict[str, Any]:
    """SDK attributes (a BoundedAttributes mapping, tuples for arrays) as a plain dict."""
    if not attributes:
        return {}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in attributes.items()}


def span_events_of(span: Any, resources: dict[int, dict[str, Any]], folder: Any = None) -> list[dict[str, Any]]:
    """The telemetry events of an SDK ``ReadableSpan`` (raises ``ValueError`` for one that cannot be read)."""
    context = span.context
    parent = span.parent
    resource = span.resource
    key = id(resource)
    plain_resource = resources.get(key)
    if plain_resource is None:
        plain_resource = resources[key] = _plain(getattr(resource, "attributes", None))
    start = span.start_time // 1_000_000
    end = span.end_time // 1_000_000 if span.end_time else None
    status = span.status
    return mapped_span_events(
        trace_id=f"{context.trace_id:032x}", span_id=f"{context.span_id:016x}",
        parent_id=f"{parent.span_id:016x}" if parent is not None and parent.span_id else None,
        name=span.name or "", start=start, end=end, attrs=_plain(span.attributes),
        events=[(event.name or "event", (event.timestamp or span.start_time) // 1_000_000, _plain(event.attributes))
                for event in span.events],
        kind=span.kind.value + 1 if span.kind is not None else None,  # the SDK's enum starts at 0, OTLP's at 1
        failed=status is not None and status.status_code.value == _ERROR,
        status_message=(status.description or None) if status is not None else None,
        resource=plain_resource, folder=folder,
        scope=getattr(getattr(span, "instrumentation_scope", None), "name", None),
    )


def _track_whole(service: TelemetryService, events: list[dict[str, Any]], what: str) -> int:
    """Track a span's events whole or not at all (``track_all``); how many the queue took."""
    try:
        ids = service.track_all(events)
    except InvalidEventError as exc:
        log.warning("%s refused: %s", what, exc)
        service.emit("error", exc)
        return 0
    except Exception:  # a closed service, a failing hook: logged, never raised into the application
        log.exception("%s could not be tracked", what)
        return 0
    return sum(1 for event_id in ids if event_id is not None)


def make_span_processor(service: TelemetryService) -> Any:
    """A ``SpanProcessor`` (subclassing the SDK's, so new SDK methods have their defaults)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class TelemetrySpanProcessor(SpanProcessor):
        """Records each finished span into a vibekit-telemetry service (no I/O on the span's thread)."""

        def __init__(self) -> None:
            self.service = service
            self.spans = 0
            self.refused = 0
            self._resources: dict[int, dict[str, Any]] = {}

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            return None

        def on_end(self, span: Any) -> None:
            try:
                events = span_events_of(span, self._resources, self.service.call_folder)
            except (ValueError, TypeError) as exc:
                self.refused += 1
                log.warning("span %r cannot be read: %s", getattr(span, "name", "?"), exc)
                return
            except Exception:  # an instrumented application must never see our failure
                self.refused += 1
                log.exception("span %r could not be mapped", getattr(span, "name", "?"))
                return
            if _track_whole(self.service, events, f"span {span.name!r}"):
                self.spans += 1
            else:
                self.refused += 1

        def shutdown(self) -> None:
            self.service.flush()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            self.service.flush()
            return True

    return TelemetrySpanProcessor()


def log_record_of(record: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An SDK log record (``ReadWriteLogRecord``, or ``LogData`` of older SDKs) as an OTLP/JSON record and resource."""
    inner = getattr(record, "log_record", record)
    resource = getattr(record, "resource", None) or getattr(inner, "resource", None)
    out: dict[str, Any] = {"attributes": to_attributes(_plain(inner.attributes))}
    if inner.timestamp:
        out["timeUnixNano"] = str(inner.timestamp)
    if getattr(inner, "observed_timestamp", None):
        out["observedTimeUnixNano"] = str(inner.observed_timestamp)
    if inner.trace_id and inner.span_id:
        out["traceId"], out["spanId"] = f"{inner.trace_id:032x}", f"{inner.span_id:016x}"
    if getattr(inner, "event_name", None):
        out["eventName"] = inner.event_name
    if inner.severity_text:
        out["severityText"] = inner.severity_text
    if inner.severity_number is not None:
        out["severityNumber"] = int(getattr(inner.severity_number, "value", inner.severity_number))
    body = inner.body
    if body is not None:
        out["body"] = to_any_value(body if not isinstance(body, Mapping) else dict(body))
    return out, _plain(getattr(resource, "attributes", None))


def make_log_processor(service: TelemetryService) -> Any:
    """A ``LogRecordProcessor`` recording each emitted log record into the service."""
    from opentelemetry.sdk._logs import LogRecordProcessor

    class TelemetryLogRecordProcessor(LogRecordProcessor):
        """Records each emitted log record into a vibekit-telemetry service (no I/O on the caller's thread)."""

        def __init__(self) -> None:
            self.service = service
            self.records = 0
            self.refused = 0

        def on_emit(self, log_record: Any) -> None:
            try:
                record, resource = log_record_of(log_record)
                self.records += 1
                event = log_event(record, resource, (self.records,))
            except (ValueError, TypeError) as exc:
                self.refused += 1
                log.warning("a log record cannot be read: %s", exc)
                return
            except Exception:  # an instrumented application must never see our failure
                self.refused += 1
                log.exception("a log record could not be mapped")
                return
            if not _track_whole(self.service, [event], "a log record"):
                self.refused += 1

        emit = on_emit  # the SDK before 1.39 called it emit

        def shutdown(self) -> None:
            self.service.flush()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            self.service.flush()
            return True

    return TelemetryLogRecordProcessor()


class OpenTelemetryBridge:
    """The ``opentelemetry`` plugin: ``telemetry.span_processor()`` and ``telemetry.log_processor()``."""

    name = "opentelemetry"

    @hookimpl
    def span_processor(self, service: TelemetryService) -> Any:
        """A new span processor for ``service``."""
        return make_span_processor(service)

    @hookimpl
    def log_processor(self, service: TelemetryService) -> Any:
        """A new log record processor for ``service``."""
        return make_log_processor(service)
