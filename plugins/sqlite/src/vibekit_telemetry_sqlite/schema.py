"""Column lists shared by the migrations and the hot path (kept apart so reading them needs no sqlite-utils)."""

MIGRATION_SET = "vibekit_telemetry_sqlite"
#: ``PRAGMA application_id`` of a vibekit-telemetry database ("VKT1"), set when the schema is created
APPLICATION_ID = 0x564B5431

EVENT_COLUMNS = (
    "id", "session_id", "event_type", "category", "action", "label", "value", "timestamp", "agent", "mode",
    "prompt", "parent_session_id", "stream_data", "status", "error_type", "error_message", "error_stack",
    "metadata", "truncated",
)

SESSION_COLUMNS = (
    "id", "agent", "mode", "prompt", "status", "parent_id", "started_at", "ended_at", "first_event_at",
    "last_event_at", "first_stream_at", "event_count", "stream_count", "error_count", "metadata",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "reasoning_tokens", "last_error",
    "has_start", "kind", "model", "conversation_id", "user_id",
)
