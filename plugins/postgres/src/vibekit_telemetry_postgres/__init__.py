"""PostgreSQL storage for vibekit-telemetry: one store that many processes and hosts share.

The same read and write hooks as the SQLite store, on a database server:

- events go in with ``COPY`` into a table partitioned by time (a partition per ``partition_days``, created
  ahead of need under an advisory lock); ``clean`` drops whole partitions and deletes only the remainder;
- the ``sessions`` table is kept current with *additive* upserts: each batch is folded into per-session
  deltas (counts, tokens, first/last times) and ``INSERT ... ON CONFLICT DO UPDATE`` adds them to the stored
  row, so writers on several hosts touching one session never lose an update;
- text search reads a ``tsvector`` of the words :func:`vibekit_telemetry.search_words` finds (what SQLite's
  tokenizer indexes) through a GIN index, so ``query(text=...)`` matches what it matches on SQLite;
- a large batch is split by session over ``writers`` connections that copy at once, each part one
  transaction of its events and its sessions (PostgreSQL works on each in its own process);
- the schema comes from numbered migrations applied under an advisory lock (see ``migrations.py``).

Connections come from a ``psycopg_pool`` pool (``pool_size``, ``idle_timeout``: the seed's sqlite
``poolSize``/``idleTimeout`` mean this here).  A server that is down or restarting makes the store
*unavailable* (the kernel journals, retries and breaks the circuit); a wrong password or a missing database
is an error at start.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from vibekit_telemetry import (
    ConfigError,
    EventsRejectedError,
    QueryFilter,
    Session,
    SessionFilter,
    StorageError,
    StorageUnavailableError,
    TelemetryEvent,
    decode_cursor,
    hookimpl,
    search_words,
    summarize_sessions,
)
from vibekit_telemetry.config import redact_url
from vibekit_telemetry.sqlfilter import EVENT_EQUAL_COLUMNS, equal_and_range, session_where
from vibekit_telemetry.model import (
    MAX_NAME_LENGTH,
    ROW_FIELDS,
    SESSION_LABELS,
    SESSION_ROW_FIELDS,
    event_from_row,
    fold_session_deltas,
    session_from_row,
    session_to_row,
)

from . import migrations

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__version__ = "0.1.0"

log = logging.getLogger("vibekit_telemetry.postgres")

DSN_ENV = "TELEMETRY_POSTGRES_DSN"
DAY_MS = 86_400_000
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: a lexeme longer than this cannot be stored in a tsvector (PostgreSQL's limit is 2 KB)
_MAX_WORD_BYTES = 2046
#: a tsvector holds at most 1 MB: the distinct words past this many bytes are not indexed
_MAX_WORDS_BYTES = 900_000
#: event keys per NOTIFY payload, in bytes (PostgreSQL refuses a payload of 8000 bytes or more)
_NOTIFY_BYTES = 7_000
#: how long opening a live stream waits for the listener to LISTEN (connect and one statement)
LISTEN_READY_S = 1.0
#: how long the listener keeps listening after the last live stream closed (a subscriber reconnecting)
LISTEN_LINGER_S = 30.0
#: the fewest rows a part of a batch split over ``writers`` connections holds (below, one connection)
PART_MIN_ROWS = 500

_COLUMNS = ", ".join(ROW_FIELDS)
_COPY_EVENTS = f"COPY events ({_COLUMNS}, words) FROM STDIN"
_SELECT_EVENT = (f"SELECT {', '.join(ROW_FIELDS[:17])}, metadata::text, truncated::text FROM events")
_SESSION_COLUMNS = ", ".join(SESSION_ROW_FIELDS)
_SELECT_SESSION = f"SELECT {', '.join(c if c != 'metadata' else 'metadata::text' for c in SESSION_ROW_FIELDS)} FROM sessions"
_VALUES = ", ".join(["%s"] * len(SESSION_ROW_FIELDS))


def _label_sql(key: str) -> str:
    """A label column from the merged metadata, as :func:`vibekit_telemetry.model._label` reads it: a string
    (cut to ``MAX_NAME_LENGTH``, empty is none) or an integer written out; anything else is none."""
    m = "(s.metadata || d.metadata::jsonb)"
    return (f"{key} = CASE jsonb_typeof({m} -> '{key}') "
            f"WHEN 'string' THEN nullif(left({m} ->> '{key}', {MAX_NAME_LENGTH}), '') "
            f"WHEN 'number' THEN CASE WHEN ({m} ->> '{key}') ~ '^-?[0-9]+$' THEN {m} ->> '{key}' END END")


#: ``(name, SQL type)`` of one batch's fold of a session: the stored columns plus whether a start event
#: of the batch gave the agent and the prompt (a fold falls back to the category and to any event's prompt)
_DELTA = (("id", "text"), ("agent", "text"), ("agent_given", "bool"), ("mode", "text"), ("prompt", "text"),
          ("prompt_given", "bool"), ("status", "text"), ("parent_id", "text"), ("started_at", "bigint"),
          ("ended_at", "bigint"), ("first_event_at", "bigint"), ("last_event_at", "bigint"),
          ("first_stream_at", "bigint"), ("event_count", "bigint"), ("stream_count", "bigint"),
          ("error_count", "bigint"), ("metadata", "jsonb"), ("input_tokens", "bigint"), ("output_tokens", "bigint"),
          ("cache_read_tokens", "bigint"), ("cache_creation_tokens", "bigint"), ("reasoning_tokens", "bigint"),
          ("last_error", "text"), ("has_start", "bool"))
#: ``(name, SQL type)`` of the label columns, which a new session's row carries from its fold
_LABELS = tuple((name, "text") for name in SESSION_LABELS)
#: A session not stored yet is inserted whole: its fold over the batch is its row (in id order: two writers
#: creating the same sessions wait for each other and never deadlock); the ids that were new come back ...
_NEW_SESSIONS = (f"INSERT INTO sessions ({_SESSION_COLUMNS}) SELECT {_SESSION_COLUMNS} FROM json_to_recordset("
                 f"%s::json) AS d({', '.join(f'{n} {t}' for n, t in _DELTA + _LABELS if not n.endswith('_given'))}) "
                 "ORDER BY id ON CONFLICT (id) DO NOTHING RETURNING id")
#: ... the others, stored already (by an earlier batch or another writer), are locked in id order ...
_LOCK_SESSIONS = ("SELECT id FROM sessions WHERE id IN (SELECT json_array_elements_text(%s::json)) ORDER BY id "
                  "FOR UPDATE")
#: ... and their folds are added to the stored rows: counts and tokens add up, first times take the least,
#: last times the greatest, the latest end decides the status, metadata merges (newer keys win), a start
#: event names the agent and the prompt.  The kernel's ``merge_session_rows`` in SQL, the stored row as the prior,
#: so any number of writers can add their batches in any order and lose nothing.
_ADD_TO_SESSIONS = f"""
UPDATE sessions AS s SET
    agent = CASE WHEN d.agent_given THEN d.agent ELSE coalesce(s.agent, d.agent) END,
    prompt = CASE WHEN d.prompt_given THEN d.prompt ELSE coalesce(s.prompt, d.prompt) END,
    mode = coalesce(d.mode, s.mode),
    parent_id = coalesce(d.parent_id, s.parent_id),
    status = CASE WHEN d.ended_at IS NOT NULL AND (s.ended_at IS NULL OR d.ended_at >= s.ended_at)
                  THEN d.status ELSE s.status END,
    started_at = CASE WHEN d.has_start AND s.has_start THEN least(s.started_at, d.started_at)
                      WHEN d.has_start THEN d.started_at
                      WHEN s.has_start THEN s.started_at
                      ELSE least(s.started_at, d.started_at) END,
    ended_at = greatest(s.ended_at, d.ended_at),
    first_event_at = least(s.first_event_at, d.first_event_at),
    last_event_at = greatest(s.last_event_at, d.last_event_at),
    first_stream_at = least(s.first_stream_at, d.first_stream_at),
    event_count = s.event_count + d.event_count,
    stream_count = s.stream_count + d.stream_count,
    error_count = s.error_count + d.error_count,
    metadata = s.metadata || d.metadata::jsonb,
    input_tokens = s.input_tokens + d.input_tokens,
    output_tokens = s.output_tokens + d.output_tokens,
    cache_read_tokens = s.cache_read_tokens + d.cache_read_tokens,
    cache_creation_tokens = s.cache_creation_tokens + d.cache_creation_tokens,
    reasoning_tokens = s.reasoning_tokens + d.reasoning_tokens,
    last_error = coalesce(d.last_error, s.last_error),
    has_start = s.has_start OR d.has_start,
    {', '.join(_label_sql(k) for k in SESSION_LABELS)}
