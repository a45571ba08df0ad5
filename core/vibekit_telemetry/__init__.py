"""vibekit-telemetry: local-first telemetry for AI applications.

>>> from vibekit_telemetry import TelemetryService
>>> with TelemetryService(service_name="my-ai-app") as telemetry:
...     sid = telemetry.track_start("claude", "code", "Fix this bug")
...     telemetry.track_stream(sid, "Here's the fix...")
...     telemetry.track_end(sid, "completed")
"""

from .batcher import Batcher
from .builder import EventBuilder
from .config import LoadedConfig, PluginSpec, StorageConfig, TelemetryConfig, load_config, redact_secrets
from .errors import (
    ConfigError,
    EventsRejectedError,
    InvalidEventError,
    InvalidQueryError,
    PluginError,
    ServiceClosedError,
    StorageError,
    StorageUnavailableError,
    TelemetryError,
    UnknownEventError,
)
from .hookspecs import hookimpl
from .model import (
    EVENT_TYPES,
    INT64_MAX,
    INT64_MIN,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    SESSION_LABELS,
    Anomaly,
    Page,
    QueryFilter,
    Session,
    SessionFilter,
    TelemetryEvent,
    TokenUsage,
    decode_cursor,
    encode_cursor,
    new_id,
    search_words,
    summarize_sessions,
    validate_event,
)
from .service import (
    BatchResult,
    HealthStatus,
    ImportResult,
    SessionScope,
    TelemetryService,
    acting_as,
    current_actor,
    current_session_id,
    install_signal_handlers,
)
from .streams import EventStream
from .times import format_ms, now_ms, query_time, span_ms, time_range, to_ms

__version__ = "0.1.0"

__all__ = [
    "EVENT_TYPES",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "SESSION_LABELS",
    "Anomaly",
    "BatchResult",
    "Batcher",
    "ConfigError",
    "EventBuilder",
    "EventsRejectedError",
    "EventStream",
    "HealthStatus",
    "ImportResult",
    "InvalidEventError",
    "InvalidQueryError",
    "LoadedConfig",
    "Page",
    "PluginError",
    "PluginSpec",
    "QueryFilter",
    "ServiceClosedError",
    "Session",
    "SessionFilter",
    "SessionScope",
    "StorageConfig",
    "StorageError",
    "StorageUnavailableError",
    "TelemetryConfig",
    "TelemetryError",
    "TelemetryEvent",
    "TelemetryService",
    "TokenUsage",
    "UnknownEventError",
    "current_session_id",
    "decode_cursor",
    "encode_cursor",
    "acting_as",
    "current_actor",
    "format_ms",
    "install_signal_handlers",
    "hookimpl",
    "load_config",
    "new_id",
    "search_words",
    "now_ms",
    "query_time",
    "redact_secrets",
    "span_ms",
    "time_range",
    "summarize_sessions",
    "to_ms",
    "validate_event",
]
