"""A fluent way to build an event, as in the seed's ``EventBuilder``."""

from __future__ import annotations

from typing import Any

from .model import TelemetryEvent


class EventBuilder:
    """Build a :class:`TelemetryEvent` step by step.

    >>> event = (EventBuilder().with_category("claude").with_action("code-generation")
    ...          .with_value(150).with_metadata({"language": "python"}).build())
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {"event_type": "custom"}
        self._metadata: dict[str, Any] = {}

    def _set(self, name: str, value: Any) -> EventBuilder:
        self._fields[name] = value
        return self

    def with_session_id(self, session_id: str) -> EventBuilder:
        """Attach the event to a session."""
        return self._set("session_id", session_id)

    def with_event_type(self, event_type: str) -> EventBuilder:
        """``start``, ``stream``, ``end``, ``error`` or ``custom`` (the default)."""
        return self._set("event_type", event_type)

    def with_category(self, category: str) -> EventBuilder:
        """The category, usually the agent or feature name."""
        return self._set("category", category)

    def with_action(self, action: str) -> EventBuilder:
        """What happened."""
        return self._set("action", action)

    def with_label(self, label: str) -> EventBuilder:
        """A free-form label."""
        return self._set("label", label)

    def with_value(self, value: float) -> EventBuilder:
        """A numeric value."""
        return self._set("value", value)

    def with_timestamp(self, timestamp: Any) -> EventBuilder:
        """When it happened (epoch ms, datetime or ISO string); now by default."""
        return self._set("timestamp", timestamp)

    def with_metadata(self, metadata: dict[str, Any]) -> EventBuilder:
        """Merge these keys into the metadata."""
        self._metadata.update(metadata)
        return self

    def build(self) -> TelemetryEvent:
        """The validated event; raises :class:`~vibekit_telemetry.InvalidEventError` naming a bad field."""
        return TelemetryEvent.from_dict({**self._fields, "metadata": dict(self._metadata)})
