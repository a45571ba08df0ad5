"""The hook specifications: everything a plugin can take part in.

Plugins mark their implementations with :data:`hookimpl`.  The kernel calls
the hooks itself rather than through pluggy's default fan-out, so that order
and isolation are under its control:

* ``before_track`` is a chain run in configuration order, each plugin receiving
  the previous one's result;
* ``store``, ``after_track``, ``after_store``, ``idle``, ``clean``, ``optimize``, ``health``, ``import_formats``,
  ``detect``, ``startup``, ``before_shutdown``, ``shutdown`` and ``after_fork`` are called one plugin at a time, and an
  exception in one plugin is recorded without stopping the others;
* ``query``, ``scan``, ``scan_rows``, ``get_session``, ``get_sessions``, ``export``, ``export_rows``,
  ``import_events``, ``export_destination``, ``get_metrics``, ``get_insights``, ``define_metric``,
  ``metric_series`` and ``start_api_server`` are answered by
  the first plugin in configuration order that returns something other than
  ``None``.

Every hook is documented with an example in ``docs/hooks.md``.  An implementation
may be an ``async def``: the kernel runs it to completion on a helper event loop.
An object passed in ``plugins=[...]`` with no ``@hookimpl`` at all is read as
written for the TypeScript seed: its public methods are the hooks of their names
(``initialize`` is ``startup``, ``beforeTrack`` is ``before_track``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import click

    from .model import Anomaly, QueryFilter, Session, SessionFilter, TelemetryEvent
    from .service import TelemetryService

PROJECT = "vibekit_telemetry"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def startup(service: TelemetryService) -> None:
    """Called once, after every configured plugin is registered and before the first event.

    Open files and connections here.  Raising aborts the service's start with an
    error that names the plugin; a storage plugin that raises
    :class:`~vibekit_telemetry.StorageUnavailableError` (locked, not reachable yet)
    starts degraded instead and is called again in the background.
    """


@hookspec
def shutdown(service: TelemetryService) -> None:
    """Called once when the service shuts down, after the last batch was stored.

    Close files and connections here.
    """


@hookspec
def before_shutdown(service: TelemetryService) -> None:
    """Called once when the service begins to shut down, before pending events are written.

    Stop taking new events here (the API server stops listening), so what was
    accepted before is drained and nothing arrives after the drain.
    """


@hookspec(firstresult=True)
def start_api_server(service: TelemetryService, options: dict[str, Any]) -> Any:
    """Start an HTTP API server for ``service`` in the background and return its handle.

    ``options`` are the caller's overrides of the ``[api]`` section.  The first
    plugin that returns a handle answers (the ``api`` plugin).
    """


@hookspec(firstresult=True)
def span_processor(service: TelemetryService) -> Any:
    """An OpenTelemetry SDK span processor that feeds finished spans into ``service``.

    Spans go through the same GenAI mapping as ``/v1/traces``.  The first plugin
    that returns one answers (the ``opentelemetry`` plugin of vibekit-telemetry-otlp).
    """


@hookspec(firstresult=True)
def log_processor(service: TelemetryService) -> Any:
    """An OpenTelemetry SDK log record processor that feeds log records into ``service`` (as ``/v1/logs``)."""


@hookspec
def api_routes(service: TelemetryService, register: Callable[..., None]) -> None:
    """Add pages or endpoints to the HTTP API server, by calling ``register`` once per mount.

    ``register(path, app, *, name, public=False)`` mounts the ASGI application
    ``app`` under the URL prefix ``path`` (it sees paths relative to the prefix).
    ``public=True`` serves it without an API key and outside the API rate
    limit: for static pages whose data come from the guarded ``/api/``.
    Called each time a server is built.
    """


@hookspec
def after_fork(service: TelemetryService) -> None:
    """Called in a child process right after ``os.fork()``, before the child tracks anything.

    Replace what must not be shared with the parent: open connections, locks,
    threads.  The kernel has already given the child an empty queue and a new
    flusher thread.
    """


@hookspec
def before_track(event: TelemetryEvent) -> TelemetryEvent | None:
    """Inspect or change an event before it is queued, on the caller's thread.

    Return a (possibly new) :class:`TelemetryEvent` to pass on, ``None`` to drop
    the event (counted as ``filtered``).  Plugins run in configuration order,
    each receiving the previous plugin's result.  Keep it fast: this runs inside
    ``track()``.  If the implementation raises, the event is dropped (counted as
    ``before_track_error``), never passed on unprocessed.
    """


@hookspec
def after_track(event: TelemetryEvent) -> None:
    """Be told about an event once its batch has been handed to every storage plugin.

    Runs on the background flusher thread; exceptions are logged and counted.
    """


@hookspec
def after_store(events: list[TelemetryEvent]) -> None:
    """Be told about a whole batch once it has been handed to every storage plugin (cheaper than ``after_track``).

    Runs on the background flusher thread, once per batch, in the order events
    were tracked; exceptions are logged and counted.  Analytics keeps its
    rollups current from here.
    """


@hookspec
def before_store(events: list[TelemetryEvent]) -> list[TelemetryEvent] | None:
    """Transform a batch on its way to storage; a chain (``after_store`` later gets the original batch).

    Return the transformed batch (same length, same ids) or ``None`` to leave it.
    Encryption at rest lives here, so journals and every storage plugin receive
    the transformed events while analytics and live streams see the originals.
    """


@hookspec
def after_read(events: list[TelemetryEvent]) -> list[TelemetryEvent] | None:
    """Transform events read from storage back (the reverse of ``before_store``); a chain in reverse order."""


@hookspec
def after_read_sessions(sessions: list[Session]) -> list[Session] | None:
    """Transform sessions read from storage back (their prompt, metadata and last error)."""


@hookspec
def annotate_sessions(sessions: list[Session]) -> list[Session] | None:
    """Add derived figures to sessions read from storage, such as their estimated cost (``cost_usd``).

    Called in configuration order after ``after_read_sessions``, each plugin
    getting the previous one's result; return the sessions (changed with
    ``attrs.evolve``) or ``None`` to leave them as they are.  Must not read
    storage per session: this runs on every session read.
    """


@hookspec
def rewrite(events: list[TelemetryEvent]) -> int | None:
    """Replace the stored values of events already stored, matched by id, and refresh their sessions.

    Ids, types, categories and times do not change: this is for re-encrypting
    rows under a new key and similar maintenance.  Return how many events were found.
    """


@hookspec
def delete(event_ids: list[str]) -> int | None:
    """Delete these events (by id) and refresh or remove their sessions; return how many were deleted.

    For erasure requests (GDPR/CCPA): everything stored about the events goes,
    including text indexes.  Unknown ids are ignored.
    """


@hookspec
def store(events: list[TelemetryEvent]) -> None:
    """Persist a batch of events (a storage plugin's main job).

    Every storage plugin receives every batch.  Events carry unique ids: a store
    must ignore an id it already holds, so a retried batch never doubles rows.
    Raise to report failure; the other storage plugins still receive the batch.
    Raise :class:`~vibekit_telemetry.EventsRejectedError` when some events' content
    is at fault: the kernel isolates them (dead-letter file) and stores the rest.
    """


@hookspec
def store_rows(rows: list[tuple[Any, ...]]) -> None:
    """Persist a batch given as rows: the fast form of :func:`store`, for a plugin that implements both.

    Each row holds an event's values in :data:`~vibekit_telemetry.model.ROW_FIELDS` order (``truncated`` a
    tuple; ``metadata`` a dict, or, for flat metadata as the ingest queue holds it, its JSON text:
    ``vibekit_telemetry.model.row_metadata`` reads either), validated like any event;
    ``TelemetryEvent.to_row`` and ``vibekit_telemetry.model.event_from_row`` convert.  The kernel's ingest queue carries rows (they cost
    the garbage collector nothing) when no ``before_track`` hook needs the event objects; a plugin that
    implements this hook gets them as they are, instead of as events built for it.  The same rules as
    :func:`store`: ignore ids already held, raise to fail, ``EventsRejectedError`` for content at fault.
    """


@hookspec
def idle() -> None:
    """Do deferred maintenance in a small step: called on the flusher thread when nothing waits to be written.

    Called at most once per flush interval, never while events are queued, so
    work here never delays ingest.  Keep each call short (tens of milliseconds).
    """


@hookspec(firstresult=True)
def query(filter: QueryFilter) -> list[TelemetryEvent] | None:
    """Return the events matching ``filter``, in its order, honouring limit, offset and cursor.

    Answered by the first storage plugin (in configuration order) that returns a list.
    """


@hookspec(firstresult=True)
def scan(filter: QueryFilter) -> Iterable[TelemetryEvent] | None:
    """Stream every event matching ``filter`` (no limit, in its order) with one cursor, for exports.

    Return ``None`` to let the kernel page through ``query`` instead.
    """


@hookspec(firstresult=True)
def scan_rows(filter: QueryFilter, columns: tuple[str, ...]) -> Iterable[list[tuple[Any, ...]]] | None:
    """Stream every event matching ``filter`` (as ``scan`` does) as batches of row tuples, for ``export_rows``.

    ``columns`` are event field names; each tuple holds those fields of one event, in that order, as
    ``TelemetryEvent`` would hold them, except ``metadata`` and ``truncated``: their compact JSON text as
    ``orjson.dumps`` writes it, and ``None`` for no metadata or nothing truncated.  Yield lists of a few
    thousand rows as they are read.  Return ``None`` (the kernel then builds events through ``scan``) for a
    filter ``scan`` would refuse or a column this store does not know.  The kernel asks only the plugin
    that answers ``scan``, and only when no ``after_read`` plugin would change the events on their way out.
    """


@hookspec(firstresult=True)
def get_session(session_id: str) -> Session | None:
    """Return the session with this id, or ``None`` when unknown."""


@hookspec(firstresult=True)
def get_sessions(filter: SessionFilter) -> list[Session] | None:
    """Return the sessions matching ``filter``, in its order and limits."""


@hookspec(firstresult=True)
def count_sessions(filter: SessionFilter) -> int | None:
    """Return how many sessions match ``filter``, ignoring its ``limit`` and ``offset`` (for paging)."""


@hookspec
def clean(before: int) -> int | None:
    """Delete events (and sessions that started) before ``before`` (epoch ms); return how many events went."""


@hookspec
def optimize() -> None:
    """Compact indexes and storage files."""


@hookspec
def health() -> dict[str, Any] | None:
    """Report this plugin's state as a JSON-ready dict.

    ``healthy`` (bool) and ``issues`` (list of strings) are read by the kernel, and
    ``connections`` (``{"active": int, "max": int | None}``) is summed into the
    service's ``connections``; anything else (``size_bytes``, ``path`` ...) is shown as it is.
    """


@hookspec(firstresult=True)
def import_events(format: str, input: BinaryIO, options: dict[str, Any]) -> Iterable[Mapping[str, Any]] | None:
    """Read events written in ``format`` from the binary stream ``input`` (already decompressed).

    Return an iterable of event mappings (every field, as ``TelemetryEvent.to_dict()``
    gives them) if this plugin reads ``format``, otherwise ``None``.  Yield as you
    read so memory stays bounded; raise ``ValueError`` naming the line or row for
    input that cannot be read.
    """


@hookspec
def import_formats() -> list[str] | None:
    """Return the format names this plugin can read back (``telemetry import``)."""


@hookspec(firstresult=True)
def export_destination(url: str, options: dict[str, Any]) -> BinaryIO | None:
    """Open ``url`` (``s3://bucket/key`` ...) for writing an export, or return ``None`` for another scheme.

    Return a writable binary file; the kernel writes the export into it and
    calls ``close()``, which must finish the upload and raise if it failed.
    """


@hookspec(firstresult=True)
def export(format: str, events: Iterable[TelemetryEvent], output: BinaryIO, options: dict[str, Any]) -> int | None:
    """Write ``events`` to the binary stream ``output`` in ``format``.

    Return the number of events written if this plugin handles ``format``,
    otherwise ``None`` (without consuming ``events``).  ``events`` is an
    iterator: write as you go so memory stays bounded.
    """


@hookspec(firstresult=True)
def export_rows(format: str, rows: Callable[[tuple[str, ...]], Iterable[list[tuple[Any, ...]]] | None],
                output: BinaryIO, options: dict[str, Any]) -> int | None:
    """Write an export in ``format`` straight from storage rows, without building an event per row.

    Tried before ``export``, on the plugin that lists ``format`` first in ``export_formats`` (a configured
    exporter keeps its precedence), when the store can stream rows (``scan_rows``) and nothing transforms
    events on read.  ``rows(columns)`` returns the batches of row tuples described in ``scan_rows`` (oldest
    first, matching the export's filter), or ``None``.  The output must be exactly what ``export`` would
    write for the same events.  Return the number of events written, or ``None`` before writing anything
    (for another format, options this path does not cover, or ``rows`` returning ``None``): the kernel
    then calls ``export`` with events.  ``options`` were already checked by ``export``.
    """


@hookspec
def export_formats() -> list[str] | None:
    """Return the export format names this plugin handles (shown in errors and ``telemetry plugins``)."""


@hookspec(firstresult=True)
def export_options(format: str) -> list[str] | None:
    """Return the option names this plugin's exporter of ``format`` takes, or ``None`` for another format.

    The kernel sorts what an export call passes into filter keys, its own options and these, and refuses
    any other name, listing the valid ones.  ``"compression"`` among them means the format compresses
    itself (Parquet's codecs): the kernel then passes ``compression`` on instead of wrapping the output.
    """


@hookspec
def detect(metric: str, points: list[tuple[int, float]], sensitivity: str) -> list[Anomaly] | None:
    """Look for anomalies in a metric series.

    ``points`` are ``(epoch_ms, value)`` in time order; ``sensitivity`` is
    ``low``, ``medium`` or ``high``.  Return the findings (possibly empty).
    A detector must judge each point only from the points before it.
    """


@hookspec(firstresult=True)
def get_metrics(start: int, end: int) -> Any | None:
    """Return the metrics of events between ``start`` and ``end`` (epoch ms), or ``None`` when not an analytics plugin.

    Answered by the first plugin that returns something.
    """


@hookspec(firstresult=True)
def get_insights(start: int, end: int, categories: list[str] | None) -> Any | None:
    """Return findings about the window ``start``..``end`` (optionally only these categories)."""


@hookspec(firstresult=True)
def get_alerts(limit: int) -> dict[str, Any] | None:
    """Return the alerting state: ``{"enabled", "channels", "counts", "recent"}``, the latest ``limit`` deliveries first.

    Channels carry no secret (no URL path, no headers).  ``None`` when this plugin sends no alerts.
    """


@hookspec(firstresult=True)
def define_metric(name: str, type: str, unit: str | None, description: str | None) -> Any | None:
    """Register a custom metric fed by events with ``category="metrics"`` and ``action=name``; return its definition."""


@hookspec(firstresult=True)
def metric_series(metric: str, start: int, end: int, step: int) -> list[tuple[int, float]] | None:
    """Return ``metric`` between ``start`` and ``end`` as ``(bucket start ms, value)`` points every ``step`` ms.

    Metrics: ``throughput`` (events), ``response_time`` (ms), ``error_rate`` (%),
    ``ttft`` (ms), ``tokens`` and any custom metric.  ``None`` when the metric is unknown here.
    """


@hookspec(firstresult=True)
def cache_lookup(hook: str, key: tuple[str, str], arguments: dict[str, Any]) -> Any | None:
    """Return a cached answer to the read ``hook`` called with ``arguments``, or ``None`` on a miss.

    Reads (``query``, ``get_session``, ``get_sessions``, ``get_metrics``,
    ``get_insights``, ``metric_series``) ask this first, after flushing, so a
    cache that drops what ``after_store`` and ``clean`` change never answers stale.
    """


@hookspec
def cache_store(hook: str, key: tuple[str, str], arguments: dict[str, Any], value: Any) -> None:
    """Be handed the answer of a read that missed the cache, to keep under ``key``."""


@hookspec
def cache_invalidate(hooks: list[str] | None) -> None:
    """Drop cached answers of these read hooks (all of them when ``None``).

    The kernel calls it after changes that are not event batches: ``clean``
    (everything) and ``define_metric`` (the analytics reads).
    """


@hookspec
def audit(action: str, target: str, actor: str, details: dict[str, Any]) -> None:
    """Record that ``actor`` did ``action`` to ``target`` (``details`` say how): an audit trail plugin keeps it.

    The service calls it for clean, export and custom metric definitions; plugins
    call ``service.audit(...)`` for theirs (key rotation, erasure, configuration changes).
    """


@hookspec(firstresult=True)
def get_audit_logs(action: str | None, since: int | None, limit: int) -> list[dict[str, Any]] | None:
    """Return audit entries, newest first, optionally of one action and after ``since`` (epoch ms)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``telemetry`` command line.

    Called for every installed plugin when the CLI starts, before any
    configuration is read, so implement it as a ``@staticmethod`` (or a module
    level function) that uses no plugin state.
    """