FROM json_to_recordset(%s::json) AS d({', '.join(f'{n} {t}' for n, t in _DELTA)})
WHERE s.id = d.id
"""


#: A session recomputed from its remaining events (after a delete or a rewrite) replaces the stored row.
_REPLACE_SESSION = (f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (id) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in SESSION_ROW_FIELDS[1:]))

#: a connection string safe to print: its password (URL or ``password=`` keyword) replaced by ``***``
redact_dsn = redact_url


def _dumps(value: Any) -> str:
    return orjson.dumps(value if isinstance(value, (dict, list)) else dict(value)).decode()


def tsvector_text(*texts: str | None) -> str | None:
    """The ``tsvector`` literal of the words in ``texts`` (``'word' 'other'``), or ``None`` without words."""
    given = [t for t in texts if t]
    return _tsvector(given[0] if len(given) == 1 else " ".join(given)) if given else None


def _tsvector(text: str) -> str | None:
    words = search_words(text)
    if not words:
        return None
    if len(text) <= _MAX_WORD_BYTES and (len(text) * 4 <= _MAX_WORD_BYTES or text.isascii()):
        # the common case: no word (nor all of them) can be too long.  Words are letters and digits: nothing to
        # escape; a word said twice is left for the server's tsvector input, which sorts and merges the words
        # anyway (a set here cost more than the rest of the literal)
        return "'" + "' '".join(words) + "'"
    out: list[str] = []
    size = 0
    for word in dict.fromkeys(words):
        n = len(word.encode())
        if n > _MAX_WORD_BYTES:
            continue
        size += n + 3
        if size > _MAX_WORDS_BYTES:
            break
        out.append(f"'{word}'")
    return " ".join(out) or None


def copy_row(r: tuple[Any, ...]) -> tuple[Any, ...]:
    """A kernel event row as ``COPY`` takes it: metadata and ``truncated`` as JSON text, and its words."""
    metadata, prompt, stream = r[17], r[10], r[12]
    text = (f"{prompt} {stream}" if stream else prompt) if prompt else stream
    return (*r[:17], metadata if type(metadata) is str else _dumps(metadata) if metadata else "{}",
            _dumps(list(r[18])) if r[18] else None, _tsvector(text) if text else None)


def _tsquery(text: str) -> str:
    words = search_words(text)
    if not words:
        raise StorageError(f"the text search {text!r} has no words to look for")
    return " & ".join(f"'{w}'" for w in dict.fromkeys(words))


def _sql_session_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A kernel session row with its metadata as JSON text (for ``jsonb``)."""
    return (*row[:14], _dumps(row[14] or {}), *row[15:21], bool(row[21]), *row[22:])


def _session_from_sql(row: tuple[Any, ...]) -> Session:
    return session_from_row(row, metadata_json=True)


