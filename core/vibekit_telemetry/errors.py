"""The exceptions vibekit-telemetry raises to its users.

Every error derives from :class:`TelemetryError`; errors about bad input also
derive from :class:`ValueError`, so ``except ValueError`` keeps working for
callers that validate their own data.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of every error raised by vibekit-telemetry."""


class InvalidEventError(TelemetryError, ValueError):
    """An event was rejected; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"invalid event: {field}: {message}")


class InvalidQueryError(TelemetryError, ValueError):
    """A query filter was rejected; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"invalid query: {field}: {message}")


class UnknownEventError(TelemetryError, ValueError):
    """``on(name, ...)`` was given a name the service never emits; the message lists the names it does."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"unknown event {name!r}: on() listens to {', '.join(known)}; a plugin that emits "
                         "its own events declares them with service.register_event(name)")


class ConfigError(TelemetryError, ValueError):
    """The configuration is invalid: the message names the source, key path and problem."""


class PluginError(TelemetryError):
    """A plugin could not be found, loaded, configured or registered."""


class StorageError(TelemetryError):
    """A storage plugin cannot open, read or write its data."""


class StorageUnavailableError(StorageError):
    """The store exists but cannot be used right now (locked by another process, server not reachable yet).

    Raised by a storage plugin's ``startup`` or ``store``; the kernel retries later instead of failing, and
    journals events meanwhile.  Use plain :class:`StorageError` for what retrying cannot fix.
    """


class EventsRejectedError(StorageError):
    """A storage plugin refused a batch because of what some of its events hold, not because it is failing.

    The kernel then splits the batch to find the events at fault, stores the others, and moves those to the
    dead-letter file (``telemetry dead-letter list``).  Plain ``TypeError``, ``ValueError``,
    ``OverflowError`` and ``UnicodeError`` raised by ``store`` are taken the same way.
    """


class ServiceClosedError(TelemetryError):
    """The service was shut down and cannot answer reads any more."""
