"""``TelemetryService``: the public face of the kernel.

It assembles the configured plugins, accepts events on the caller's thread
(validation and the ``before_track`` chain only, no I/O), writes them in
batches from a background thread to every storage plugin, and answers reads
from the first storage plugin after flushing what is pending.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import fnmatch
import io
import itertools
import logging
import os
import random
import re
import shutil
import sys
import threading
import time
import traceback
import types
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from .batcher import Batcher
from .assembly import assemble
from .config import LoadedConfig, TelemetryConfig, deep_merge, load_config, normalise_keys, structure
from .deadletter import DeadLetters
from .genai import CallFolder
from . import instrumentation
from .errors import (
    InvalidEventError,
    InvalidQueryError,
    PluginError,
    ServiceClosedError,
    StorageError,
    StorageUnavailableError,
    TelemetryError,
    UnknownEventError,
)
from .model import (
    Anomaly,
    Page,
    QueryFilter,
    Session,
    SessionFilter,
    TelemetryEvent,
    checked_event_row,
    checked_row,
    encode_cursor,
    event_from_row,
    events_of,
    new_id,
    rows_of,
    validate_event,
)
from .pipeline import Pipeline
from .plugins import (
    DESTINATION_GROUP,
    FORMAT_GROUP,
    PluginHost,
    instantiate,
    named_entry_points,
    plugin_name_of,
    resolve_entry_points,
)
from .reliability import GuardedSink, ReliabilityConfig
from .sampling import Thinner
from .streams import EventStream
from .times import check_time_range, now_ms, query_time, span_ms
from .transfer import compressed_writer, decompressed_reader, infer_from_name, split_export_arguments
from .times import time_range as _time_range

log = logging.getLogger("vibekit_telemetry.service")

_current_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("vibekit_telemetry_session", default=None)
#: the conversation and user of the innermost session block, which sessions opened inside it inherit
_current_labels: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("vibekit_telemetry_labels",
                                                                                        default=None)

_TEXT_FIELDS = ("prompt", "stream_data", "label", "action", "error_message", "error_stack")
_SHORT = frozenset({int, float, bool, type(None)})
_SNAKE = {"sessionId": "session_id", "streamData": "stream_data"}

#: seconds between flushes at most while a live stream listens (``create_event_stream``)
LIVE_FLUSH_INTERVAL = 0.25

#: what ``on(name, handler)`` can listen to: the kernel's events; plugins add theirs with ``register_event``
EVENT_NAMES = frozenset({
    "initialized",  # initialize() was called (the seed's first call after construction)
    "error",  # an exception: a plugin failed, a store failed or cannot open
    "flush",  # {"count", "seconds"}: a batch was handed to every store
    "drop",  # {"reason", "count"}: events not stored
    "shutdown",  # the service has shut down
    "memory:high",  # {"rss", "limit", "percentage"}: over reliability.memory_limit
    "storage:available",  # {"plugin"}: a store that could not open at start is open
    "stream:open",  # an EventStream: a live stream was opened (a shared store starts listening for others' events)
    "connection:error",  # a StorageError: one attempt to store a batch failed (it is retried)
    "circuit:open", "circuit:half_open", "circuit:close",  # {"plugin", ...}: a store's circuit breaker
    "anomaly",  # an Anomaly found by a detector
})

#: the namespaces of the seed's ``debug`` module that ``DEBUG`` patterns are matched against
_DEBUG_NAMESPACES = ("vibekit:telemetry", "vibekit:telemetry:service")


def _debug_env(value: str) -> bool:
    """Whether a ``DEBUG`` variable in the seed's ``debug`` syntax (``vibekit:*,-other``) selects this kernel."""
    selected = False
    for pattern in re.split(r"[\s,]+", value.strip()):
        if not pattern:
            continue
        excluded = pattern.startswith("-")
        if any(fnmatch.fnmatchcase(ns, pattern.lstrip("-")) for ns in _DEBUG_NAMESPACES):
            if excluded:
                return False
            selected = True
    return selected


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (test runners and apps replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _debug_to_stderr(logger: logging.Logger, on: bool) -> None:
    """Give the kernel's logger a stderr handler while it logs at debug and nothing else would print the records."""
    ours = [h for h in logger.handlers if isinstance(h, _StderrHandler)]
    if not on:
        for handler in ours:
            logger.removeHandler(handler)
        return
    configured = logging.getLogger().handlers or [h for h in logger.handlers if h not in ours]
    if not configured and not ours:
        logger.addHandler(_StderrHandler())


_current_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("vibekit_telemetry_actor", default=None)


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Within the block, audit entries name ``actor`` (an API key's name, a user) instead of the OS user."""
    token = _current_actor.set(actor)
    try:
        yield
    finally:
        _current_actor.reset(token)


def _reraise(plugin: str, exc: BaseException) -> None:
    raise exc


def current_actor() -> str:
    """Who audit entries name now: the actor of the innermost ``acting_as`` block, or the OS user."""
    return _current_actor.get() or _os_user()


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (some containers)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def current_session_id() -> str | None:
    """The id of the innermost ``telemetry.session(...)`` block running in this context."""
    return _current_session.get()


@attrs.frozen
class BatchResult:
    """What ``track_batch`` did with each event: ids accepted, indexes rejected (with the error) or dropped."""

    accepted: list[str]
    rejected: list[tuple[int, InvalidEventError]]
    dropped: list[int]


@attrs.frozen
class ImportResult:
    """What ``import_events`` did: events read, tracked, and rejected as invalid (with the first errors)."""

    read: int
    imported: int
    rejected: int
    errors: list[str]


@attrs.frozen
class HealthStatus:
    """The service's state: per-component health, pipeline counters and resource use.

    ``healthy`` is false when any component reports a problem; ``issues`` says which.
    """

    healthy: bool
    issues: list[str]
    components: dict[str, dict[str, Any]]
    pipeline: dict[str, Any]
    counters: dict[str, Any]
    memory: dict[str, float]
    cpu: dict[str, float]
    storage: dict[str, Any]
    uptime_s: float
    #: the seed's ``connections``: ``{"active", "max"}`` summed over the plugins that report theirs
    connections: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)


@attrs.define
class _PluginStats:
    stored: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: int | None = None
    write_ms_total: float = 0.0


@attrs.frozen
class _Staged:
    """A batch the journal thread made durable: the events, their stored form, and each sink's journal token."""

    events: list[TelemetryEvent]
    stored: list[TelemetryEvent]
    kept: dict[str, tuple[list[TelemetryEvent], int] | None]


#: seconds a read waits for a storage plugin's attempt to open that is in progress (a large file being checked)
READ_WAIT_S = 30.0
#: how the reason of a store whose opening stopped for good begins (it failed for a reason other than
#: being unavailable for now: only fixing it and restarting helps)
GAVE_UP = "cannot open"

#: most points ``metric_series`` computes in one call (a year and more per minute)
MAX_SERIES_POINTS = 600_000


def _unless_given_up(reason: str) -> str:
    """What to add to "try again once it opens" for a store whose opening stopped for good."""
    if reason.startswith(GAVE_UP):
        return " (it will not open by itself: fix what the reason says, then restart the application)"
    return ""


class TelemetryService:
    """Record AI sessions and events, and read them back.

    With no arguments it reads ``telemetry.toml`` (or ``[tool.vibekit-telemetry]``
    in ``pyproject.toml``, ``--config``/``TELEMETRY_CONFIG``) and the
    ``TELEMETRY_*`` environment, and stores into SQLite at
    ``.vibekit/telemetry.db``.  Keyword arguments mirror the configuration keys
    (``service_name``, ``storage``, ``security``, ``plugins`` ...) and win over
    the file; ``plugins`` may also hold plugin objects.  ``config`` may be a path
    or a :class:`TelemetryConfig`.

    The service is thread-safe; ``track*`` never blocks on I/O, so it is safe to
    call from asyncio code, and the ``a*`` read methods run in a worker thread.
    """

    def __init__(self, config: str | os.PathLike[str] | TelemetryConfig | None = None, **options: Any) -> None:
        plugin_objects = [p for p in options.get("plugins", ()) if not isinstance(p, (str, Mapping))]
        if plugin_objects:
            options["plugins"] = [p for p in options["plugins"] if isinstance(p, (str, Mapping))]
        if isinstance(config, TelemetryConfig):
            raw = attrs.asdict(config)
            if options:
                raw = deep_merge(raw, normalise_keys(options))
                config = structure(raw, TelemetryConfig, where="TelemetryConfig + keyword arguments")
            self.loaded = LoadedConfig(config=config, raw=raw, path=None, sources=("object",))
        else:
            self.loaded = load_config(config, overrides=options)
        self.config: TelemetryConfig = self.loaded.config
        self._configure_logging()
        self._started_at = time.monotonic()
        # CPU use is the process's CPU time over wall time since the previous sample: taken here, the first
        # get_health_status() already measures something (stdlib clocks, so starting costs no psutil import)
        self._cpu_sample = (self._started_at, time.process_time())
        self._cpu_percent = 0.0
        self._initialized = False
        self._event_names = set(EVENT_NAMES)
        self._lock = threading.Lock()
        self._handlers: dict[str, list[Callable[..., Any]]] = {}
        self._counts: Counter[str] = Counter()
        self._accepted = 0
        #: the lean path's accepted events, counted without the lock (``next`` on a count is atomic): see
        #: :meth:`_accepted_now`
        self._accepted_rows = itertools.count()
        self._accepted_rows_read = 0
        self._drops: Counter[str] = Counter()
        self._thinned: Counter[str] = Counter()
        self._sink_policies: dict[str, ReliabilityConfig] = {}
        self._memory_checked = float("-inf")  # monotonic time: the first batch checks
        self._memory_high = False
        self._started = False
        self._read_cache = self._read_decoders = False
        self._lean = self._capture = False
        self._plugin_stats: dict[str, _PluginStats] = {}
        self._streams: list[EventStream] = []
        self._open_sessions: OrderedDict[str, str] = OrderedDict()
        self._closed = False
        self._shutting_down = False
        #: set once shutdown closes the plugins: a store that finishes opening after that closes itself again
        self._plugins_shut = False
        #: storage plugins that started degraded, by name: shutdown tries each once more before giving up
        self._unopened: dict[str, tuple[Any, GuardedSink]] = {}
        self._live_interval: float | None = None
        self._on_demand: dict[str, str] = {}
        self._process: Any = None
        self.host = PluginHost()
        self.storage_plugins: list[str] = []
        #: spans of one model call seen twice (an SDK's own span beside an instrumentation's) fold into one session
        self.call_folder = CallFolder()
        batch_size, flush_interval = self._assemble(plugin_objects)
        self._max_chars = self.config.max_field_bytes // 4
        reliability = self.config.reliability
        self.dead_letters = DeadLetters(self.buffer_dir / "dead-letter")
        self._sinks = self._make_sinks()
        self._sink_list = list(self._sinks.values())
        self._openers: list[threading.Thread] = []
        #: per storage plugin opened in the background, the event set when its current attempt to open ends
        self._opening: dict[str, threading.Event] = {}
        self._stop_opening = threading.Event()
        persist = any(sink.policy.persist_buffer for sink in self._sink_list)
        sampling = self.config.sampling or reliability.sampling
        self._thinner: Thinner | None = Thinner(sampling, reliability.rate_limit, self._record_thinned)
        if not self._thinner.active:
            self._thinner = None
        self._capture = bool(self.config.capture_content)
        self._refresh_lean()
        persistent = [sink for sink in self._sink_list if sink.policy.persist_buffer]
        max_queue = self.config.max_queue_size
        if persistent:
            # what the journals hold counts against the bound, so an event that cannot be journaled is refused
            # by track() (which can tell the caller) instead of being dropped once accepted
            max_queue = min(max_queue, *(sink.policy.buffer_size for sink in persistent))
        self._pipeline = Pipeline(
            self._write_batch,
            batch_size=batch_size,
            max_batch=max(batch_size, self.config.max_batch_size),
            flush_interval=flush_interval / 1000,
            max_queue=max_queue,
            on_full=self._on_full_policy(persist),
            enqueue_timeout=self.config.enqueue_timeout_ms / 1000,
            on_drop=self._record_drop,
            on_idle=self._idle,
            before_drain=self._before_drain,
            spill_dir=self.buffer_dir / "_spill",
            # bounded by bytes on disk, not by a count near the queue's: a burst of a million events is absorbed
            spill_limits=(2**62, reliability.buffer_max_bytes),
            stage=self._stage_batch if persist else None,
            spill_fsync=persist,
            durable=(lambda: max(sink.backlog for sink in persistent)) if persistent else None,
        )
        # read-path plugins, looked up once: most services have neither a cache nor a storage transform
        self._read_cache = bool(self.host.impls("cache_lookup"))
        self._read_decoders = bool(self.host.impls("after_read") or self.host.impls("after_read_sessions")
                                   or self.host.impls("annotate_sessions"))
        self._start_plugins()
        self._started = True  # from now on the flusher may replay journals into the started plugins
        _live_services.add(self)
        if self.config.instrument:
            try:
                self.instrument(*self.config.instrument)
            except Exception:
                self.shutdown()  # a name that is not installed is a start-up error, not a half-started service
                raise
        log.debug("service %s started: plugins %s; storage %s; batches of %d every %d ms", self.service_name,
                  ", ".join(self.host.order) or "none", ", ".join(self.storage_plugins) or "none", batch_size,
                  flush_interval)

    def _configure_logging(self) -> None:
        """Set the kernel's log level; at ``debug`` print the log to stderr unless the application set up logging.

        ``debug = true``, ``log_level = "debug"`` and the seed's ``DEBUG=vibekit:telemetry:*`` turn it on
        (``TELEMETRY_LOG_LEVEL`` wins over all of them).
        """
        level = os.environ.get("TELEMETRY_LOG_LEVEL") or (
            "DEBUG" if self.config.debug or _debug_env(os.environ.get("DEBUG", "")) else self.config.log_level)
        logger = logging.getLogger("vibekit_telemetry")
        logger.setLevel(level.upper())
        _debug_to_stderr(logger, logger.getEffectiveLevel() <= logging.DEBUG)

    def _assemble(self, plugin_objects: list[Any]) -> tuple[int, int]:
        """Register every configured plugin, then the plugin objects passed in, in that order."""
        plan = assemble(self.loaded)
        for planned in plan.plugins:
            self._register(planned.name, planned.obj, source="entry point")
            if planned.is_storage:
                self.storage_plugins.append(planned.name)
                if planned.reliability is not None:
                    self._sink_policies[planned.name] = planned.reliability
        for obj in plugin_objects:
            name = plugin_name_of(obj)
            self._register(name, obj, source="object")
            if any(impl.plugin == name for impl in self.host.impls("store")):
                self.storage_plugins.append(name)
        if not self.host.impls("store"):
            log.warning("no storage plugin is configured: events will be counted as dropped (reason no_storage)")
        return plan.batch_size, plan.flush_interval

    def _on_full_policy(self, persist: bool) -> str:
        if self.config.on_full == "spill" and persist:
            # the storage journals are the disk buffer already; a spill journal in front of them could fill them
            # past their bound when it drains, and drop events that were accepted
            log.info("on_full = 'spill' is replaced by 'drop_newest' because persist_buffer journals every batch")
            return "drop_newest"
        if self.config.on_full == "spill" and self.host.impls("before_store"):
            # the spill file holds events before before_store (encryption) sees them: never put those on disk
            log.info("on_full = 'spill' is replaced by 'block' because %s transforms events before storage",
                     ", ".join(impl.plugin for impl in self.host.impls("before_store")))
            return "block"
        return self.config.on_full

    @property
    def buffer_dir(self) -> Path:
        """Where journals of failed batches and spilled events live (``reliability.buffer_path``)."""
        path = self.config.reliability.buffer_path
        return Path(path) if path else self.data_dir / "buffer"

    def _make_sinks(self) -> dict[str, GuardedSink]:
        sinks = {}
        stores = {impl.plugin for impl in self.host.impls("store")}
        for impl in self.host.impls("store_rows"):
            if impl.plugin not in stores:
                raise PluginError(f"plugin {impl.plugin!r} implements store_rows but not store: a storage plugin "
                                  "implements store (store_rows is its optional fast form)")
        for position, impl in enumerate(self.host.impls("store")):
            policy = self._sink_policies.get(impl.plugin, self.config.reliability)
            directory = Path(policy.buffer_path) / impl.plugin if policy.buffer_path else self.buffer_dir / impl.plugin

            def report(kind: str, count: int, reason: str | None = None, *, primary: bool = position == 0,
                       name: str = impl.plugin) -> None:
                self._sink_report(name, primary, kind, count, reason)

            rows_impl = next((r for r in self.host.impls("store_rows") if r.plugin == impl.plugin), None)
            if rows_impl is not None and _overrides_store(self.host.meta[impl.plugin]["object"]):
                rows_impl = None  # a subclass's own store() (a fault switch, a filter) must see every batch
            if rows_impl is not None:
                def deliver(items: list[Any], impl: Any = rows_impl) -> None:
                    impl(rows=rows_of(items))
            else:
                def deliver(items: list[Any], impl: Any = impl) -> None:
                    impl(events=events_of(items))
            sinks[impl.plugin] = GuardedSink(
                impl.plugin, deliver, policy, directory,
                report=report, emit=self._emit, dead_letters=self.dead_letters,
            )
        return sinks

    def _sink_report(self, name: str, primary: bool, kind: str, count: int, reason: str | None) -> None:
        stats = self._plugin_stats[name]
        if kind == "stored":
            stats.stored += count
            if primary:
                with self._lock:
                    self._counts["stored"] += count
        elif kind == "lost":
            stats.last_error = self._sinks[name].stats.last_error
            stats.last_error_at = now_ms()
            if primary:
                self._record_drop(reason or "storage_error", count)

    def _register(self, name: str, obj: Any, *, source: str) -> None:
        self.host.register(name, obj, source=source)
        self._plugin_stats[name] = _PluginStats()
        self._refresh_lean()

    def _refresh_lean(self) -> None:
        """Whether ``track()`` may queue rows: nothing before the queue (``before_track``, sampling) needs events."""
        self._lean = not self.host.impls("before_track") and getattr(self, "_thinner", True) is None

    def _start_plugins(self) -> None:
        started: list[str] = []
        for impl in self.host.impls("startup"):
            try:
                sink = self._sinks.get(impl.plugin)
                if sink is not None and sink.policy.startup == "degrade":
                    self._open_storage(impl, sink)
                else:
                    impl(service=self)
            except Exception as exc:
                self._stop_opening.set()
                self._pipeline.close(timeout=1)
                for sink in self._sink_list:
                    sink.close()  # removes the journal directories this failed start created
                for name in reversed(started):
                    for shut in self.host.impls("shutdown"):
                        if shut.plugin == name:
                            try:
                                shut(service=self)
                            except Exception:
                                log.exception("plugin %s failed to shut down", name)
                if isinstance(exc, TelemetryError):
                    raise
                raise PluginError(f"plugin {impl.plugin!r} failed to start: {type(exc).__name__}: {exc}") from exc
            started.append(impl.plugin)

    def _open_storage(self, impl: Any, sink: GuardedSink) -> None:
        """Run a storage plugin's ``startup`` for at most ``reliability.startup_timeout_ms``.

        A plugin that opens in time, or fails for good (not a telemetry database, a wrong key), behaves as
        a plain ``startup``: the error is raised here.  One that is only unavailable now
        (:class:`StorageUnavailableError`: locked by another process, server not up) or still busy opening
        starts degraded: its events are journaled and opening goes on in the background with backoff,
        so telemetry never keeps the application from starting.
        """
        outcome: dict[str, BaseException | None] = {}
        done = threading.Event()
        self._opening[impl.plugin] = done
        first = threading.Thread(target=self._attempt_open, args=(impl, sink, done, outcome),
                                 name=f"vibekit-telemetry-open-{impl.plugin}", daemon=True)
        first.start()
        timeout = sink.policy.startup_timeout_ms / 1000
        if done.wait(timeout):
            error = outcome["error"]
            if error is None:
                return
            if not isinstance(error, StorageUnavailableError):
                raise error
            reason, level = str(error), logging.WARNING
        else:
            # routine for a large file being checked on open (quick_check); a store refusing to open is not
            reason, level = f"still opening after {sink.policy.startup_timeout_ms} ms", logging.INFO
        sink.mark_unavailable(reason)
        self._unopened[impl.plugin] = (impl, sink)
        log.log(level,
                "storage %s is not available (%s): starting without it; events are journaled and opening "
                "continues in the background", impl.plugin, reason)
        retrier = threading.Thread(target=self._keep_opening, args=(impl, sink, done, outcome),
                                   name=f"vibekit-telemetry-reopen-{impl.plugin}", daemon=True)
        self._openers.extend([first, retrier])
        retrier.start()

    def _attempt_open(self, impl: Any, sink: GuardedSink, done: threading.Event,
                      outcome: dict[str, BaseException | None]) -> None:
        """One call of a storage plugin's ``startup``; the outcome is left for the thread that waits on ``done``."""
        try:
            impl(service=self)
        except BaseException as exc:  # reported to the thread that waits for it
            outcome["error"] = exc
        else:
            outcome["error"] = None
            with self._lock:
                late = self._plugins_shut
            if late:
                # the service shut its plugins down while this was opening: close what just opened, nobody will
                for shut in self.host.impls("shutdown"):
                    if shut.plugin == impl.plugin:
                        try:
                            shut(service=self)
                        except Exception:
                            log.exception("closing %s after a late open failed", impl.plugin)
            else:
                sink.mark_available()  # before ``done``: a read waiting on it must find the store open
        finally:
            done.set()

    def _keep_opening(self, impl: Any, sink: GuardedSink, done: threading.Event,
                      outcome: dict[str, BaseException | None]) -> None:
        """The background side of a degraded start: retry ``startup`` with backoff until it opens."""
        delay = 0.25
        while not self._stop_opening.is_set():
            done.wait()
            error = outcome.get("error")
            if error is None:
                if self._closed:
                    return  # opened after shutdown: _attempt_open closed it again
                log.warning("storage %s is open: storing what was journaled meanwhile", impl.plugin)
                self._emit("storage:available", {"plugin": impl.plugin})
                self._pipeline.wake()
                return
            if not isinstance(error, StorageUnavailableError):
                sink.mark_unavailable(f"{GAVE_UP}: {type(error).__name__}: {error}")
                log.error("storage %s cannot open (%s); events stay journaled until the problem is fixed and the "
                          "application restarts", impl.plugin, error)
                self._emit("error", error if isinstance(error, TelemetryError) else PluginError(
                    f"plugin {impl.plugin!r} failed to start: {type(error).__name__}: {error}"))
                return
            sink.mark_unavailable(str(error))
            if self._stop_opening.wait(delay * (0.5 + random.random() / 2)):
                return
            delay = min(delay * 2, 30.0)
            done.clear()
            self._attempt_open(impl, sink, done, outcome)

    @property
    def service_name(self) -> str:
        """The configured service name."""
        return self.config.service_name

    @property
    def data_dir(self) -> Path:
        """Where local files (the default database, journals) live."""
        return Path(self.config.data_dir)

    def track(self, event: TelemetryEvent | Mapping[str, Any] | None = None, /, **fields: Any) -> str | None:
        """Accept one event and return its id, or ``None`` if a plugin filtered it or the queue refused it.

        ``event`` is a :class:`TelemetryEvent`, a mapping of its fields, or the
        fields as keyword arguments.  Invalid input raises
        :class:`~vibekit_telemetry.InvalidEventError` naming the field; nothing
        else is affected.  No I/O happens on the caller's thread.
        """
        try:
            kind = type(event)
            lean = self._lean
            if kind is dict and not fields:
                row = checked_row(event, True, lean)  # type: ignore[arg-type]
            elif event is None:
                row = checked_row(fields, True, lean)
            elif kind is TelemetryEvent and not fields:
                row = checked_event_row(event)  # type: ignore[arg-type]
                if not self._lean:
                    return self._accept(event)  # type: ignore[arg-type]  # hooks see the caller's own object
            elif isinstance(event, Mapping):
                row = checked_row({**event, **fields} if fields else event)
            elif isinstance(event, TelemetryEvent):
                row = checked_row({**event.to_dict(), **fields})
            else:
                raise InvalidEventError("event", f"expected a TelemetryEvent or a mapping, got {type(event).__name__}")
        except InvalidEventError:
            self._count("rejected")
            raise
        if self._lean:
            return self._accept_row(row)
        return self._accept(event_from_row(row))

    def track_validated(self, event: TelemetryEvent | tuple[Any, ...]) -> str | None:
        """Accept an event that already passed the gate, without checking it again; return its id (or ``None``).

        For a server that validated a request's events one by one to report each one's error: ``event``
        is what :meth:`TelemetryEvent.from_dict` or ``vibekit_telemetry.model.checked_row`` returned
        (an event, or its row), unchanged.  Anything else must go through :meth:`track`.
        """
        if type(event) is tuple:
            return self._accept_row(event) if self._lean else self._accept(event_from_row(event))
        if type(event) is not TelemetryEvent:
            raise InvalidEventError("event", f"expected a TelemetryEvent or a row, got {type(event).__name__}")
        return self._accept_row(event.to_row()) if self._lean else self._accept(event)

    def _accept_row(self, row: tuple[Any, ...]) -> str | None:
        """The accept path when nothing before the queue needs the event object: the row is what is queued.

        A row is a tuple of atoms (flat metadata is its JSON text), which the garbage collector stops tracking
        at its first look: a backlog of a million queued events costs full collections nothing.
        """
        if self._closed:
            self._drop_accepted("after_shutdown")
            log.warning("event %s tracked after shutdown was dropped", row[0])
            return None
        limit = self._max_chars
        prompt, stream_data, metadata = row[10], row[12], row[17]
        if ((prompt is not None and len(prompt) > limit) or (stream_data is not None and len(stream_data) > limit)
                or row[15] is not None or row[16] is not None or not self._capture):
            row = self._prepare(event_from_row(row)).to_row()  # an error's text, or content to cut or leave out
        elif type(metadata) is str:  # flat metadata as JSON text: no value is longer than the whole
            if len(metadata) > limit:
                row = self._prepare(event_from_row(row)).to_row()
        elif metadata:
            for value in metadata.values():
                if type(value) is str and len(value) <= limit or type(value) in _SHORT:
                    continue
                row = self._prepare(event_from_row(row)).to_row()
                break
        next(self._accepted_rows)
        if row[2] == "start" and row[1]:
            with self._lock:
                sessions = self._open_sessions
                sessions[row[1]] = row[3]
                if len(sessions) > 10_000:
                    sessions.popitem(last=False)
        if not self._pipeline.put(row):
            return None
        return row[0]

    def _accept(self, event: TelemetryEvent) -> str | None:
        if self._closed:
            self._drop_accepted("after_shutdown")
            log.warning("event %s tracked after shutdown was dropped", event.id)
            return None
        event = self._prepare(event)
        for impl in self.host.impls("before_track"):
            try:
                result = impl(event=event)
            except Exception as exc:
                self._drop_accepted("before_track_error")
                self._plugin_failure(impl.plugin, exc)
                return None
            if result is None:
                self._count("filtered")
                return None
            if not isinstance(result, TelemetryEvent):
                self._drop_accepted("before_track_error")
                self._plugin_failure(impl.plugin, TypeError(f"before_track returned {type(result).__name__}, not a TelemetryEvent"))
                return None
            if result is not event:
                # what a plugin made must pass the same gate: one value no store can hold would cost its whole batch
                try:
                    validate_event(result)
                except InvalidEventError as exc:
                    self._drop_accepted("before_track_error")
                    self._plugin_failure(impl.plugin, exc)
                    return None
            event = result
        with self._lock:
            self._accepted += 1
        if event.event_type == "start" and event.session_id:
            self._remember_session(event.session_id, event.category)
        if self._thinner is not None:
            queued = None
            for admitted in self._thinner.admit(event):
                stored = self._pipeline.put(admitted)
                if admitted is event:
                    queued = stored
            if queued is None:
                # sampled out or rate-limited (counted): an id only for an event held until its session ends
                return event.id if self._thinner.holds(event) else None
            return event.id if queued else None
        if not self._pipeline.put(event):
            return None
        return event.id

    def _prepare(self, event: TelemetryEvent) -> TelemetryEvent:
        """Apply ``capture_content`` and ``max_field_bytes`` to an event."""
        fields = event.__dict__
        limit = self._max_chars
        changes: dict[str, Any] = {}
        if not self.config.capture_content and (fields["prompt"] is not None or fields["stream_data"] is not None):
            changes["prompt"] = changes["stream_data"] = None
        cut: list[str] = []
        for name in _TEXT_FIELDS:
            value = fields[name]
            if value is not None and len(value) > limit and name not in changes:
                capped = _cap(value, self.config.max_field_bytes)
                if capped is not value:
                    changes[name] = capped
                    cut.append(name)
        metadata = fields["metadata"]
        if metadata:
            if not self.config.capture_content and not metadata.keys().isdisjoint(CONTENT_METADATA_KEYS):
                metadata = changes["metadata"] = _without_content(metadata)
            for value in metadata.values():
                if type(value) is str and len(value) <= limit or type(value) in _SHORT:
                    continue
                if _too_long(metadata, limit):  # a walk without copies: most nested metadata is short
                    before = len(cut)
                    capped_meta = _cap_json(dict(metadata), self.config.max_field_bytes, cut)
                    if len(cut) > before:
                        changes["metadata"] = capped_meta
                break
        if cut:
            changes["truncated"] = tuple(dict.fromkeys((*event.truncated, *cut)))
        return attrs.evolve(event, **changes) if changes else event

    def _remember_session(self, session_id: str, category: str) -> None:
        with self._lock:
            self._open_sessions[session_id] = category
            if len(self._open_sessions) > 10_000:
                self._open_sessions.popitem(last=False)

    def _category_of(self, session_id: str, category: str | None) -> str:
        if category:
            return category
        return self._open_sessions.get(session_id) or "session"

    def track_start(self, agent: str, mode: str | None = None, prompt: str | None = None, *,
                    metadata: Mapping[str, Any] | None = None, session_id: str | None = None,
                    parent_session_id: str | None = None, timestamp: Any = None, category: str | None = None,
                    kind: str | None = None, model: str | None = None, conversation_id: str | None = None,
                    user_id: str | None = None) -> str:
        """Start a session and return its id.

        Inside a ``telemetry.session(...)`` block the new session becomes a child
        of that block's session unless ``parent_session_id`` says otherwise, and
        takes its ``conversation_id`` and ``user_id`` unless given.  ``kind``
        (``llm``, ``agent``, ``tool`` ...), ``model``, ``conversation_id`` and
        ``user_id`` become fields of the session (``get_sessions(kind=...)``).
        """
        sid = session_id or new_id()
        labels = dict(metadata or {})
        inherited = _current_labels.get()
        for key, value in (("kind", kind), ("model", model), ("conversation_id", conversation_id),
                           ("user_id", user_id)):
            if value is not None:
                labels[key] = value
            elif key in ("conversation_id", "user_id") and inherited and inherited.get(key) and key not in labels:
                labels[key] = inherited[key]
        fields: dict[str, Any] = {
            "event_type": "start", "session_id": sid, "category": category or agent, "agent": agent,
            "mode": mode, "prompt": prompt, "action": mode, "metadata": labels,
            "parent_session_id": parent_session_id or _current_session.get(),
        }
        if timestamp is not None:
            fields["timestamp"] = timestamp
        self.track(fields)
        return sid

    def track_stream(self, session_id: str | Mapping[str, Any] | None = None, stream_data: str | None = None, *,
                     category: str | None = None, action: str | None = None,
                     metadata: Mapping[str, Any] | None = None, timestamp: Any = None, **fields: Any) -> str | None:
        """Record one streamed chunk of a session's output.

        Also accepts the seed's single-mapping form: ``track_stream({"session_id": ..., "stream_data": ...})``.
        """
        if isinstance(session_id, Mapping):
            params = {k: v for k, v in session_id.items() if k not in ("event_type", "eventType")}
            return self.track_stream(**{_SNAKE.get(k, k): v for k, v in params.items()})
        if session_id is None:
            session_id = fields.pop("sessionId", None) or _current_session.get()
        fields.pop("event_type", None)
        fields.pop("eventType", None)
        if not session_id:
            raise InvalidEventError("session_id", "required for stream events")
        data = {"event_type": "stream", "session_id": session_id, "category": self._category_of(session_id, category),
                "action": action, "stream_data": stream_data, "metadata": dict(metadata or {}), **fields}
        if timestamp is not None:
            data["timestamp"] = timestamp
        return self.track(data)

    def track_end(self, session_id: str, status: str = "completed", *, metadata: Mapping[str, Any] | None = None,
                  category: str | None = None, timestamp: Any = None, stream_data: str | None = None) -> str | None:
        """End a session with a status (``completed``, ``failed``, ``cancelled``...).

        ``stream_data`` is the session's answer when it was not streamed (a function's return value).
        """
        data: dict[str, Any] = {"event_type": "end", "session_id": session_id, "status": status,
                                "category": self._category_of(session_id, category), "metadata": dict(metadata or {})}
        if timestamp is not None:
            data["timestamp"] = timestamp
        if stream_data is not None:
            data["stream_data"] = stream_data
        event_id = self.track(data)
        with self._lock:
            self._open_sessions.pop(session_id, None)
        return event_id

    def track_error(self, session_id: str | Mapping[str, Any] | None = None, error: BaseException | str | None = None,
                    *, error_type: str | None = None, message: str | None = None, stack: str | None = None,
                    category: str | None = None, metadata: Mapping[str, Any] | None = None,
                    timestamp: Any = None) -> str | None:
        """Record an error, from an exception (type, message and traceback are taken from it) or from text.

        Also accepts the seed's single-mapping form, camelCase keys included:
        ``track_error({"sessionId": sid, "error": exc, "metadata": {...}})``.
        """
        if isinstance(session_id, Mapping):
            params = _call_options(session_id, ("session_id", "error", "error_type", "message", "stack", "category",
                                                "metadata", "timestamp"), "track_error", InvalidEventError,
                                   aliases={"error_message": "message", "error_stack": "stack", "type": "error_type"})
            return self.track_error(params.pop("session_id", None), params.pop("error", None), **params)
        session_id = session_id or _current_session.get()
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            message = message or str(error)
            stack = stack or "".join(traceback.format_exception(error))
        elif isinstance(error, str):
            message = message or error
        data: dict[str, Any] = {
            "event_type": "error", "session_id": session_id,
            "category": self._category_of(session_id, category) if session_id else (category or "error"),
            "error_type": error_type or "Error", "error_message": message, "error_stack": stack,
            "metadata": dict(metadata or {}),
        }
        if timestamp is not None:
            data["timestamp"] = timestamp
        if not session_id:
            data["event_type"] = "custom"
            data["action"] = "error"
        return self.track(data)

    @property
    def saturated(self) -> bool:
        """Whether ``track()`` would refuse an event right now because the queue and its spill journal are full.

        Servers use it to shed load cheaply (429 with ``Retry-After``) before reading a request.
        """
        return self._pipeline.saturated

    def track_all(self, events: list[TelemetryEvent | Mapping[str, Any]], *, validated: bool = False) -> list[str | None]:
        """Accept several events as one unit: if one is invalid, none is accepted (the error names it).

        For what must be stored whole or not at all, such as the events of one span.  ``validated=True``
        trusts that each event came from :meth:`TelemetryEvent.from_dict` (the OTLP mapping's output) and
        skips checking it again.  Returns each event's id, ``None`` where the queue refused it.
        """
        try:
            if validated:
                checked = [e if type(e) is TelemetryEvent else TelemetryEvent.from_dict(e) for e in events]
            else:
                checked = []
                for event in events:
                    if type(event) is TelemetryEvent:
                        validate_event(event)
                        checked.append(event)
                    else:
                        checked.append(TelemetryEvent.from_dict(event))
        except InvalidEventError:
            self._count("rejected")
            raise
        accept = self._accept
        return [accept(event) for event in checked]

    def track_batch(self, events: list[TelemetryEvent | Mapping[str, Any]]) -> BatchResult:
        """Accept many events; each invalid one is rejected alone, with its index and error."""
        accepted, rejected, dropped = [], [], []
        for index, event in enumerate(events):
            try:
                event_id = self.track(event)
            except InvalidEventError as exc:
                rejected.append((index, exc))
                continue
            if event_id is None:
                dropped.append(index)
            else:
                accepted.append(event_id)
        return BatchResult(accepted=accepted, rejected=rejected, dropped=dropped)

    def session(self, agent: str, mode: str | None = None, prompt: str | None = None, *,
                metadata: Mapping[str, Any] | None = None, parent_session_id: str | None = None,
                kind: str | None = None, model: str | None = None, conversation_id: str | None = None,
                user_id: str | None = None) -> SessionScope:
        """A context manager (sync or async) around one session.

        It ends the session as ``completed``, or records the exception and ends it
        as ``failed`` when the block raises.  Sessions opened inside it (in this
        thread, in threads started with its context, or in asyncio tasks it
        creates) become its children and share its ``conversation_id`` and ``user_id``.
        """
        labels = {"kind": kind, "model": model, "conversation_id": conversation_id, "user_id": user_id}
        return SessionScope(self, agent, mode, prompt, metadata, parent_session_id,
                            {k: v for k, v in labels.items() if v is not None})

    def observe(self, kind: str | None = None, name: str | None = None, *, capture: bool = True,
                metadata: Mapping[str, Any] | None = None) -> instrumentation.Observer:
        """A decorator (sync, async and generator functions) and context manager making a child session.

        ``kind`` is one of ``agent``, ``llm``, ``tool``, ``chain`` (the default), ``retrieval``,
        ``embedding``, ``workflow``; ``name`` defaults to the function's qualified name.  The
        arguments are the session's prompt and the return value its answer, unless
        ``capture=False`` or ``capture_content = false``.
        """
        return instrumentation.Observer(self, kind, name, capture, metadata)

    def instrument(self, *names: str) -> list[str]:
        """Record every call of the named SDKs (``"openai"``, ``"anthropic"``) as a child session.

        The instrumentors are plugins found by entry point (``vibekit-telemetry-instrument-openai`` ...);
        returns the names instrumented now.  An unknown name is a ``ConfigError`` listing the installed ones.
        """
        return instrumentation.instrument(self, names)

    def uninstrument(self, *names: str) -> list[str]:
        """Undo :meth:`instrument` (all, or the named SDKs): the SDKs are restored exactly."""
        return instrumentation.uninstrument(self, names or None)

    def flush(self) -> None:
        """Write everything tracked so far before returning."""
        self._pipeline.drain()

    def _stored_form(self, batch: list[TelemetryEvent]) -> list[TelemetryEvent] | None:
        """The batch through the ``before_store`` transforms (encryption), or ``None`` when one failed (counted)."""
        impls = self.host.impls("before_store")
        stored_form = events_of(batch) if impls else batch
        for impl in impls:
            try:
                result = impl(events=stored_form)
            except Exception as exc:
                # never store what a transform (encryption) could not process: journal nothing, count the loss
                self._plugin_failure(impl.plugin, exc)
                self._record_drop("before_store_error", len(batch))
                return None
            if result is not None:
                stored_form = result
        return stored_form

    def _stage_batch(self, batch: list[TelemetryEvent]) -> _Staged | None:
        """``persist_buffer``'s write-ahead step, on the pipeline's journal thread: transform, then journal.

        Each sink with ``persist_buffer`` appends the stored form to its journal (one ``fsync``); the flusher
        later stores the batch and acknowledges it.  The store's progress does not matter here.
        """
        batch = events_of(batch)  # the journals hold events
        if not self._sinks:
            return _Staged(batch, batch, {})
        stored_form = self._stored_form(batch)
        if stored_form is None:
            return None
        kept: dict[str, tuple[list[TelemetryEvent], int] | None] = {}
        for sink in self._sink_list:
            if sink.policy.persist_buffer:
                try:
                    kept[sink.name] = sink.stage(stored_form)
                except Exception as exc:  # one sink's fault must not cost the others their batch
                    self._plugin_failure(sink.name, exc)
                    sink.lose(len(stored_form), "stage_error")
                    kept[sink.name] = None
        return _Staged(batch, stored_form, kept)

    def _write_batch(self, item: list[TelemetryEvent] | _Staged) -> None:
        staged: dict[str, Any] | None = None
        if type(item) is _Staged:
            batch, stored_form, staged = item.events, item.stored, item.kept
        else:
            batch = item
            stored_form = self._stored_form(batch) if self._sinks else batch
            if stored_form is None:
                return
        count = len(batch)
        if not self._sinks:
            self._record_drop("no_storage", count)
        seconds = 0.0
        for sink in self._sink_list:
            stats = self._plugin_stats[sink.name]
            failures = sink.stats.failures
            started = time.perf_counter()
            try:
                if staged is not None and sink.name in staged:
                    kept = staged[sink.name]
                    if kept is not None:  # None: the journal could not take it, and the loss is counted
                        sink.write_staged(*kept)
                else:
                    sink.write(stored_form)
            except Exception as exc:  # a fault of one sink (its journal's disk) must not skip the next ones
                self._plugin_failure(sink.name, exc)
            elapsed = time.perf_counter() - started
            stats.write_ms_total += elapsed * 1000
            seconds += elapsed
            self._note_sink_failures(sink, failures)
        after_store, after_track = self.host.impls("after_store"), self.host.impls("after_track")
        if after_store or after_track or self._streams:
            batch = events_of(batch)  # the queue may hold rows; these want events
        for impl in after_store:
            try:
                impl(events=batch)
            except Exception as exc:
                self._plugin_failure(impl.plugin, exc)
        for impl in after_track:
            for event in batch:
                try:
                    impl(event=event)
                except Exception as exc:
                    self._plugin_failure(impl.plugin, exc)
                    break
        for stream in list(self._streams):
            stream.offer(batch)
        log.debug("flushed %d events to %s in %.1f ms", count, ", ".join(self._sinks) or "no storage", seconds * 1000)
        self._emit("flush", {"count": count, "seconds": seconds})

    def _note_sink_failures(self, sink: GuardedSink, before: int) -> None:
        if sink.stats.failures == before:
            return
        stats = self._plugin_stats[sink.name]
        stats.failures += sink.stats.failures - before
        stats.last_error = sink.stats.last_error
        stats.last_error_at = now_ms()
        self._emit("error", StorageError(f"storage plugin {sink.name!r} failed: {sink.stats.last_error}"))

    def _idle(self) -> None:
        self.host.each("idle", self._plugin_failure)

    def _before_drain(self) -> None:
        """On the flusher, before each drain: replay journaled batches, watch memory."""
        if not self._started:
            return
        for sink in self._sink_list:
            if sink.has_backlog and sink.backlog:
                failures = sink.stats.failures
                sink.replay()
                self._note_sink_failures(sink, failures)
        limit = self.config.reliability.memory_limit
        if limit is not None and time.monotonic() - self._memory_checked >= self.config.reliability.gc_interval / 1000:
            self._check_memory(limit)

    def _check_memory(self, limit: int) -> None:
        import psutil

        self._memory_checked = time.monotonic()
        rss = psutil.Process().memory_info().rss
        if rss > limit and not self._memory_high:
            self._memory_high = self._pipeline.pressure = True
            log.warning("memory use %.1f MiB is over memory_limit %.1f MiB: new events spill to disk",
                        rss / 2**20, limit / 2**20)
            self._emit("memory:high", {"rss": rss, "limit": limit, "percentage": round(100 * rss / limit, 1)})
        elif rss < 0.9 * limit and self._memory_high:
            self._memory_high = self._pipeline.pressure = False
            log.info("memory use is back under memory_limit")

    def _record_thinned(self, reason: str, count: int) -> None:
        with self._lock:
            self._thinned[reason] += count

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _accepted_now(self) -> int:
        """Events accepted so far (caller holds the lock): the counted ones plus the lean path's.

        Reading the lean path's count takes one from it too (a count cannot be read otherwise), so the reads
        made so far are subtracted.
        """
        ticks = next(self._accepted_rows) - self._accepted_rows_read
        self._accepted_rows_read += 1
        return self._accepted + ticks

    def _drop_accepted(self, reason: str) -> None:
        """An event that passed the gate is lost before it reaches the queue: counted accepted and dropped, so
        ``accepted = stored + queued + ... + dropped`` holds."""
        with self._lock:
            self._accepted += 1
        self._record_drop(reason, 1)

    def _record_drop(self, reason: str, count: int) -> None:
        with self._lock:
            self._drops[reason] += count
        log.debug("%d events not stored: %s", count, reason)
        self._emit("drop", {"reason": reason, "count": count})

    def _plugin_failure(self, plugin: str, exc: BaseException) -> None:
        stats = self._plugin_stats.get(plugin)
        if stats is not None:
            stats.failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            stats.last_error_at = now_ms()
        log.error("plugin %s failed: %s: %s", plugin, type(exc).__name__, exc)
        self._emit("error", PluginError(f"plugin {plugin!r} failed: {type(exc).__name__}: {exc}"))

    def on(self, name: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Call ``handler(payload)`` whenever the service emits ``name``.

        Names: ``error`` (an exception), ``flush`` (``{"count"}``), ``drop``
        (``{"reason", "count"}``), ``shutdown``, ``initialized``, ``memory:high``,
        ``storage:available``, ``stream:open``, ``connection:error``, ``circuit:open|half_open|close``,
        ``anomaly`` (see :data:`EVENT_NAMES`); plugins add theirs with :meth:`register_event`.
        Any other name is an :class:`~vibekit_telemetry.UnknownEventError` listing these, since a
        handler for a name nothing emits would never be called.  A handler that raises is
        logged and skipped.  Returns the handler, so it works as a decorator.
        """
        if name not in self._event_names:
            raise UnknownEventError(name, sorted(self._event_names))
        if not callable(handler):
            raise TypeError(f"on({name!r}, handler): the handler must be callable, got {type(handler).__name__}")
        with self._lock:
            self._handlers.setdefault(name, []).append(handler)
        return handler

    def register_event(self, name: str) -> None:
        """Declare an event name a plugin emits (with :meth:`emit`), so that ``on(name, ...)`` accepts it."""
        if not isinstance(name, str) or not name:
            raise ValueError("an event name is a non-empty string")
        with self._lock:
            self._event_names.add(name)

    def off(self, name: str, handler: Callable[[Any], Any]) -> None:
        """Stop calling ``handler`` for ``name``."""
        with self._lock:
            if handler in self._handlers.get(name, []):
                self._handlers[name].remove(handler)

    def emit(self, name: str, payload: Any = None) -> None:
        """Call the handlers subscribed to ``name`` (plugins use this for their own events)."""
        self._emit(name, payload)

    def _settle(self, sinks: list[GuardedSink]) -> None:
        """Before a read or maintenance: wait for ``sinks`` still opening (a large file being checked, not for
        retries), then flush, so what was journaled while they opened is stored in them first."""
        for sink in sinks:
            opening = self._opening.get(sink.name)
            if sink.unavailable is not None and opening is not None:
                opening.wait(READ_WAIT_S)
        self.flush()

    def _settle_primary(self) -> None:
        """:meth:`_settle` the primary store before a read; raise if it is still not open."""
        primary = self._sink_list[0] if self._sink_list else None
        self._settle(self._sink_list[:1])
        if primary is not None and primary.unavailable is not None:
            raise StorageUnavailableError(
                f"storage {primary.name!r} is not open yet ({primary.unavailable}); events tracked meanwhile are "
                f"journaled and will be stored once it opens{_unless_given_up(primary.unavailable)}")

    def _settle_for(self, hook: str) -> None:
        """:meth:`_settle` every store that implements ``hook``; raise if one of them is still not open.

        Maintenance (clean, rewrite, delete, optimize) on some stores but not others would leave them
        disagreeing, and a plugin that is not open cannot do it: the caller gets a clear error instead.
        """
        names = {impl.plugin for impl in self.host.impls(hook)}
        sinks = [sink for sink in self._sink_list if sink.name in names]
        self._settle(sinks)
        closed = [sink for sink in sinks if sink.unavailable is not None]
        if closed:
            raise StorageUnavailableError(
                f"cannot {hook} now: storage {', '.join(f'{s.name!r} ({s.unavailable})' for s in closed)} is not "
                f"open yet; try again once it opens{_unless_given_up(closed[0].unavailable)}")

    def _emit(self, name: str, payload: Any) -> None:
        for handler in list(self._handlers.get(name, ())):
            try:
                handler(payload)
            except Exception:
                log.exception("handler for %r failed", name)

    def _read(self, hook: str, **kwargs: Any) -> Any:
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        _check_bounds(kwargs.get("filter"))
        impls = self.host.impls(hook)
        if not impls:
            raise PluginError(f"no installed storage plugin answers {hook}; configure one, e.g. storage = [{{type = 'sqlite'}}]")
        self._settle_primary()
        key = None
        if self._read_cache:
            cached, key = self._cache_lookup(hook, kwargs)
            if key is not None and cached is not None:
                return cached
        result = None
        for impl in impls:
            result = impl(**kwargs)
            if result is not None:
                break
        if result is not None and self._read_decoders:
            result = self._decode(hook, result)
        if key is not None:
            self._cache_store(hook, key, kwargs, result)
        return result

    def _decode(self, hook: str, result: Any) -> Any:
        """Undo ``before_store`` transforms on what storage returned (``after_read`` chains, last plugin first)."""
        if hook == "query":
            for impl in reversed(self.host.impls("after_read")):
                result = impl(events=result) or result
        elif hook in ("get_session", "get_sessions"):
            single = hook == "get_session"
            sessions = [result] if single else result
            for impl in reversed(self.host.impls("after_read_sessions")):
                sessions = impl(sessions=sessions) or sessions
            for impl in self.host.impls("annotate_sessions"):
                try:
                    sessions = impl(sessions=sessions) or sessions
                except Exception as exc:  # a figure is missing, the read still answers
                    self._plugin_failure(impl.plugin, exc)
            result = sessions[0] if single else sessions
        return result

    def _cache_lookup(self, hook: str, kwargs: dict[str, Any]) -> tuple[Any, tuple[str, str] | None]:
        """Ask the read-cache plugins (``cache_lookup``); the key is ``None`` when none is installed."""
        impls = self.host.impls("cache_lookup")
        if not impls:
            return None, None
        key = (hook, repr(sorted(kwargs.items())))
        for impl in impls:
            try:
                hit = impl(hook=hook, key=key, arguments=kwargs)
            except Exception as exc:
                self._plugin_failure(impl.plugin, exc)
                continue
            if hit is not None:
                return hit, key
        return None, key

    def _cache_store(self, hook: str, key: tuple[str, str] | None, kwargs: dict[str, Any], value: Any) -> None:
        if key is None or value is None:
            return
        for impl in self.host.impls("cache_store"):
            try:
                impl(hook=hook, key=key, arguments=kwargs, value=value)
            except Exception as exc:
                self._plugin_failure(impl.plugin, exc)

    def query(self, filter: QueryFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[TelemetryEvent]:
        """Events matching a filter (see :class:`QueryFilter`), newest first unless ``order="asc"``.

        >>> telemetry.query(category="claude", event_type="stream", since="1h", limit=100)
        """
        result = self._read("query", filter=QueryFilter.build(filter, **kwargs))
        return result if result is not None else []

    def query_page(self, filter: QueryFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> Page:
        """One page of a query and the cursor of the next (pass it back as ``cursor=``)."""
        flt = QueryFilter.build(filter, **kwargs)
        if flt.limit is None:
            flt = attrs.evolve(flt, limit=100)
        events = self.query(flt)
        return Page(events=events, next_cursor=encode_cursor(events[-1]) if len(events) == flt.limit and events else None)

    def iter_events(self, filter: QueryFilter | Mapping[str, Any] | None = None, /, *, page_size: int = 1000,
                    **kwargs: Any) -> Iterator[TelemetryEvent]:
        """Every matching event, oldest first, streamed (or fetched page by page) so memory stays bounded."""
        flt = QueryFilter.build(filter, **kwargs)
        if flt.limit is None and not flt.offset and not flt.cursor and self.host.impls("scan"):
            scanned = self._scan(attrs.evolve(flt, order="asc" if "order" not in kwargs else flt.order))
            if scanned is not None:
                yield from scanned
                return
        remaining = flt.limit
        flt = attrs.evolve(flt, order="asc" if "order" not in kwargs else flt.order, limit=page_size, offset=flt.offset)
        while True:
            if remaining is not None:
                flt = attrs.evolve(flt, limit=min(page_size, remaining))
                if flt.limit == 0:
                    return
            events = self.query(flt)
            yield from events
            if remaining is not None:
                remaining -= len(events)
            if len(events) < flt.limit:
                return
            flt = attrs.evolve(flt, cursor=encode_cursor(events[-1]), offset=0)

    def _scan(self, flt: QueryFilter) -> Iterator[TelemetryEvent] | None:
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        _check_bounds(flt)
        self._settle_primary()
        stream = self.host.first("scan", filter=flt)[1]
        if stream is None:
            return None
        if not self._read_decoders:
            return iter(stream)
        return self._decoded(iter(stream))

    def _decoded(self, stream: Iterator[TelemetryEvent], chunk: int = 1000) -> Iterator[TelemetryEvent]:
        while batch := list(itertools.islice(stream, chunk)):
            yield from self._decode("query", batch)

    def _scan_rows(self, flt: QueryFilter, columns: tuple[str, ...], progress: Callable[[int], Any] | None = None
                   ) -> Iterator[list[tuple[Any, ...]]] | None:
        """An export's events as batches of storage rows (``scan_rows``), or ``None`` for the event path.

        Rows are events as stored, so they stand for the events only when no ``after_read`` plugin changes
        events on their way out (decryption).  Only the plugin that ``iter_events`` would scan is asked.
        """
        if self.host.impls("after_read") or flt.limit is not None or flt.offset or flt.cursor:
            return None
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        _check_bounds(flt)
        scanners = self.host.impls("scan")
        impl = next((i for i in self.host.impls("scan_rows") if scanners and i.plugin == scanners[0].plugin), None)
        if impl is None:
            return None
        self._settle_primary()
        batches = impl(filter=attrs.evolve(flt, order="asc"), columns=tuple(columns))
        if batches is None:
            return None
        return iter(batches) if progress is None else _reporting_rows(iter(batches), progress)

    def get_session(self, session_id: str, *, tree: bool = False) -> Session | None:
        """A session's summary (status, times, durations, counts, tokens), with its descendants if ``tree``."""
        session = self._read("get_session", session_id=session_id)
        if session is None or not tree:
            return session
        return self._with_children(session, depth=0)

    def _with_children(self, session: Session, depth: int) -> Session:
        """The session with its descendants, and the tree's tokens and cost rolled up onto each node."""
        children = () if depth > 32 else tuple(self._with_children(c, depth + 1)
                                               for c in self.get_sessions(parent_id=session.id, order="asc"))
        tokens = session.tokens
        costs = [session.cost_usd]
        for child in children:
            tokens = tokens + (child.tree_tokens or child.tokens)
            costs.append(child.tree_cost_usd)
        known = [cost for cost in costs if cost is not None]
        return attrs.evolve(session, children=children, tree_tokens=tokens,
                            tree_cost_usd=sum(known) if known else None)

    def get_sessions(self, filter: SessionFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[Session]:
        """Sessions matching a filter (status, agent, mode, parent_id, since/until, text), newest first.

        ``sort`` orders by another column (``duration_ms``, ``tokens``, ``error_count`` ...).
        """
        result = self._read("get_sessions", filter=SessionFilter.build(filter, **kwargs))
        return result if result is not None else []

    def count_sessions(self, filter: SessionFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """How many sessions match a filter, ``limit`` and ``offset`` aside (the total for paging)."""
        flt = SessionFilter.build(filter, **kwargs)
        if not self.host.impls("count_sessions"):  # a storage plugin without the hook: count what it returns
            return len(self.get_sessions(attrs.evolve(flt, limit=None, offset=0)))
        return self._read("count_sessions", filter=flt) or 0

    async def aquery(self, filter: QueryFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[TelemetryEvent]:
        """``query`` without blocking the event loop."""
        return await asyncio.to_thread(self.query, filter, **kwargs)

    async def aget_session(self, session_id: str, *, tree: bool = False) -> Session | None:
        """``get_session`` without blocking the event loop."""
        return await asyncio.to_thread(self.get_session, session_id, tree=tree)

    async def aget_sessions(self, filter: SessionFilter | Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[Session]:
        """``get_sessions`` without blocking the event loop."""
        return await asyncio.to_thread(self.get_sessions, filter, **kwargs)

    async def aflush(self) -> None:
        """``flush`` without blocking the event loop."""
        await asyncio.to_thread(self.flush)

    def initialize(self) -> TelemetryService:
        """The seed's first call after construction; returns the service.

        Construction already started everything, so this only checks that the service is still
        running (an :class:`~vibekit_telemetry.ServiceClosedError` once it was shut down, as a
        shut-down service cannot start again) and emits ``initialized`` the first time.
        Calling it again does nothing more.
        """
        if self._closed or self._shutting_down:
            raise ServiceClosedError("the telemetry service was shut down and cannot be initialized again; "
                                     "create a new TelemetryService")
        with self._lock:
            first, self._initialized = not self._initialized, True
        if first:
            self._emit("initialized", None)
        return self

    async def ainitialize(self) -> TelemetryService:
        """``initialize`` for ``await telemetry.ainitialize()``."""
        return await asyncio.to_thread(self.initialize)

    # The a-prefixed forms run the call in a worker thread: track() may wait for room in the queue
    # (on_full = "block") or for an async before_track hook, and reads do I/O; none of it on the loop.

    async def atrack(self, event: TelemetryEvent | Mapping[str, Any] | None = None, /, **fields: Any) -> str | None:
        """``track`` without blocking the event loop."""
        return await asyncio.to_thread(self.track, event, **fields)

    async def atrack_start(self, agent: str, mode: str | None = None, prompt: str | None = None,
                           **kwargs: Any) -> str:
        """``track_start`` without blocking the event loop."""
        return await asyncio.to_thread(self.track_start, agent, mode, prompt, **kwargs)

    async def atrack_stream(self, session_id: str | Mapping[str, Any] | None = None, stream_data: str | None = None,
                            **kwargs: Any) -> str | None:
        """``track_stream`` without blocking the event loop."""
        return await asyncio.to_thread(self.track_stream, session_id, stream_data, **kwargs)

    async def atrack_end(self, session_id: str, status: str = "completed", **kwargs: Any) -> str | None:
        """``track_end`` without blocking the event loop."""
        return await asyncio.to_thread(self.track_end, session_id, status, **kwargs)

    async def atrack_error(self, session_id: str | Mapping[str, Any] | None = None,
                           error: BaseException | str | None = None, **kwargs: Any) -> str | None:
        """``track_error`` without blocking the event loop."""
        return await asyncio.to_thread(self.track_error, session_id, error, **kwargs)

    async def aget_metrics(self, time_range: Any = None) -> Any:
        """``get_metrics`` without blocking the event loop."""
        return await asyncio.to_thread(self.get_metrics, time_range)

    async def aget_insights(self, time_range: Any = None, categories: list[str] | str | None = None) -> Any:
        """``get_insights`` without blocking the event loop."""
        return await asyncio.to_thread(self.get_insights, time_range, categories)

    async def aexport(self, *args: Any, **kwargs: Any) -> Any:
        """``export`` (same arguments) without blocking the event loop."""
        return await asyncio.to_thread(self.export, *args, **kwargs)

    async def ashutdown(self, timeout: float = 10.0) -> None:
        """``shutdown`` without blocking the event loop."""
        await asyncio.to_thread(self.shutdown, timeout)

    def clean(self, retention_days: float) -> int:
        """Delete events older than ``retention_days`` from every storage plugin; return how many went."""
        if retention_days < 0:
            raise ValueError("retention_days must be >= 0")
        self._settle_for("clean")
        before = now_ms() - int(retention_days * 86_400_000)
        errors: list[str] = []
        results = self.host.each("clean", lambda name, exc: errors.append(f"{name}: {exc}"), before=before)
        self.host.each("cache_invalidate", self._plugin_failure, hooks=None)
        deleted = max((r for _, r in results if r is not None), default=0)
        self.audit("clean", "events", {"retention_days": retention_days, "before": before,
                                        "deleted": deleted, "errors": errors})
        if errors:
            raise StorageError("clean failed in " + "; ".join(errors))
        return max((r for _, r in results if r is not None), default=0)

    def optimize(self) -> None:
        """Compact every storage plugin's indexes and files."""
        self._settle_for("optimize")
        errors: list[str] = []
        self.host.each("optimize", lambda name, exc: errors.append(f"{name}: {exc}"))
        if errors:
            raise StorageError("optimize failed in " + "; ".join(errors))

    def export_formats(self) -> list[str]:
        """The export formats the installed plugins handle."""
        return self._formats("export_formats")

    def _formats(self, hook: str) -> list[str]:
        """What ``hook`` (``export_formats``/``import_formats``) lists, plus the installed format entry points."""
        found: list[str] = list(named_entry_points(FORMAT_GROUP))
        for _, formats in self.host.each(hook, self._plugin_failure):
            found.extend(formats or ())
        return sorted(set(found))

    def _require_format(self, hook: str, format: str, hint: str = "") -> None:
        """Load the plugin for ``format`` on first use; a ``PluginError`` naming the choices when none has it."""
        if not self._provides(hook, format):
            self._load_on_demand(FORMAT_GROUP, format)
        known = self._formats(hook)
        if format not in known:
            verb = "exports" if hook == "export_formats" else "imports"
            raise PluginError(f"no plugin {verb} format {format!r} (available: {', '.join(known) or 'none installed'})"
                              + hint)

    def _load_on_demand(self, group: str, name: str) -> None:
        """Register the installed plugin that provides format (or URL scheme) ``name``, once, on first use.

        Exporters need no configuration to be available: installing the package is enough.
        Configured instances (``plugins = [{name = "csv", options = ...}]``) come first and win.
        """
        ep = named_entry_points(group).get(name)
        if ep is None or ep.value in self._on_demand:
            return
        try:
            target = ep.load()
        except Exception as exc:
            raise PluginError(f"the plugin for {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
        obj = instantiate(name, target, {}, where=f"{group} entry point {name}")
        plugin = plugin_name_of(obj)
        if plugin in self.host.meta:
            plugin = f"{plugin}:{name}"
        self._register(plugin, obj, source="installed format")
        self._on_demand[ep.value] = plugin
        for impl in self.host.impls("startup"):
            if impl.plugin == plugin:
                impl(service=self)

    def export(self, format: str | None = None, filter: QueryFilter | Mapping[str, Any] | None = None, *,
               output: str | os.PathLike[str] | BinaryIO | None = None, compression: str | bool | None = None,
               **options: Any) -> bytes | int:
        """Export matching events (oldest first) in ``format`` through the ``export`` hook.

        ``output`` is a path (the format and compression may come from its name:
        ``events.jsonl.gz``; the file appears complete or not at all), a URL such as
        ``s3://bucket/key`` that a destination plugin handles, or a binary file.
        Without ``output`` the exported bytes are returned, otherwise the count.

        ``filter`` and ``options`` share one vocabulary (the HTTP API's and the CLI's too),
        so one mapping may hold both, as in the seed: ``export("json", {"sessionId": sid,
        "compress": True})``, ``export("csv", {"category": "claude", "delimiter": ";",
        "headers": True})``, ``export("otlp", {"sessions": [a, b]})``,
        ``export("parquet", {"schema": "events", "compression": "snappy"})``.  Filter keys go
        to the query (:class:`QueryFilter`, camelCase, ``sessions`` and ``timeRange`` too);
        ``compression`` (alias ``compress``: ``gzip``, ``zstd``, ``True`` for gzip, ``"none"``)
        wraps any format, except one that compresses itself (Parquet: its codec);
        ``compression_level``; ``progress`` is called with 0 once the options are checked and
        writing begins, then with the count so far every few thousand events; the rest go to
        the exporter (``delimiter``, ``header``, ``metadata`` ...).  An unknown key is an
        :class:`InvalidQueryError` listing the valid ones, raised before anything is written.
        """
        name = os.fspath(output) if isinstance(output, (str, os.PathLike)) else None
        named_compression = None
        if name is not None:
            named_format, named_compression = infer_from_name(name)
            format = format or named_format
        if not format:
            raise ValueError("name an export format (or an output file whose name says it, such as events.jsonl)")
        self._require_format("export_formats", format, "; install an exporter plugin such as vibekit-telemetry-json")
        base = filter if isinstance(filter, QueryFilter) else None
        layers: list[Mapping[str, Any]] = [filter] if filter is not None and base is None else []
        layers.append(options)
        if compression is not None:
            layers.append({"compression": compression})
        args = split_export_arguments(format, layers, format_options=self.export_options(format))
        compression = args.compression if args.compression_given else named_compression
        flt = QueryFilter.build(base, **args.filter)
        options = args.options
        # An exporter checks its options before it writes: run it on no events first, so a bad option fails
        # before a file, an upload or an HTTP response has begun.
        for impl in self.host.impls("export"):
            if impl(format=format, events=iter(()), output=io.BytesIO(), options=dict(options)) is not None:
                break
        events = self.iter_events(flt, page_size=5000)
        if args.progress is not None:
            events = _reporting(events, args.progress)

        def rows(columns: tuple[str, ...]) -> Iterator[list[tuple[Any, ...]]] | None:
            return self._scan_rows(flt, columns, args.progress)

        final = name.rstrip("/").rsplit("/", 1)[-1] if name is not None else ""

        def write(stream: BinaryIO) -> int:
            if args.progress is not None:
                args.progress(0)
            with compressed_writer(stream, compression, args.level, name=final) as out:
                return self._export_to(format, events, out, options, rows)

        if output is None:
            buffer = io.BytesIO()
            count = write(buffer)
        elif name is not None and "://" in name:
            self._load_on_demand(DESTINATION_GROUP, name.split("://", 1)[0])
            destination = self.host.first("export_destination", url=name, options=options)[1]
            if destination is None:
                raise PluginError(f"no installed plugin writes to {name.split('://')[0]}:// URLs "
                                  "(for s3:// install vibekit-telemetry-s3)")
            try:
                count = write(destination)
            except BaseException:
                abort = getattr(destination, "abort", None)
                if abort is not None:
                    abort()
                raise
            destination.close()
        elif name is not None:
            partial = f"{name}.partial"
            try:
                with open(partial, "wb") as fh:
                    count = write(fh)
                os.replace(partial, name)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
        else:
            count = write(output)  # type: ignore[arg-type]
        self.audit("export", "events", {"format": format, "compression": compression or options.get("compression"),
                                        "count": count, "filter": repr(flt), "output": name})
        return buffer.getvalue() if output is None else count

    def export_options(self, format: str) -> list[str] | None:
        """The option names the exporter of ``format`` takes (its ``export_options`` hook), ``None`` if it does not say.

        ``"compression"`` among them means the format compresses itself (Parquet's codec).  The format's
        plugin is loaded if it is installed; a :class:`PluginError` names the choices when none is.
        """
        self._require_format("export_formats", format, "; install an exporter plugin such as vibekit-telemetry-json")
        exporter = next((impl.plugin for impl in self.host.impls("export_formats")
                         if format in (impl() or ())), None)
        for impl in self.host.impls("export_options"):
            if impl.plugin == exporter:
                return impl(format=format)
        return None

    def _export_to(self, format: str, events: Iterator[TelemetryEvent], output: BinaryIO, options: dict[str, Any],
                   rows: Callable[[tuple[str, ...]], Iterator[list[tuple[Any, ...]]] | None] | None = None) -> int:
        if rows is not None:  # straight from storage rows if the format's own exporter can (export_rows)
            exporter = next((impl.plugin for impl in self.host.impls("export_formats")
                             if format in (impl() or ())), None)
            for impl in self.host.impls("export_rows"):
                if impl.plugin == exporter:
                    count = impl(format=format, rows=rows, output=output, options=options)
                    if count is not None:
                        return count
        for impl in self.host.impls("export"):
            count = impl(format=format, events=events, output=output, options=options)
            if count is not None:
                return count
        known = ", ".join(self.export_formats()) or "none installed"
        raise PluginError(f"no plugin exports format {format!r} (available: {known}); install an exporter plugin")

    def _provides(self, hook: str, format: str) -> bool:
        return any(format in (formats or ()) for _, formats in self.host.each(hook, self._plugin_failure))

    def import_formats(self) -> list[str]:
        """The formats the installed plugins can read back."""
        return self._formats("import_formats")

    def import_events(self, source: str | os.PathLike[str] | BinaryIO, format: str | None = None,
                      **options: Any) -> ImportResult:
        """Read events back from an export (a path or a binary file; gzip and zstd are detected) and track them.

        Event ids are kept, so importing the same file twice stores each event
        once.  Invalid events are counted and described in the result, the rest
        are imported.
        """
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
        if format is None and isinstance(name, str):
            format = infer_from_name(name)[0]
        if not format:
            raise ValueError("name the import format (json, jsonl, csv, parquet, otlp ...)")
        self._require_format("import_formats", format)
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
            stream = decompressed_reader(raw)  # type: ignore[arg-type]
            rows = self.host.first("import_events", format=format, input=stream, options=options)[1]
            read = imported = rejected = 0
            errors: list[str] = []
            for index, row in enumerate(rows or ()):
                read += 1
                try:
                    if self.track(row) is not None:
                        imported += 1
                except InvalidEventError as exc:
                    rejected += 1
                    if len(errors) < 20:
                        errors.append(f"event {index}: {exc}")
        self.flush()
        self.audit("import", "events", {"format": format, "source": name, "imported": imported, "rejected": rejected})
        return ImportResult(read=read, imported=imported, rejected=rejected, errors=errors)

    def detect(self, metric: str, points: list[tuple[int, float]], sensitivity: str = "medium", *,
               emit: bool = False) -> list[Anomaly]:
        """Run every installed anomaly detector over a metric series and return what they found.

        An on-demand check returns its findings without announcing them: ``on("anomaly")`` (the alert
        channels, the API's live subscribers) hears the continuous detectors' new findings, not the
        same history found again each time someone looks.  ``emit=True`` announces these too.
        """
        if sensitivity not in ("low", "medium", "high"):
            raise ValueError(f"sensitivity must be low, medium or high, got {sensitivity!r}")
        found: list[Anomaly] = []
        for _, result in self.host.each("detect", self._plugin_failure, metric=metric, points=points,
                                        sensitivity=sensitivity):
            found.extend(result or ())
        if emit:
            for anomaly in found:
                self._emit("anomaly", anomaly)
        return found

    def _analytics(self, hook: str, **kwargs: Any) -> Any:
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        self.flush()
        cached, key = self._cache_lookup(hook, kwargs) if hook != "define_metric" else (None, None)
        if key is not None and cached is not None:
            return cached
        impls = self.host.impls(hook)
        for impl in impls:
            result = impl(**kwargs)
            if result is not None:
                self._cache_store(hook, key, kwargs, result)
                return result
        if impls and hook == "metric_series":
            raise InvalidQueryError("metric", f"no installed plugin knows the metric {kwargs['metric']!r}")
        raise PluginError(f"no installed plugin answers {hook}: install and enable analytics "
                          "(pip install 'vibekit-telemetry[analytics]', then analytics = {enabled = true})")

    def get_metrics(self, time_range: Any = None) -> Any:
        """Live metrics of a window (default the last 24 hours): events, sessions, errors, latency, tokens, cost.

        ``time_range`` is a span (``"1h"``), ``(start, end)`` or ``{"start", "end"}`` (also wrapped
        as the seed's ``{"timeRange": {...}}``).  Answered by the analytics plugin from rollups, so
        its cost does not grow with the data.
        """
        if isinstance(time_range, Mapping) and not time_range.keys() <= {"start", "end"}:
            time_range = _call_options(time_range, ("time_range",), "get_metrics").get("time_range")
        start, end = _window(time_range)
        return self._analytics("get_metrics", start=start, end=end)

    def get_insights(self, time_range: Any = None, categories: list[str] | str | None = None) -> Any:
        """Findings about a window: busiest and slowest agents and models, error hot spots, changes.

        Also takes the seed's options mapping: ``get_insights({"timeRange": {"start": ...},
        "categories": ["claude", "gpt-4"]})``; with ``categories`` every finding and the summary
        are about those categories only.
        """
        if isinstance(time_range, Mapping) and not time_range.keys() <= {"start", "end"}:
            options = _call_options(time_range, ("time_range", "categories"), "get_insights")
            if categories is not None and "categories" in options:
                raise InvalidQueryError("categories", "given twice: in the options mapping and as an argument")
            time_range, categories = options.get("time_range"), options.get("categories", categories)
        if isinstance(categories, str):
            categories = [categories]
        start, end = _window(time_range)
        return self._analytics("get_insights", start=start, end=end, categories=list(categories) if categories else None)

    def get_alerts(self, limit: int = 50) -> dict[str, Any]:
        """Where anomaly alerts go and how their delivery went: channels, counts and the latest deliveries.

        ``{"enabled": False, ...}`` when no installed plugin sends alerts.
        """
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        _, status = self.host.first("get_alerts", limit=limit)
        return status if status is not None else {"enabled": False, "channels": [], "counts": {}, "recent": []}

    def define_metric(self, name: str | Mapping[str, Any], type: str = "counter", unit: str | None = None,
                      description: str | None = None) -> Any:
        """Declare a custom metric, fed by ``track(category="metrics", action=name, value=...)``.

        Also takes the seed's mapping: ``define_metric({"name": ..., "type": "counter", "unit": ..., "description": ...})``.
        """
        if isinstance(name, Mapping):
            options = _call_options(name, ("name", "type", "unit", "description"), "define_metric")
            return self.define_metric(options.pop("name", ""), **{"type": type, "unit": unit,
                                                                  "description": description, **options})
        if type not in ("counter", "gauge", "histogram"):
            raise ValueError(f"type must be counter, gauge or histogram, got {type!r}")
        if not name or not isinstance(name, str):
            raise ValueError("a metric needs a name")
        definition = self._analytics("define_metric", name=name, type=type, unit=unit, description=description)
        self.audit("create", f"metric:{name}", {"type": type, "unit": unit, "description": description})
        self.host.each("cache_invalidate", self._plugin_failure, hooks=["get_metrics", "get_insights", "metric_series"])
        return definition

    def metric_series(self, metric: str, time_range: Any = None, step: Any = "1m") -> list[tuple[int, float]]:
        """``metric`` over a window as ``(bucket start, value)`` points every ``step`` (default one minute)."""
        start, end = _window(time_range)
        step_ms = span_ms(step)
        if step_ms < 60_000 or step_ms % 60_000:
            raise ValueError(f"step must be a whole number of minutes, got {step!r}")
        if (end - start) // step_ms > MAX_SERIES_POINTS:
            raise ValueError(f"the window holds more than {MAX_SERIES_POINTS} steps of {step}; "
                             "use a larger step or a shorter window")
        start -= start % step_ms
        return self._analytics("metric_series", metric=metric, start=start, end=end, step=step_ms)

    def detect_anomalies(self, metrics: list[str] | tuple[str, ...] = ("response_time", "error_rate", "throughput"),
                         time_range: Any = None, sensitivity: str = "medium", step: Any = "1m", *,
                         emit: bool = False) -> list[Anomaly]:
        """Run the installed detectors over stored metric history (default the last 24 h, per minute).

        Returns the findings; ``emit=True`` also announces them to ``on("anomaly")`` (see :meth:`detect`).
        """
        if isinstance(metrics, str):
            metrics = [metrics]
        found: list[Anomaly] = []
        for metric in metrics:
            found.extend(self.detect(metric, self.metric_series(metric, time_range, step), sensitivity, emit=emit))
        return found

    def replay_dead_letters(self, plugin: str | None = None) -> dict[str, dict[str, Any]]:
        """Offer the events storage plugins refused for their content (the dead-letter file) to them again.

        For after the cause is fixed (a plugin upgraded, a constraint dropped).  The events go straight to
        the plugin that refused them, in the form it refused (already through ``before_store``).  Returns,
        per plugin, how many were stored now, how many are left, and why those are left.
        """
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        names = [plugin] if plugin else self.dead_letters.plugins()
        unknown = [name for name in names if name not in self._sinks]
        if plugin and unknown:
            raise PluginError(f"no configured storage plugin is called {plugin!r} "
                              f"(configured: {', '.join(self._sinks) or 'none'})")
        self.flush()
        results: dict[str, dict[str, Any]] = {}
        primary = self._sink_list[0].name if self._sink_list else None
        with self._pipeline.paused():
            for name in names:
                if name not in self._sinks:
                    results[name] = {"stored": 0, "left": self.dead_letters.count(name),
                                     "errors": [f"{name} is not a configured storage plugin"]}
                    continue
                stored, errors = self._sinks[name].replay_dead_letters()
                self._plugin_stats[name].stored += stored
                if name == primary and stored:
                    with self._lock:  # accepted again here, and stored: the counters stay balanced
                        self._accepted += stored
                        self._counts["stored"] += stored
                results[name] = {"stored": stored, "left": self.dead_letters.count(name), "errors": errors[:20]}
        self.host.each("cache_invalidate", self._plugin_failure, hooks=None)
        self.audit("replay", "dead letters", {name: {k: r[k] for k in ("stored", "left")} for name, r in results.items()})
        return results

    def rewrite(self, events: list[TelemetryEvent]) -> int:
        """Replace stored events' values (matched by id) through ``before_store`` and the ``rewrite`` hook.

        For maintenance such as anonymisation: the new values go through the same transforms (encryption)
        as new events.  Returns how many events the first storage plugin found.
        """
        if not self.host.impls("rewrite"):
            raise PluginError("no storage plugin can rewrite stored events (the rewrite hook)")
        self._settle_for("rewrite")
        for impl in self.host.impls("before_store"):
            events = impl(events=events) or events
        found = [count for _, count in self.host.each("rewrite", _reraise, events=events)]
        self.host.each("cache_invalidate", self._plugin_failure, hooks=None)
        return found[0] if found and found[0] is not None else 0

    def delete(self, event_ids: list[str]) -> int:
        """Delete events by id from every storage plugin (and fix or drop their sessions)."""
        if not self.host.impls("delete"):
            raise PluginError("no storage plugin can delete events by id (the delete hook)")
        self._settle_for("delete")
        counts = [count for _, count in self.host.each("delete", _reraise, event_ids=list(event_ids))]
        self.host.each("cache_invalidate", self._plugin_failure, hooks=None)
        return counts[0] if counts and counts[0] is not None else 0

    def audit(self, action: str, target: str, details: Mapping[str, Any] | None = None, *,
              actor: str | None = None) -> None:
        """Tell audit plugins that ``actor`` (default: the current actor) did ``action`` to ``target``.

        The actor is what ``acting_as(...)`` set in this context (the API server sets the API key's name),
        or else the operating-system user.  Audit failures are logged and counted, never raised.
        """
        if not self.host.impls("audit"):
            return
        who = actor or current_actor()
        self.host.each("audit", self._plugin_failure, action=action, target=target, actor=who,
                       details=dict(details or {}))

    def get_audit_logs(self, action: str | Mapping[str, Any] | None = None, since: Any = None,
                       limit: int = 1000) -> list[dict[str, Any]]:
        """Audit entries, newest first (needs an audit plugin).

        Also takes the seed's filter mapping: ``get_audit_logs({"action": "export", "since": ...})``.
        """
        if isinstance(action, Mapping):
            options = _call_options(action, ("action", "since", "limit"), "get_audit_logs")
            return self.get_audit_logs(options.get("action"), options.get("since", since),
                                       options.get("limit", limit))
        if action is not None and not isinstance(action, str):
            raise InvalidQueryError("action", f"must be an action name such as 'export', got {type(action).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidQueryError("limit", f"must be a positive integer, got {limit!r}")
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        since_ms = None if since is None else query_time(since, "since")
        for impl in self.host.impls("get_audit_logs"):
            result = impl(action=action, since=since_ms, limit=limit)
            if result is not None:
                return result
        raise PluginError("no installed plugin keeps an audit trail: enable security.audit "
                          "(pip install 'vibekit-telemetry[audit]')")

    def create_batcher(self, batch_size: int | Mapping[str, Any] = 100, flush_interval: int = 1000,
                       max_retries: int = 3) -> Batcher:
        """A :class:`Batcher` that hands events over in batches (``flush_interval`` in ms).

        Also takes the seed's options mapping: ``create_batcher({"batchSize": 100, "flushInterval": 1000,
        "maxRetries": 3})``.
        """
        if isinstance(batch_size, Mapping):
            options = _call_options(batch_size, ("batch_size", "flush_interval", "max_retries"), "create_batcher")
            return self.create_batcher(**{"flush_interval": flush_interval, "max_retries": max_retries,
                                          "batch_size": 100, **options})
        return Batcher(self, batch_size=batch_size, flush_interval=flush_interval, max_retries=max_retries)

    def create_event_stream(self, filter: QueryFilter | Mapping[str, Any] | None = None, /, *,
                            max_pending: int = 10_000, **kwargs: Any) -> EventStream:
        """A live stream of events stored from now on that match ``filter`` (iterate or async-iterate it).

        ``filter`` may be a mapping in the seed's form (camelCase keys); ``maxPending`` in it is ``max_pending``.
        """
        if isinstance(filter, Mapping) and ({"maxPending", "max_pending"} & filter.keys()):
            filter = dict(filter)
            max_pending = filter.pop("maxPending", filter.pop("max_pending", max_pending))
        stream = EventStream(QueryFilter.build(filter, **kwargs), max_pending=max_pending, on_close=self._drop_stream)
        with self._lock:
            self._streams.append(stream)
            if self._live_interval is None:
                # a live subscriber wants events promptly: flush at least every LIVE_FLUSH_INTERVAL while one listens
                self._live_interval = self._pipeline.flush_interval
                self._pipeline.flush_interval = min(self._live_interval, LIVE_FLUSH_INTERVAL)
        self._emit("stream:open", stream)
        return stream

    def storage_plugin(self, type_name: str | None = None) -> Any:
        """The plugin object of the primary store (the first configured), or of the first store of that type
        (``"postgres"``); ``None`` when there is none.  For plugins that keep their tables beside the events."""
        for name in self.storage_plugins:
            plugin = self.host.pm.get_plugin(name)
            if type_name is None or getattr(plugin, "name", name) == type_name or name == type_name:
                return plugin
        return None

    @property
    def live_stream_count(self) -> int:
        """How many live event streams are open (a storage plugin that hears of other processes' events listens
        only while there are some)."""
        return len(self._streams)

    def decode_stored(self, events: list[TelemetryEvent]) -> list[TelemetryEvent]:
        """Events as a storage plugin read them, with what ``before_store`` plugins did undone (decrypted):
        what a plugin reading the store directly (the shared analytics counter) must count."""
        return self._decode("query", events) if events else events

    def offer_to_streams(self, events: list[TelemetryEvent]) -> None:
        """Hand events that *another process* stored, as read from the store, to this process's live streams
        (decoded as reads are; each stream keeps what matches its filter).  For storage plugins shared by
        several processes (PostgreSQL's LISTEN/NOTIFY): the events this process stores reach its streams on
        their own, after they are stored."""
        if not self._streams or not events:
            return
        events = self.decode_stored(events)
        for stream in list(self._streams):
            stream.offer(events)

    def _drop_stream(self, stream: EventStream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)
            if not self._streams and self._live_interval is not None:
                self._pipeline.flush_interval = self._live_interval
                self._live_interval = None

    def start_api_server(self, settings: Mapping[str, Any] | None = None, /, **options: Any) -> Any:
        """Serve this service over HTTP in the background (the ``api`` plugin) and return the server.

        ``options`` override the ``[api]`` section: ``host``, ``port`` (``0`` picks a free one),
        ``auth``, ``cors``, ``rate_limit`` ...; the seed's single mapping
        (``start_api_server({"port": 3000, "metrics": {...}})``, camelCase keys too) means the same.
        The returned server has ``url`` and ``stop()``, and stops with the service.
        """
        if settings is not None:
            if not isinstance(settings, Mapping):
                raise TypeError(f"start_api_server() takes a mapping of options or keywords, got {settings!r}")
            options = {**normalise_keys(dict(settings)), **options}
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        if not self.host.impls("start_api_server"):
            # an [api] section that is not enabled still configures this server (auth, cors...): never drop it
            section = {k: v for k, v in self.config.api.items() if k != "enabled"}
            self.require_plugin("api", start=False, options=section,
                                where=f"{' + '.join(self.loaded.sources) or 'defaults'} ([api] for start_api_server())")
        result = self.host.first("start_api_server", service=self, options=dict(options))[1]
        if result is None:
            raise PluginError("no installed plugin can start an API server; pip install 'vibekit-telemetry[api]'")
        return result

    def span_processor(self) -> Any:
        """An OpenTelemetry SDK span processor that records finished spans here, with no server in between.

        ``TracerProvider().add_span_processor(telemetry.span_processor())``: every OTel GenAI
        instrumentation (openai-v2, OpenInference, OpenLLMetry, Langfuse) then writes into this service
        through the same mapping as ``/v1/traces``.  Loads the ``opentelemetry`` plugin
        (vibekit-telemetry-otlp) on first use.
        """
        return self._otel_bridge("span_processor")

    def log_processor(self) -> Any:
        """An OpenTelemetry SDK log record processor recording log records here (as ``/v1/logs`` would).

        ``LoggerProvider().add_log_record_processor(telemetry.log_processor())``: GenAI log events that share a
        span's context enrich its session without counting its usage again.
        """
        return self._otel_bridge("log_processor")

    def _otel_bridge(self, hook: str) -> Any:
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        if not self.host.impls(hook):
            self.require_plugin("opentelemetry", where=f"{hook}()")
        result = self.host.first(hook, service=self)[1]
        if result is None:
            raise PluginError(f"no installed plugin provides an OpenTelemetry {hook.replace('_', ' ')}; "
                              "pip install vibekit-telemetry-otlp")
        return result

    def require_plugin(self, name: str, *, start: bool = True, where: str = "require_plugin()",
                       options: Mapping[str, Any] | None = None) -> None:
        """Load the installed plugin ``name`` with ``options`` (default none), unless one by that name is loaded.

        For features a command asks for (``telemetry api --dashboard``, the demo's
        analytics) that the configuration file does not list.  ``start=False``
        skips its ``startup`` hook (the api plugin's starts a server).  A missing or
        broken plugin is a ``PluginError``.
        """
        if self._closed:
            raise ServiceClosedError("the telemetry service is shut down")
        if name in self.host.meta:
            return
        targets = resolve_entry_points([name])
        self._register(name, instantiate(name, targets[name], dict(options or {}), where=where), source="entry point")
        if start:
            for impl in self.host.impls("startup"):
                if impl.plugin == name:
                    impl(service=self)

    def plugin_names(self) -> list[str]:
        """The registered plugins, in configuration order."""
        return list(self.host.order)

    def get_health_status(self) -> HealthStatus:
        """Each component's state plus memory, CPU, storage size, queue depth and event counters."""
        import psutil

        components: dict[str, dict[str, Any]] = {}
        issues: list[str] = []
        reports = dict(self.host.each("health", lambda name, exc: issues.append(f"{name}: health check failed: {exc}")))
        for name in self.host.order:
            stats = self._plugin_stats[name]
            report = dict(reports.get(name) or {})
            report.setdefault("healthy", True)
            report.setdefault("issues", [])
            report["hooks"] = self.host.hooks_of(name)
            sink = self._sinks.get(name)
            if sink is not None:
                sink_report = sink.health()
                report["issues"] = [*report["issues"], *sink_report.pop("issues")]
                report.update(sink_report)
                if sink.state != "closed":
                    report["healthy"] = False
            if name in self.storage_plugins:
                report["stored"] = stats.stored
                report["avg_write_ms"] = round(stats.write_ms_total / max(1, stats.stored), 4)
            report["failures"] = stats.failures
            if stats.last_error:
                report["last_error"] = stats.last_error
                report["last_error_at"] = stats.last_error_at
                # a store that stores again has recovered: its past failure is history, not a problem now
                recovered = sink is not None and sink.healthy
                if not recovered and stats.last_error_at and now_ms() - stats.last_error_at < 300_000:
                    report["healthy"] = False
                    report["issues"] = [*report["issues"], f"recent failure: {stats.last_error}"]
            components[name] = report
            issues.extend(f"{name}: {issue}" for issue in report["issues"])
        with self._lock:
            counters: dict[str, Any] = dict(self._counts)
            counters["accepted"] = self._accepted_now()
            drops = dict(self._drops)
        for key in ("accepted", "stored", "filtered", "rejected"):
            counters.setdefault(key, 0)
            thinned = dict(self._thinned)
        primary = next(iter(self._sinks.values()), None)
        counters["retried"] = sum(sink.stats.retried for sink in self._sinks.values())
        counters["buffered"] = primary.backlog if primary is not None else 0
        counters["spilled"] = self._pipeline.spilled
        # staged events are in the primary's journal (buffered) when it persists; otherwise still only in memory
        staged_elsewhere = 0 if primary is None or primary.policy.persist_buffer else self._pipeline.staged
        counters["queued"] = self._pipeline.depth + staged_elsewhere
        counters["dead_letters"] = primary.stats.dead_lettered if primary is not None else 0
        counters["held"] = self._thinner.held if self._thinner is not None else 0
        counters["open_sessions"] = len(self._open_sessions)
        counters["sampled_out"] = sum(thinned.values())
        counters["sampled_out_by_reason"] = thinned
        counters["dropped"] = sum(drops.values())
        counters["dropped_by_reason"] = drops
        if drops:
            issues.append(f"pipeline: {counters['dropped']} events not stored ({', '.join(f'{k}: {v}' for k, v in drops.items())})")
        if self._closed:
            issues.append("service is shut down")
        if self._process is None:
            self._process = psutil.Process()
        proc = self._process
        rss = proc.memory_info().rss
        total = psutil.virtual_memory().total
        used = sum(int(report.get("size_bytes", 0) or 0) for name, report in components.items() if name in self.storage_plugins)
        data_dir = self.data_dir if self.data_dir.exists() else Path.cwd()
        disk = shutil.disk_usage(data_dir)
        return HealthStatus(
            healthy=not issues,
            issues=issues,
            components=components,
            pipeline={
                "queue_depth": self._pipeline.depth,
                "max_queue_size": self.config.max_queue_size,
                "batch_size": self._pipeline.batch_size,
                "flush_interval_ms": int(self._pipeline.flush_interval * 1000),
                "on_full": self.config.on_full,
                "spilled": self._pipeline.spilled,
                "memory_high": self._memory_high,
                "live_streams": len(self._streams),
            },
            counters=counters,
            memory={"used": round(rss / 2**20, 2), "total": round(total / 2**20, 2), "percent": round(100 * rss / total, 3)},
            cpu={"usage": self._cpu_usage(), "cores": os.cpu_count() or 1},
            # in the seed's unit, GB (2**30, as memory's MB are 2**20), and in bytes beside them
            storage={"used": round(used / 2**30, 6), "total": round(disk.total / 2**30, 3),
                     "free": round(disk.free / 2**30, 3), "used_bytes": used, "total_bytes": disk.total,
                     "free_bytes": disk.free},
            uptime_s=round(time.monotonic() - self._started_at, 3),
            connections=self._connections(components, proc),
        )

    def _cpu_usage(self) -> float:
        """This process's CPU use in percent of one core since the previous call (since start, the first time)."""
        with self._lock:
            wall_then, cpu_then = self._cpu_sample
            wall, cpu = time.monotonic(), time.process_time()
            if wall - wall_then >= 0.05 or not self._cpu_percent:
                # a fork starts the child's CPU clock again: never a negative share
                self._cpu_percent = round(max(0.0, cpu - cpu_then) * 100 / max(wall - wall_then, 1e-6), 1)
                self._cpu_sample = (wall, cpu)
            return self._cpu_percent

    def _connections(self, components: Mapping[str, Mapping[str, Any]], proc: Any) -> dict[str, Any]:
        """The seed's ``connections``: what plugins report (``{"active", "max"}``), summed.

        A storage plugin that reports a file ``path`` but no connections is counted by the handles
        this process holds open on that file (one per SQLite connection).
        """
        by_component: dict[str, dict[str, Any]] = {}
        open_files: list[str] | None = None
        for name, report in components.items():
            reported = report.get("connections")
            if isinstance(reported, Mapping):
                by_component[name] = {"active": int(reported.get("active") or 0), "max": reported.get("max")}
            elif name in self.storage_plugins and isinstance(report.get("path"), str):
                if open_files is None:
                    try:
                        open_files = [f.path for f in proc.open_files()]
                    except Exception:  # not allowed on this platform: nothing to count
                        open_files = []
                path = os.path.realpath(report["path"])
                by_component[name] = {"active": sum(1 for f in open_files if f == path), "max": None}
        maxima = [c["max"] for c in by_component.values()]
        return {"active": sum(c["active"] for c in by_component.values()),
                "max": sum(maxima) if maxima and all(isinstance(m, int) for m in maxima) else None,
                "by_component": by_component}

    def shutdown(self, timeout: float = 10.0) -> None:
        """Write everything pending, stop plugins and streams.  Safe to call more than once."""
        with self._lock:
            if self._closed or self._shutting_down:
                return
            self._shutting_down = True
        # plugins that feed events from outside (the API server) stop first, while tracking still works
        self.host.each("before_shutdown", self._plugin_failure, service=self)
        instrumentation.uninstrument(self)  # the SDKs stop recording into a service that is going away
        with self._lock:
            self._closed = True
        self._stop_opening.set()
        for opener in self._openers:  # a store still opening must not be shut down halfway through
            opener.join(timeout)
        deadline = time.monotonic() + timeout
        for name, (impl, sink) in self._unopened.items():
            attempt = self._opening.get(name)
            if (sink.unavailable is None or not (sink.has_backlog and sink.backlog)
                    or (attempt is not None and not attempt.is_set())):
                continue  # open, nothing waiting for it, or an attempt still running (one that hangs stays alone)
            # a short-lived process that started degraded (the file locked by its neighbours) tries once more,
            # within the timeout, before leaving its events journaled for a later start: opened, the drain
            # below stores them
            finished = threading.Event()
            threading.Thread(target=self._attempt_open, args=(impl, sink, finished, {}), daemon=True,
                             name=f"vibekit-telemetry-open-{name}").start()
            finished.wait(max(0.0, deadline - time.monotonic()))
        if self._thinner is not None:
            for event in self._thinner.release_all():
                self._pipeline.put(event)
        self._pipeline.close(timeout)
        for sink in self._sinks.values():
            sink.close()
        for stream in list(self._streams):
            stream.close()
        with self._lock:
            self._plugins_shut = True
        self.host.each("shutdown", self._plugin_failure, service=self)
        _live_services.discard(self)
        self._emit("shutdown", None)

    close = shutdown

    def _after_fork(self) -> None:
        """In a forked child: new locks, an empty queue and a new flusher; plugins reopen what they hold.

        Events the parent had queued stay the parent's to write, so nothing is written twice.
        """
        self._lock = threading.Lock()
        self._counts, self._accepted, self._drops, self._thinned = Counter(), 0, Counter(), Counter()
        self._accepted_rows, self._accepted_rows_read = itertools.count(), 0
        if self._thinner is not None:
            self._thinner = Thinner(self._thinner.sampling, self._thinner.rate_limit, self._record_thinned)
        self._streams = []
        self._openers, self._opening, self._stop_opening = [], {}, threading.Event()
        for sink in self._sinks.values():
            sink.abandon()
        self._pipeline = self._pipeline.after_fork()
        unavailable: dict[str, str] = {}

        def failed(plugin: str, exc: BaseException) -> None:
            if isinstance(exc, StorageUnavailableError) and plugin in self._sinks:
                unavailable[plugin] = str(exc)  # locked right now: the child reopens in the background
            else:
                self._plugin_failure(plugin, exc)

        self.host.each("after_fork", failed, service=self)
        for sink in self._sink_list:
            reason = unavailable.get(sink.name) or sink.unavailable
            if reason is not None:
                self._reopen_in_background(sink, reason)

    def _reopen_in_background(self, sink: GuardedSink, reason: str) -> None:
        """Mark ``sink`` unavailable and have its plugin's ``startup`` retried with backoff until it opens."""
        impl = next((i for i in self.host.impls("startup") if i.plugin == sink.name), None)
        sink.mark_unavailable(reason)
        if impl is None:
            return
        done = threading.Event()
        outcome: dict[str, BaseException | None] = {"error": StorageUnavailableError(reason)}
        done.set()
        self._opening[sink.name] = done
        retrier = threading.Thread(target=self._keep_opening, args=(impl, sink, done, outcome),
                                   name=f"vibekit-telemetry-reopen-{sink.name}", daemon=True)
        self._openers.append(retrier)
        retrier.start()

    def __enter__(self) -> TelemetryService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> TelemetryService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.shutdown)


class SessionScope:
    """The object ``telemetry.session(...)`` returns; use it with ``with`` or ``async with``.

    Inside the block, ``scope.id`` is the session id, and ``stream``,
    ``error`` and ``track`` record events in the session.  Set ``scope.status``
    to end it with another status than ``completed``.
    """

    def __init__(self, service: TelemetryService, agent: str, mode: str | None, prompt: str | None,
                 metadata: Mapping[str, Any] | None, parent_session_id: str | None,
                 labels: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.labels = dict(labels or {})
        self._labels_token: contextvars.Token[dict[str, str] | None] | None = None
        self.agent = agent
        self.mode = mode
        self.prompt = prompt
        self.metadata = dict(metadata or {})
        self.parent_session_id = parent_session_id
        self.status = "completed"
        self.id: str | None = None
        self._token: contextvars.Token[str | None] | None = None
        self._ended = False

    def __enter__(self) -> SessionScope:
        self.id = self.service.track_start(self.agent, self.mode, self.prompt, metadata=self.metadata,
                                           parent_session_id=self.parent_session_id, **self.labels)
        self._token = _current_session.set(self.id)
        inherited = dict(_current_labels.get() or {})
        for key in ("conversation_id", "user_id"):
            value = self.labels.get(key) or self.metadata.get(key)
            if value:
                inherited[key] = value
        self._labels_token = _current_labels.set(inherited or None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._token is not None:
            try:
                _current_session.reset(self._token)
            except ValueError:  # left in another context than entered (a generator, another task)
                _current_session.set(self.parent_session_id)
        if self._labels_token is not None:
            try:
                _current_labels.reset(self._labels_token)
            except ValueError:
                _current_labels.set(None)
        if self._ended or self.id is None:
            return
        if exc is not None:
            self.service.track_error(self.id, exc)
            self.end("failed")
        else:
            self.end(self.status)

    async def __aenter__(self) -> SessionScope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def _require_id(self) -> str:
        if self.id is None:
            raise TelemetryError("the session has not started: use it in a with block")
        return self.id

    def stream(self, data: str, **kwargs: Any) -> str | None:
        """Record a streamed chunk of this session."""
        return self.service.track_stream(self._require_id(), data, **kwargs)

    def error(self, error: BaseException | str, **kwargs: Any) -> str | None:
        """Record an error in this session without ending it."""
        return self.service.track_error(self._require_id(), error, **kwargs)

    def track(self, **fields: Any) -> str | None:
        """Record a custom event in this session."""
        fields.setdefault("category", self.agent)
        return self.service.track(session_id=self._require_id(), **fields)

    def end(self, status: str = "completed", **kwargs: Any) -> str | None:
        """End the session now (the block will not end it again)."""
        self._ended = True
        return self.service.track_end(self._require_id(), status, **kwargs)


def _overrides_store(obj: Any) -> bool:
    """Whether ``obj``'s class defines ``store`` below the class that defines ``store_rows`` (a subclass of a
    storage plugin that changed ``store`` only): then its ``store_rows``, inherited, would go around it."""
    if isinstance(obj, (type, types.ModuleType)):
        return False
    mro = type(obj).__mro__
    where = {name: next((i for i, cls in enumerate(mro) if name in cls.__dict__), len(mro))
             for name in ("store", "store_rows")}
    return where["store"] < where["store_rows"]


def _window(time_range: Any) -> tuple[int, int]:
    """A ``time_range`` argument as ``(start, end)``; an error names ``time_range.start`` or ``time_range.end``."""
    return _time_range(time_range, names=("time_range.start", "time_range.end"))


def _check_bounds(flt: Any) -> None:
    """A filter's ``since``/``until`` must be times events can have: one past 64 bits would overflow the store."""
    for name in ("since", "until"):
        value = getattr(flt, name, None)
        if value is not None:
            check_time_range(value, name)


def _call_options(params: Mapping[str, Any], names: tuple[str, ...], call: str,
                  error: type[InvalidEventError] | type[InvalidQueryError] = InvalidQueryError,
                  aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The seed's one-mapping form of a call (camelCase or snake_case keys) as keyword arguments.

    A key the call does not take is an error naming it and the keys it takes, never ignored.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(key)).lower()
        name = (aliases or {}).get(name, name)
        if name not in names:
            raise error(str(key), f"{call}() takes no {key!r}; it takes {', '.join(names)} (or their camelCase forms)")
        out[name] = value
    return out


def _cap(value: str, max_bytes: int) -> str:
    encoded = value.encode("utf-8")
    if len(encoded) <= max_bytes:
        return value
    return encoded[:max_bytes].decode("utf-8", "ignore")


#: metadata keys that hold what was said (the GenAI mapping writes them): left out with ``capture_content = false``
CONTENT_METADATA_KEYS = frozenset({"messages", "system_prompt", "tool_calls"})


def _without_content(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata without messages and system prompt, and tool calls without their arguments."""
    out = {k: v for k, v in metadata.items() if k not in ("messages", "system_prompt")}
    calls = out.get("tool_calls")
    if isinstance(calls, list):
        out["tool_calls"] = [{k: v for k, v in call.items() if k != "arguments"} if isinstance(call, Mapping) else call
                             for call in calls]
    return out


def _too_long(value: Any, limit: int) -> bool:
    """Whether any string in ``value`` (at any depth) is longer than ``limit`` characters."""
    if type(value) is str:
        return len(value) > limit
    if isinstance(value, Mapping):
        return any(_too_long(item, limit) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_too_long(item, limit) for item in value)
    return False


def _cap_json(value: Any, max_bytes: int, cut: list[str], path: str = "metadata") -> Any:
    if isinstance(value, str):
        capped = _cap(value, max_bytes)
        if capped is not value:
            cut.append(path)
        return capped
    if isinstance(value, Mapping):
        return {k: _cap_json(v, max_bytes, cut, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_json(v, max_bytes, cut, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _reporting(events: Iterator[TelemetryEvent], progress: Callable[[int], Any], every: int = 5000) -> Iterator[TelemetryEvent]:
    """``events``, calling ``progress(count so far)`` every ``every`` events and at the end."""
    count = 0
    for event in events:
        yield event
        count += 1
        if count % every == 0:
            progress(count)
    progress(count)


def _reporting_rows(batches: Iterator[list[Any]], progress: Callable[[int], Any],
                    every: int = 5000) -> Iterator[list[Any]]:
    """``batches`` of rows, calling ``progress`` with the counts :func:`_reporting` would report for their events."""
    count = 0
    for batch in batches:
        yield batch
        before, count = count, count + len(batch)
        for reached in range((before // every + 1) * every, count + 1, every):
            progress(reached)
    progress(count)


_live_services: weakref.WeakSet[TelemetryService] = weakref.WeakSet()


def install_signal_handlers(signals: tuple[int, ...] | None = None) -> None:
    """Turn SIGTERM (or the given signals) into ``SystemExit(128 + signum)``.

    Python's default SIGTERM ends the process without running ``finally``
    blocks or ``atexit``; with this, ``with TelemetryService(...)`` blocks and
    the exit hook drain what is pending first.  Signals that already have a
    handler are left alone.  Call it from the main thread (the ``telemetry``
    CLI and the API server do).
    """
    import signal

    def exit_on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in signals if signals is not None else (signal.SIGTERM,):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, exit_on_signal)


def _after_fork_in_child() -> None:
    for service in list(_live_services):
        try:
            service._after_fork()
        except Exception:
            log.exception("resetting telemetry in a forked child failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _drain_at_exit() -> None:
    for service in list(_live_services):
        try:
            service.shutdown(timeout=5)
        except Exception:
            log.exception("draining telemetry at exit failed")