def _event_from_sql(row: tuple[Any, ...]) -> TelemetryEvent:
    truncated = row[18]
    return event_from_row((*row[:18], tuple(orjson.loads(truncated)) if truncated else ()))


def _partition_name(start: int) -> str:
    return "events_" + time.strftime("%Y%m%d", time.gmtime(start // 1000))


#: connection pools a forked child inherited from its parent: kept referenced, never closed in the child
_inherited: list[Any] = []


class PostgresStorage:
    """The ``postgres`` storage plugin."""

    name = "postgres"

    @attrs.frozen
    class Config:
        """Options of ``storage = [{type = "postgres", options = {...}}]``.

        ``dsn`` is a libpq connection string or URL (``postgresql://user@host/db``); without it the
        ``TELEMETRY_POSTGRES_DSN`` environment variable is used.  Put a password in the environment
        (``dsn = {"$env" = "TELEMETRY_POSTGRES_DSN"}`` or a ``~/.pgpass``), not in the file; it is never
        printed.  ``schema`` keeps the tables apart from others in the same database.  ``pool_size`` caps
        the connections this process opens; ``idle_timeout`` (ms) closes connections unused that long.
        ``partition_days`` is the width of one events partition; ``partitions_ahead`` how many future
        partitions are kept created.  ``notify``/``listen``: live streams across processes (LISTEN/NOTIFY).
        ``writers``: how many connections one large batch is copied over at once (at most ``pool_size``).
        """

        dsn: str | None = None
        schema: str = "public"
        pool_size: int = 10
        idle_timeout: int | None = None
        connect_timeout_ms: int = 5000
        partition_days: int = 1
        partitions_ahead: int = 2
        #: announce every stored batch on a NOTIFY channel of the schema, so live streams of other processes
        #: (API servers on other hosts) get it; and listen there while this process has live streams
        notify: bool = True
        listen: bool = True
        #: a batch of at least ``writers * PART_MIN_ROWS`` rows is split by session into this many parts,
        #: each copied over a connection of its own and committed with its sessions (the server parses,
        #: indexes and upserts the parts in parallel processes); 1 writes every batch over one connection.
        #: Unset: 2, or 1 with ``pool_size = 1``
        writers: int | None = None

        def __attrs_post_init__(self) -> None:
            if not isinstance(self.schema, str) or not _SCHEMA_NAME.fullmatch(self.schema):
                raise ConfigError(f"schema: expected a lower-case SQL name (letters, digits, _), got {self.schema!r}")
            for key in ("pool_size", "idle_timeout", "connect_timeout_ms", "partition_days", "writers"):
                value = getattr(self, key)
                if value is not None and (not isinstance(value, int) or value < 1):
                    raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
            if not isinstance(self.partitions_ahead, int) or self.partitions_ahead < 0:
                raise ConfigError(f"partitions_ahead: expected 0 or more, got {self.partitions_ahead!r}")
            if self.writers is not None and isinstance(self.pool_size, int) and self.writers > self.pool_size:
                raise ConfigError(f"writers: {self.writers} connections per batch need pool_size >= {self.writers}, "
                                  f"got pool_size = {self.pool_size}")
            if self.dsn is not None and (not isinstance(self.dsn, str) or not self.dsn.strip()):
                raise ConfigError("dsn: expected a PostgreSQL connection string such as "
                                  "postgresql://user@host/dbname")

    def __init__(self, config: PostgresStorage.Config | None = None) -> None:
        self.config = config or PostgresStorage.Config()
        self.dsn: str | None = None
        self._pool: Any = None
        self._closed = False
        self._partitions: set[int] = set()
        self._partition_lock = threading.Lock()
        self._ahead_checked = 0.0
        self.span_ms = self.config.partition_days * DAY_MS
        #: connections a large batch is copied over at once
        self.writers = self.config.writers or min(2, self.config.pool_size)
        #: who this process is on the NOTIFY channel (its own announcements are not offered twice)
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.channel = f"vibekit_events_{self.config.schema}"
        self._service: Callable[[], TelemetryService | None] = lambda: None
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()
        #: set when a live stream opens (the listener starts at once); set by the listener while it listens
        self._wake, self._listening = threading.Event(), threading.Event()
        self.heard = 0
        #: threads copying the other parts of a batch split over ``writers`` connections (made on first use)
        self._copiers: ThreadPoolExecutor | None = None
        self._copiers_lock = threading.Lock()

    # --- opening ---------------------------------------------------------------------------------------

    @classmethod
    def open(cls, dsn: str, **options: Any) -> PostgresStorage:
        """Open (creating or upgrading the schema) outside a service, e.g. for tools and benchmarks."""
        store = cls(cls.Config(dsn=dsn, **options))
        store._open()
        return store

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry migrate --from <sqlite file> --to <dsn>``."""
        from .cli import register

        register(cli)

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Connect, migrate the schema under an advisory lock, open the pool, create the coming partitions."""
        self._open()
        self._service = weakref.ref(service)
        if self.config.listen:
            service.on("stream:open", self._on_stream_open)
        self._start_listening()

    def _conninfo(self) -> str:
        dsn = self.config.dsn or os.environ.get(DSN_ENV)
        if not dsn:
            raise ConfigError(f"storage postgres: set options.dsn (e.g. postgresql://user@host/dbname) or the "
                              f"{DSN_ENV} environment variable")
        return dsn

    def _connect_kwargs(self) -> dict[str, Any]:
        return {"connect_timeout": max(2, math.ceil(self.config.connect_timeout_ms / 1000)),
                "options": f"-c search_path={self.config.schema}", "application_name": "vibekit-telemetry"}

    def _open(self) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.dsn = self._conninfo()
        self._closed = False
        try:
            with psycopg.connect(self.dsn, autocommit=True, **self._connect_kwargs()) as conn:
                ran = migrations.apply(conn, self.config.schema)
                # the partitions' width is the schema's: another one would make partitions that overlap
                conn.execute("INSERT INTO vibekit_settings (key, value) VALUES ('partition_days', %s) "
                             "ON CONFLICT (key) DO NOTHING", [str(self.config.partition_days)])
                made = conn.execute("SELECT value FROM vibekit_settings WHERE key = 'partition_days'").fetchone()[0]
        except migrations.ForeignSchemaError as exc:
            raise StorageError(
                f"{self.where} already has tables named {exc} that vibekit-telemetry did not create; refusing to "
                "modify them: set the postgres storage `schema` option to another schema") from None
        except psycopg.Error as exc:
            raise self._explain(exc) from None
        if made != str(self.config.partition_days):
            raise ConfigError(f"partition_days: {self.where} was made with partitions of {made} day(s), not "
                              f"{self.config.partition_days}; set partition_days = {made} (or use another schema)")
        if ran:
            log.info("%s: applied migration(s) %s", self.where, ", ".join(ran))
        self._pool = self._new_pool()
        self._partitions.clear()
        self._ensure_ahead(force=True)

    def _new_pool(self) -> Any:
        """The connection pool, opening in the background.

        Connections are not checked each time they are lent (a round trip per read: get_session took 2.7x
        its SQL): a connection that broke (the server restarted) fails its first use, and then every idle
        connection is checked at once (see :meth:`_connection`), so the retry gets a working one."""
        from psycopg_pool import ConnectionPool

        idle = self.config.idle_timeout / 1000 if self.config.idle_timeout else 600.0
        pool = ConnectionPool(self.dsn, min_size=1, max_size=self.config.pool_size, max_idle=idle,
                              timeout=self.config.connect_timeout_ms / 1000, kwargs=self._connect_kwargs(),
                              open=False, name=f"vibekit-telemetry-{self.config.schema}")
        pool.open(wait=False)
        return pool

    @property
    def where(self) -> str:
        """The database and schema, without the password (for messages)."""
        return f"PostgreSQL {redact_dsn(self.dsn or '?')} (schema {self.config.schema})"

    def _explain(self, exc: BaseException) -> StorageError:
        """A psycopg error as the kernel's kind: unavailable (retry later), rejected events, or a plain error."""
        import psycopg
        from psycopg import errors
        from psycopg_pool import PoolTimeout

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, PoolTimeout):
            return StorageUnavailableError(f"{self.where}: no connection within connect_timeout_ms="
                                           f"{self.config.connect_timeout_ms} ({text})")
        if isinstance(exc, (errors.InvalidPassword, errors.InvalidAuthorizationSpecification,
                            errors.InvalidCatalogName, errors.InsufficientPrivilege)) or (
                isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
                and re.search(r"authentication failed|does not exist|no pg_hba\.conf entry|role .* is not permitted",
                              text)):
            return StorageError(f"{self.where}: {text}")
        if isinstance(exc, (errors.DiskFull, errors.OutOfMemory, errors.TooManyConnections,
                            errors.AdminShutdown, errors.CrashShutdown, errors.CannotConnectNow,
                            errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable,
                            errors.QueryCanceled)):
            return StorageUnavailableError(f"{self.where}: {text}")
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, errors.ProgramLimitExceeded)):
            return EventsRejectedError(f"PostgreSQL refused a value: {text}")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StorageUnavailableError(f"{self.where}: {text}")
        return StorageError(f"{self.where}: {text}")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection for one ``with`` block (committed at its end), errors explained."""
        import psycopg
        from psycopg_pool import PoolTimeout

        pool = self._pool
        if pool is None or self._closed:
            raise StorageUnavailableError("the postgres storage is not open")
        try:
            with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # the server went away (or restarted): the other idle connections are likely broken too
            with contextlib.suppress(Exception):
                pool.check()
            raise self._explain(exc) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._explain(exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A pooled connection for reads, each statement on its own (autocommit): one round trip a read, not
        ``BEGIN``, the statement and ``COMMIT``.  Under READ COMMITTED each statement had a snapshot of its
        own anyway, so what a read sees is unchanged."""
        import psycopg

        with self._connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                # the pool lends it to writers next, whose blocks are transactions: one that cannot be set
                # back (not idle) is closed, and the pool replaces it
                try:
                    conn.autocommit = False
                except psycopg.Error:
                    conn.close()

    def connection(self) -> contextlib.AbstractContextManager[Any]:
        """A pooled psycopg connection of the store for one ``with`` block (committed at its end; psycopg
        errors come out as the kernel's storage errors), its ``search_path`` the store's schema.

        For plugins that keep their own tables beside the events when the store is PostgreSQL (the audit
        trail, the analytics rollups): ``service.storage_plugin("postgres")`` finds the store."""
        return self._connection()

    # --- partitions --------------------------------------------------------------------------------------

    def _start_of(self, ts: int) -> int:
        return ts - ts % self.span_ms

    def _ensure_partitions(self, starts: set[int]) -> None:
        """Create the partitions starting at ``starts`` that do not exist yet (under an advisory lock)."""
        with self._partition_lock:
            missing = sorted(starts - self._partitions)
            if not missing:
                return
            with self._connection() as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [migrations.PARTITION_LOCK])
                    for start in missing:
                        conn.execute(f"CREATE TABLE IF NOT EXISTS {_partition_name(start)} PARTITION OF events "
                                     f"FOR VALUES FROM ({start}) TO ({start + self.span_ms})")
            self._partitions.update(missing)

    def _ensure_ahead(self, force: bool = False) -> None:
        """Keep the current partition and ``partitions_ahead`` more created (checked at most once a minute)."""
        now = time.time()
        if not force and now - self._ahead_checked < 60:
            return
        self._ahead_checked = now
        first = self._start_of(int(now * 1000))
        self._ensure_partitions({first + i * self.span_ms for i in range(self.config.partitions_ahead + 1)})

    def partitions(self) -> list[tuple[str, int, int]]:
        """``(name, from, to)`` of every events partition, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass").fetchall()
        out = []
        for name, bound in rows:
            values = re.findall(r"'?(-?\d+)'?", bound or "")
            if len(values) == 2:
                out.append((name, int(values[0]), int(values[1])))
        return sorted(out, key=lambda p: p[1])

    # --- writing -----------------------------------------------------------------------------------------

    @hookimpl
    def store(self, events: list[TelemetryEvent]) -> None:
        """Copy a batch in and add it to its sessions in one transaction; ids already stored are skipped."""
        self.store_rows([e.to_row() for e in events])

    @hookimpl
    def store_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """:meth:`store` for the kernel's rows (``ROW_FIELDS`` order).

        A batch of at least ``writers * PART_MIN_ROWS`` rows is split by session into ``writers`` parts
        copied at once over connections of their own, each part committed with its sessions: a session's
        events are all in one part, so the parts never wait on each other's rows.  When a part fails the
        others may have committed; the kernel's retry of the batch then finds those ids stored and adds
        only what is new (as for any retried batch), so nothing counts twice."""
        if not rows:
            return
        span = self.span_ms
        starts = {r[7] - r[7] % span for r in rows}
        if not starts <= self._partitions:
            self._ensure_partitions(starts)
        self._ensure_ahead()
        ways = min(self.writers, len(rows) // PART_MIN_ROWS)
        if ways < 2:
            self._store_part(rows, starts)
            return
        parts: list[list[tuple[Any, ...]]] = [[] for _ in range(ways)]
        for r in rows:
            parts[hash(r[1]) % ways].append(r)  # by session id (within this process: the hash's seed is its own)
        # (two events of the batch with one id and time under two sessions may land in two parts and wait on each
        # other's key: PostgreSQL ends that deadlock after its deadlock_timeout, and the kernel's retry finds one
        # of them stored; as with two processes sending them)
        first, *rest = [part for part in parts if part]
        others, here = self._submit_parts(rest, starts)
        errors: list[BaseException] = []
        for part in (first, *here):
            try:
                self._store_part(part, starts)
            except Exception as exc:  # noqa: BLE001 - raised below, once the other parts are done
                errors.append(exc)
        for future in others:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            # a part the store could not take now is retried with the whole batch, which then surfaces any
            # content fault of another part on its own
            raise next((e for e in errors if isinstance(e, StorageUnavailableError)), errors[0])

    def _submit_parts(self, parts: list[list[tuple[Any, ...]]], starts: set[int]
                      ) -> tuple[list[Any], list[list[tuple[Any, ...]]]]:
        """Start copying ``parts`` on the copy threads (made on first use): their futures, and the parts no
        thread took, for the caller to copy itself.  That is every part while the interpreter exits:
        ``concurrent.futures`` stops taking work before the kernel's ``atexit`` drain writes what is queued."""
        futures: list[Any] = []
        with self._copiers_lock:
            if self._closed:  # close() shuts the threads down under this lock
                raise StorageUnavailableError("the postgres storage is not open")
            try:
                if self._copiers is None:
                    self._copiers = ThreadPoolExecutor(max_workers=max(1, self.writers - 1),
                                                       thread_name_prefix="vibekit-telemetry-postgres-copy")
                for part in parts:
                    futures.append(self._copiers.submit(self._store_part, part, starts))
            except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
                pass
        return futures, parts[len(futures):]

    def _store_part(self, rows: list[tuple[Any, ...]], starts: set[int]) -> None:
        """Copy ``rows`` in and add them to their sessions in one transaction (only the new ids, when some
        are stored already)."""
        from psycopg import errors

        sql_row = copy_row
        sql_rows: list[tuple[Any, ...]] = []
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    try:
                        with conn.transaction():
                            with conn.cursor().copy(_COPY_EVENTS) as copy:
                                # each row formatted as it goes in: the server parses the first rows while the
                                # later ones are made, and folds the sessions while the server finishes
                                sql_rows = []  # kept for the replay path below
                                keep, write = sql_rows.append, copy.write_row
                                for r in rows:
                                    row = sql_row(r)
                                    keep(row)
                                    write(row)
                                deltas = self._session_deltas(rows)
                                notes = self._notes(rows)
                            self._add_to_sessions(conn, deltas)
                            self._notify(conn, notes)
                    except errors.UniqueViolation:
                        # some ids are stored already (a retried batch, a replayed journal): only the new ones
                        if len(sql_rows) != len(rows):  # refused before every row was written
                            sql_rows = [copy_row(r) for r in rows]
                        with conn.transaction():
                            fresh = self._insert_new(conn, rows, sql_rows)
                            self._add_to_sessions(conn, self._session_deltas(fresh))
                            self._notify(conn, self._notes(fresh))
                return
            except StorageError as exc:
                cause = exc.__cause__
                if attempt == 1 and isinstance(cause, errors.CheckViolation) and "partition" in str(cause):
                    # another process dropped a partition this one believed existed (retention): make it again
                    self._partitions.clear()
                    self._ensure_partitions(starts)
                    continue
                raise

    @staticmethod
    def _insert_new(conn: Any, rows: list[tuple[Any, ...]], sql_rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Insert the rows whose ids are not stored yet (through a staging table); return those rows."""
        conn.execute(f"CREATE TEMP TABLE events_in ON COMMIT DROP AS SELECT {_COLUMNS}, words FROM events "
                     "WITH NO DATA")
        with conn.cursor().copy(f"COPY events_in ({_COLUMNS}, words) FROM STDIN") as copy:
            for row in sql_rows:
                copy.write_row(row)
        inserted = {(r[0], r[1]) for r in conn.execute(
            f"INSERT INTO events ({_COLUMNS}, words) SELECT {_COLUMNS}, words FROM events_in "
            "ON CONFLICT (id, timestamp) DO NOTHING RETURNING id, timestamp")}
        fresh = []
        for row in rows:
            key = (row[0], row[7])  # an event is its id and its time (the table's key)
            if key in inserted:
                inserted.discard(key)
                fresh.append(row)
        return fresh

    @staticmethod
    def _session_deltas(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """The batch folded into one record per session (in id order): its row as if new, plus whether a
        start event of the batch gave the agent and the prompt (a fold falls back to the category and to any
        event's prompt, which a stored session's own values must then outrank)."""
        records = []
        deltas = fold_session_deltas(rows)
        for sid in sorted(deltas):
            row, agent_given, prompt_given = deltas[sid]
            record = dict(zip(SESSION_ROW_FIELDS, row, strict=True))
            record["metadata"] = record["metadata"] or {}
            record["has_start"] = bool(record["has_start"])
            record["agent_given"], record["prompt_given"] = agent_given, prompt_given
            records.append(record)
        return records

    @staticmethod
    def _add_to_sessions(conn: Any, records: list[dict[str, Any]]) -> None:
        """Insert the batch's new sessions whole and add the others' folds to their stored rows."""
        pending = records
        for _ in range(10):
            if not pending:
                return
            # one JSON document for the whole batch (orjson, in C): psycopg dumps Python arrays value by value;
            # read as json, not jsonb, so the server parses it once and builds no binary document first
            new = {sid for (sid,) in conn.execute(_NEW_SESSIONS, [orjson.dumps(pending).decode()])}
            stored = [r for r in pending if r["id"] not in new]
            if not stored:
                return
            locked = {sid for (sid,) in conn.execute(_LOCK_SESSIONS, [orjson.dumps([r["id"] for r in stored]).decode()])}
            if locked:
                conn.execute(_ADD_TO_SESSIONS, [orjson.dumps([r for r in stored if r["id"] in locked]).decode()])
            # a session deleted between the two (a delete or rewrite dropping it) is inserted whole next round
            pending = [r for r in stored if r["id"] not in locked]
        raise StorageUnavailableError("sessions kept changing under this batch (created and deleted by other "
                                      "writers); the batch is retried")

    def _notes(self, rows: list[tuple[Any, ...]]) -> str | None:
        """The NOTIFY payloads announcing the batch's event keys (under PostgreSQL's 8000 bytes each), as one
        JSON array, or ``None`` when this store does not announce."""
        if not self.config.notify or not rows:
            return None
        payloads: list[str] = []
        keys: list[list[Any]] = []
        size = 0
        for r in rows:
            n = len(r[0].encode()) + 20
            if keys and size + n > _NOTIFY_BYTES:
                payloads.append(orjson.dumps({"o": self.origin, "k": keys}).decode())
                keys, size = [], 0
            keys.append([r[7], r[0]])
            size += n
        payloads.append(orjson.dumps({"o": self.origin, "k": keys}).decode())
        return orjson.dumps(payloads).decode()

    def _notify(self, conn: Any, notes: str | None) -> None:
        """Send :meth:`_notes` on the schema's channel; delivered when (and only if) the transaction commits."""
        if notes is not None:
            conn.execute("SELECT pg_notify(%s, p) FROM json_array_elements_text(%s::json) AS p",
                         [self.channel, notes])

    def _start_listening(self) -> None:
        if not self.config.listen or self._listener is not None:
            return
        self._stop_listening.clear()
        self._listener = threading.Thread(target=self._listen, name="vibekit-telemetry-postgres-listen", daemon=True)
        self._listener.start()

    def _on_stream_open(self, stream: Any) -> None:
        """A live stream opened in this process: have the listener LISTEN now, and wait (up to
        ``LISTEN_READY_S``) until it does, so what other processes store from then on reaches the stream."""
        if self._closed or not self.config.listen:
            return
        self._wake.set()
        if not self._listening.wait(LISTEN_READY_S):
            log.warning("%s: not listening for other processes' events yet; a new live stream may miss what they "
                        "store until it is", self.where)

    def _listen(self) -> None:
        """While this process has live streams (and for ``LISTEN_LINGER_S`` after the last one closed, as a
        reconnecting subscriber comes back): LISTEN on the channel and offer them what others stored."""
        import psycopg

        conn = None
        idle_since = None
        while not self._stop_listening.is_set():
            service = self._service()
            if service is None or service.live_stream_count == 0 or self._closed:
                now = time.monotonic()
                idle_since = idle_since or now
                if conn is not None and (self._closed or now - idle_since >= LISTEN_LINGER_S):
                    self._listening.clear()
                    # a stream that opened since the check found the listener set: it is kept listening for
                    if service is not None and service.live_stream_count and not self._closed:
                        self._listening.set()
                        idle_since = None
                        continue
                    conn.close()
                    conn = None
                if conn is None:
                    service = None
                    self._wake.wait(0.2)  # a stream opening wakes this at once
                    self._wake.clear()
                    continue
            else:
                idle_since = None
            try:
                if conn is None:
                    conn = psycopg.connect(self._conninfo(), autocommit=True, **self._connect_kwargs())
                    conn.execute(f"LISTEN {self.channel}")
                    self._listening.set()
                keys: list[list[Any]] = []
                for note in conn.notifies(timeout=0.2):
                    message = orjson.loads(note.payload)
                    if message.get("o") != self.origin:
                        keys.extend(message["k"])
                    if len(keys) >= 10_000:
                        break
                if keys and service is not None and service.live_stream_count:  # lingering: heard, not fetched
                    events = self._fetch(keys)
                    self.heard += len(events)
                    service.offer_to_streams(events)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any one failure
                log.warning("%s: listening for other processes' events failed (%s: %s); retrying", self.where,
                            type(exc).__name__, exc)
                self._listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                self._stop_listening.wait(1.0)
            finally:
                service = None
        self._listening.clear()
        if conn is not None:
            conn.close()

    def _fetch(self, keys: list[list[Any]]) -> list[TelemetryEvent]:
        """The events of these ``[timestamp, id]`` keys, in time order."""
        with self._reading() as conn:
            return [_event_from_sql(r) for r in conn.execute(
                f"{_SELECT_EVENT} WHERE (id, timestamp) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])) "
                "ORDER BY timestamp, seq", [[k[1] for k in keys], [k[0] for k in keys]])]

    @hookimpl
    def idle(self) -> None:
        """Keep the coming partitions created."""
        if self._pool is not None and not self._closed:
            self._ensure_ahead()

    def _refold_sessions(self, conn: Any, session_ids: set[str]) -> None:
        """Recompute these sessions from the events they still have (their rows locked first); drop empty ones."""
        ids = sorted(session_ids)
        if not ids:
            return
        conn.execute("SELECT id FROM sessions WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
        for sid in ids:
            remaining = [_event_from_sql(r) for r in conn.execute(
                f"{_SELECT_EVENT} WHERE session_id = %s ORDER BY timestamp, seq", [sid])]
            if remaining:
                conn.execute(_REPLACE_SESSION, _sql_session_row(session_to_row(summarize_sessions(remaining, {})[sid])))
            else:
                conn.execute("DELETE FROM sessions WHERE id = %s", [sid])

    @hookimpl
    def rewrite(self, events: list[TelemetryEvent]) -> int:
        """Replace the text fields and metadata of stored events (by id), their words with them, and
        recompute their sessions, in one transaction."""
        found = 0
        with self._connection() as conn, conn.transaction():
            for event in events:
                row = event.to_row()
                done = conn.execute(
                    "UPDATE events SET prompt = %s, stream_data = %s, label = %s, error_message = %s, "
                    "error_stack = %s, metadata = %s, words = %s WHERE id = %s AND timestamp = %s",
                    [event.prompt, event.stream_data, event.label, event.error_message, event.error_stack,
                     _dumps(row[17] or {}), tsvector_text(event.prompt, event.stream_data), event.id,
                     event.timestamp])
                found += done.rowcount
            self._refold_sessions(conn, {e.session_id for e in events if e.session_id})
        return found

    @hookimpl
    def delete(self, event_ids: list[str]) -> int:
        """Delete events by id and refold or drop their sessions."""
        if not event_ids:
            return 0
        with self._connection() as conn, conn.transaction():
            gone = conn.execute("DELETE FROM events WHERE id = ANY(%s) RETURNING session_id",
                                [list(event_ids)]).fetchall()
            self._refold_sessions(conn, {r[0] for r in gone if r[0]})
        return len(gone)

    @hookimpl
    def clean(self, before: int) -> int:
        """Drop the partitions wholly before ``before``, delete the older rows of the one it falls in, and the
        sessions whose last event is before it."""
        deleted = 0
        with self._partition_lock:
            for name, _start, end in self.partitions():
                if end > before:
                    break
                with self._connection() as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [migrations.PARTITION_LOCK])
                    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]
                    if exists:  # another process may have dropped it meanwhile
                        deleted += conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                        conn.execute(f"DROP TABLE {name}")
            self._partitions.clear()
        with self._connection() as conn, conn.transaction():
            deleted += conn.execute("DELETE FROM events WHERE timestamp < %s", [before]).rowcount
            conn.execute("DELETE FROM sessions WHERE started_at < %s AND coalesce(last_event_at, started_at) < %s",
                         [before, before])
        self._ensure_ahead(force=True)
        return deleted

    @hookimpl
    def optimize(self) -> None:
        """Refresh the planner's statistics."""
        with self._connection() as conn:
            conn.execute("ANALYZE events")
            conn.execute("ANALYZE sessions")

    # --- reading -----------------------------------------------------------------------------------------

    @hookimpl
    def query(self, filter: QueryFilter) -> list[TelemetryEvent]:
        """Matching events via parameterized SQL."""
        with self._reading() as conn:
            sql, params = self._event_sql(conn, filter)
            return [_event_from_sql(r) for r in conn.execute(sql, params)]

    @hookimpl
    def scan(self, filter: QueryFilter) -> Iterator[TelemetryEvent] | None:
        """Every matching event through a server-side cursor on a connection of its own (exports)."""
        if filter.limit is not None or filter.offset or filter.cursor or filter.text:
            return None
        return self._scan(filter)

    def _scan(self, filter: QueryFilter) -> Iterator[TelemetryEvent]:
        import psycopg

        try:
            with psycopg.connect(self._conninfo(), **self._connect_kwargs()) as conn:
                sql, params = self._event_sql(conn, filter)
                with conn.cursor(name="vibekit_scan") as cur:
                    cur.itersize = 2000
                    cur.execute(sql, params)
                    while rows := cur.fetchmany(2000):
                        yield from map(_event_from_sql, rows)
        except psycopg.Error as exc:
            raise self._explain(exc) from exc

    def _event_sql(self, conn: Any, f: QueryFilter) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        equal_and_range(f, EVENT_EQUAL_COLUMNS, "timestamp", where, params, "%s")
        if f.session_ids:
            where.append("session_id = ANY(%s)")
            params.append(list(f.session_ids))
        for key, value in f.metadata.items():
            where.append("metadata -> %s = %s::jsonb")
            params.extend([str(key), orjson.dumps(value, default=str).decode()])
        if f.text:
            where.append("words @@ %s::tsquery")
            params.append(_tsquery(f.text))
        direction = "DESC" if f.order == "desc" else "ASC"
        if f.cursor:
            ts, event_id = decode_cursor(f.cursor)
            row = conn.execute("SELECT seq FROM events WHERE id = %s AND timestamp = %s", [event_id, ts]).fetchone()
            op = "<" if f.order == "desc" else ">"
            if row is not None:
                where.append(f"(timestamp, seq) {op} (%s, %s)")
                params.extend([ts, row[0]])
            else:
                where.append(f"timestamp {op} %s")
                params.append(ts)
        sql = _SELECT_EVENT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY timestamp {direction}, seq {direction}"
        if f.limit is not None or f.offset:
            sql += " LIMIT %s OFFSET %s"
            params.extend([f.limit, f.offset])
        return sql, params

    def count(self, filter: QueryFilter | None = None) -> int:
        """How many events match (all of them without a filter)."""
        f = attrs.evolve(filter or QueryFilter(), limit=None, offset=0)
        with self._reading() as conn:
            sql, params = self._event_sql(conn, f)
            inner = sql.replace(_SELECT_EVENT, "SELECT 1 FROM events", 1)
            return conn.execute(f"SELECT count(*) FROM ({inner}) AS matching", params).fetchone()[0]

    @hookimpl
    def get_session(self, session_id: str) -> Session | None:
        """The session row with this id."""
        with self._reading() as conn:
            row = conn.execute(f"{_SELECT_SESSION} WHERE id = %s", [session_id]).fetchone()
        return _session_from_sql(row) if row else None

    @hookimpl
    def get_sessions(self, filter: SessionFilter) -> list[Session]:
        """Matching sessions in the filter's order."""
        where, params = _session_where(filter)
        direction = "DESC" if filter.order == "desc" else "ASC"
        nulls = "NULLS LAST" if filter.order == "desc" else "NULLS FIRST"  # as SessionFilter.sort_key has it
        column = _SESSION_SORT_SQL[filter.sort]
        order = f"started_at {direction} {nulls}, id {direction}"
        if column != "started_at":
            order = f"{column} {direction} {nulls}, {order}"
        sql = (f"{_SELECT_SESSION}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order} "
               "LIMIT %s OFFSET %s")
        with self._reading() as conn:
            return [_session_from_sql(r) for r in conn.execute(sql, [*params, filter.limit, filter.offset])]

    @hookimpl
    def count_sessions(self, filter: SessionFilter) -> int:
        """How many sessions match (limit and offset aside)."""
        where, params = _session_where(filter)
        sql = "SELECT count(*) FROM sessions" + (" WHERE " + " AND ".join(where) if where else "")
        with self._reading() as conn:
            return conn.execute(sql, params).fetchone()[0]

    @hookimpl
    def health(self) -> dict[str, Any]:
        """The server's version, the schema's migrations, partitions and the pool's connections."""
        if self._pool is None or self._closed:
            return {"healthy": False, "issues": ["not open"]}
        report: dict[str, Any] = {"healthy": True, "issues": [], "dsn": redact_dsn(self.dsn or ""),
                                  "schema": self.config.schema, "writers": self.writers}
        try:
            with self._reading() as conn:
                report["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
                report["migrations"] = migrations.applied(conn, self.config.schema)
                report["size_bytes"] = conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
                    [self.config.schema]).fetchone()[0]
            report["partitions"] = len(self.partitions())
        except StorageError as exc:
            report["healthy"] = False
            report["issues"] = [str(exc)]
        stats = self._pool.get_stats()
        report["connections"] = {"active": stats.get("pool_size", 0), "idle": stats.get("pool_available", 0),
                                 "max": self.config.pool_size, "waiting": stats.get("requests_waiting", 0)}
        return report

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Close the pool."""
        self.close()

    @hookimpl
    def after_fork(self, service: TelemetryService) -> None:
        """In a forked child: leave the parent's connections alone (closing them would end the parent's
        sessions on the server) and open a pool of its own."""
        if self._pool is not None:
            _inherited.append(self._pool)
            self._pool = None
        self._partition_lock = threading.Lock()
        # the parent's copy threads are not in this process (the executor would wait on them forever)
        self._copiers, self._copiers_lock = None, threading.Lock()
        if not self._closed and self.dsn is not None:
            self._pool = self._new_pool()
            self._listener = None  # the parent's thread is not in this process
            self._wake, self._listening = threading.Event(), threading.Event()
            self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._start_listening()

    def close(self) -> None:
        """Stop listening and close every connection of the pool."""
        self._closed = True
        self._stop_listening.set()
        listener, self._listener = self._listener, None
        if listener is not None and listener is not threading.current_thread():
            listener.join(5)
        with self._copiers_lock:
            copiers, self._copiers = self._copiers, None
        if copiers is not None:
            copiers.shutdown(wait=True)  # parts on the copy threads finish (or fail) before the pool closes
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.config.connect_timeout_ms / 1000)


#: ``SessionFilter.sort`` names as SQL over the sessions table (fixed strings, never user text).
_SESSION_SORT_SQL = {
    "started_at": "started_at", "ended_at": "ended_at", "duration_ms": "(ended_at - started_at)",
    "ttft_ms": "(first_stream_at - started_at)", "event_count": "event_count", "error_count": "error_count",
    "tokens": "(input_tokens + output_tokens)", "agent": "agent", "status": "status",
}


def _session_where(filter: SessionFilter) -> tuple[list[str], list[Any]]:
    return session_where(filter, mark="%s", contains="strpos(lower(prompt), lower(%s)) > 0")
