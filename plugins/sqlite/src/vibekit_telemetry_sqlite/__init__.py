"""SQLite storage for vibekit-telemetry, the embedded default.

One file holds events (with full-text search over prompts and streamed text)
and a sessions table kept current as events arrive.  sqlite-utils owns the
schema and its numbered migrations; the hot path writes with ``executemany``
on the same connection inside one ``BEGIN IMMEDIATE`` transaction per batch, so
several processes can write the same file (WAL mode, busy timeout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
from vibekit_telemetry.model import (
    ROW_FIELDS,
    SESSION_ROW_FIELDS,
    fold_session_rows,
    merge_session_rows,
    session_from_row,
    session_to_row,
)
from vibekit_telemetry.sqlfilter import EVENT_EQUAL_COLUMNS, equal_and_range, session_where

from .schema import APPLICATION_ID, EVENT_COLUMNS, MIGRATION_SET, SESSION_COLUMNS
from .writer import WriterProcess

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

__version__ = "0.1.0"

log = logging.getLogger("vibekit_telemetry.sqlite")

SQLITE_HEADER = b"SQLite format 3\x00"

if EVENT_COLUMNS != ROW_FIELDS or SESSION_COLUMNS != SESSION_ROW_FIELDS:  # the hot path hands rows over as they are
    raise ImportError("vibekit_telemetry_sqlite: the columns no longer match the kernel's row fields")

_INSERT_EVENT = f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
_UPSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))}) "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in SESSION_COLUMNS[1:])}"
)
#: After deleting the newest events: ``seq`` has no AUTOINCREMENT, so new rows reuse their numbers, and the text
#: index must not believe it already covers them (they would never be indexed).
_FORGET_DELETED_TAIL = (
    "UPDATE fts_state SET indexed_seq = (SELECT coalesce(max(seq), 0) FROM events) "
    "WHERE id = 1 AND indexed_seq > (SELECT coalesce(max(seq), 0) FROM events)"
)
_SELECT_EVENT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
_SELECT_SESSION = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions"
_GET_SESSION = f"{_SELECT_SESSION} WHERE id = ?"
_IN_CHUNK = 500
#: Above this many full-text matches, a text query walks events in time order instead of sorting the matches.
_FEW_MATCHES = 2_000
#: Rows added to the full-text index per idle step (a few tens of milliseconds of work).
FTS_CHUNK = 5_000


def _dumps(value: Any) -> str:
    return orjson.dumps(value if isinstance(value, (dict, list)) else dict(value)).decode()


def event_row(event: TelemetryEvent) -> tuple[Any, ...]:
    """The ``events`` row of an event, in :data:`EVENT_COLUMNS` order (metadata as JSON text)."""
    return _sql_row(event.to_row())


def _sql_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A kernel row (``ROW_FIELDS`` order, the columns' order) with its metadata and truncated list as JSON."""
    metadata, truncated = row[17], row[18]
    return (*row[:17], metadata if type(metadata) is str else _dumps(metadata) if metadata else "{}",
            _dumps(list(truncated)) if truncated else None)


def sql_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Kernel rows as ``events`` rows: :func:`_sql_row` over a batch, inline (it runs once per stored event).

    Flat metadata arrives as its JSON text from the ingest queue and is written as it is.
    """
    dumps = _dumps
    return [(*r[:17], r[17] if type(r[17]) is str else dumps(r[17]) if r[17] else "{}",
             dumps(list(r[18])) if r[18] else None) for r in rows]


def _event_from_row(row: tuple[Any, ...]) -> TelemetryEvent:
    # Unpacking into a dict display is twice as fast as dict(zip(...)), and this runs once per row read.
    (id_, session_id, event_type, category, action, label, value, timestamp, agent, mode, prompt, parent,
     stream_data, status, error_type, error_message, error_stack, metadata, truncated) = row
    return TelemetryEvent.restore({
        "id": id_, "session_id": session_id, "event_type": event_type, "category": category, "action": action,
        "label": label, "value": value, "timestamp": timestamp, "agent": agent, "mode": mode, "prompt": prompt,
        "parent_session_id": parent, "stream_data": stream_data, "status": status, "error_type": error_type,
        "error_message": error_message, "error_stack": error_stack,
        "metadata": orjson.loads(metadata) if metadata and metadata != "{}" else {},
        "truncated": tuple(orjson.loads(truncated)) if truncated else (),
    })


def _session_row(s: Session) -> tuple[Any, ...]:
    return _sql_session_row(session_to_row(s))


def _sql_session_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A kernel session row (``SESSION_ROW_FIELDS``, the columns' order) with its metadata as JSON."""
    return (*row[:14], _dumps(row[14]), *row[15:21], int(row[21]), *row[22:])


def _kernel_session_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A ``sessions`` row with its metadata parsed: what :func:`fold_session_rows` folds into."""
    metadata = row[14]
    return (*row[:14], orjson.loads(metadata) if metadata else {}, *row[15:])


def _session_from_row(row: tuple[Any, ...]) -> Session:
    return session_from_row(row, metadata_json=True)


class _Reading:
    """``with store._reader() as conn``: a read connection of the pool, given back at the end of the block.

    A read inside a read on the same thread (a query plans with a lookup first) gets the connection the
    outer one holds.  A class rather than a generator context manager: every read goes through it, and this
    costs a third of what the generator did.
    """

    __slots__ = ("_store", "_conn")

    def __init__(self, store: SQLiteStorage) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        held = getattr(store._local, "conn", None)
        if held is not None:
            return held
        conn = self._conn = store._local.conn = store._checkout()
        return conn

    def __exit__(self, *exc: object) -> None:
        conn = self._conn
        if conn is not None:
            store = self._store
            store._local.conn = None
            store._checkin(conn)


def _backlog(conn: sqlite3.Connection) -> int:
    """How many stored rows the full-text index has not covered yet, read on ``conn``."""
    done, newest = conn.execute(
        "SELECT indexed_seq, (SELECT coalesce(max(seq), 0) FROM events) FROM fts_state WHERE id = 1").fetchone()
    return max(0, newest - done)


def fts_query(text: str) -> str:
    """A user's search words as an FTS5 query: every word must appear; FTS syntax is only text.

    Words are :func:`vibekit_telemetry.search_words` (what SQLite's unicode61
    tokenizer indexes), lower-cased so ``AND``/``OR``/``NOT``/``NEAR`` are never operators.
    """
    words = search_words(text)
    if not words:
        raise StorageError(f"the text search {text!r} has no words to look for")
    return " ".join(words)


_CODES = {11: "corrupt", 26: "corrupt", 5: "locked", 6: "locked", 8: "readonly", 13: "full", 14: "cantopen",
          18: "content", 19: "content", 20: "content", 25: "content"}

#: connections a forked child inherited from its parent: kept referenced so they are never closed in the child
_inherited: list[Any] = []


def _kind(exc: sqlite3.Error) -> str | None:
    """What went wrong, by SQLite's primary result code (or the message, for errors raised without one)."""
    kind = _CODES.get((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF)
    if kind is None and isinstance(exc, (sqlite3.InterfaceError, sqlite3.DataError, sqlite3.IntegrityError)):
        kind = "content"  # a value that cannot be bound or violates a constraint: the events', not the file's
    if kind is None and isinstance(exc, sqlite3.DatabaseError):
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            kind = "corrupt"
        elif "database is locked" in text:
            kind = "locked"
    return kind


class SQLiteStorage:
    """The ``sqlite`` storage plugin."""

    name = "sqlite"

    @attrs.frozen
    class Config:
        """Options of ``storage = [{type = "sqlite", options = {...}}]``.

        ``path`` defaults to ``telemetry.db`` in the service's ``data_dir``.
        ``max_page_count`` caps the file's size in pages (SQLite's pragma): a quota
        past which writes fail as "disk full" and nothing stored is harmed.

        One file has one writer connection (SQLite lets one transaction write at a
        time); reads go through a pool of read-only connections, which in WAL mode
        read side by side and never wait for the writer.  ``pool_size`` (the seed's
        ``poolSize``) caps the read connections open at once: a read past it waits
        for one to be free (up to ``busy_timeout_ms``, then the storage reports
        itself unavailable).  ``idle_timeout`` (the seed's ``idleTimeout``, ms)
        closes a read connection that nobody used for that long, releasing its
        page cache (``cache_size_kb`` each).  By default at most 32 read
        connections are open (one per thread reading at the same time) and they
        stay open.  Health reports ``connections`` as the seed does: the writer
        and the open readers, of at most ``1 + pool_size``.
        """

        path: str | None = None
        busy_timeout_ms: int = 5000
        journal_mode: Literal["wal", "delete", "truncate"] = "wal"
        synchronous: Literal["off", "normal", "full"] = "normal"
        cache_size_kb: int = 16_384
        max_page_count: int | None = None
        #: ``quick``: ``PRAGMA quick_check`` when the file is opened, refusing a corrupt file before anything is
        #: written to it (about 1 s per GB, off the application's thread: see docs/reliability.md); ``off``: trust it
        integrity_check: Literal["quick", "off"] = "quick"
        pool_size: int = 32
        idle_timeout: int | None = None
        #: ``thread``: batches are written on the service's flusher thread; ``process``: by a child process that
        #: owns the write connection, so SQLite runs on another core than the application (see ``writer.py``)
        writer: Literal["thread", "process"] = "thread"

        def __attrs_post_init__(self) -> None:
            for key in ("pool_size", "idle_timeout"):
                value = getattr(self, key)
                if value is not None and value < 1:
                    raise ConfigError(f"{key}: expected a positive integer (or leave it out), got {value!r}")

    def __init__(self, config: SQLiteStorage.Config | None = None) -> None:
        self.config = config or SQLiteStorage.Config()
        self.path: Path | None = None
        self._writer: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._closed = False
        #: with ``writer = "process"``: the child that stores the batches
        self._process: WriterProcess | None = None
        self._new_pool()

    def _new_pool(self) -> None:
        #: the connection a thread holds while it reads (nested reads on that thread reuse it)
        self._local = threading.local()
        #: every open read connection, in use or not (after a fork they must stay referenced: see _inherited)
        self._readers: list[sqlite3.Connection] = []
        #: read connections nobody holds, with when they were last given back, most recent last
        self._idle: list[tuple[sqlite3.Connection, float]] = []
        self._pool = threading.Condition(threading.Lock())
        self.pool_waits = 0
        self.idle_closed = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> SQLiteStorage:
        """Open (creating or upgrading) a telemetry database outside a service, e.g. for tools and benchmarks."""
        store = cls(cls.Config(path=str(path), **options))
        store._open(Path(path))
        return store

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Open the database file, refusing files that are not telemetry databases, and migrate it."""
        self._open(Path(self.config.path) if self.config.path else service.data_dir / "telemetry.db")

    def _open(self, path: Path, *, integrity: bool = True, patience_ms: int | None = None) -> None:
        """Open (and create or migrate) the file; ``patience_ms`` bounds the wait for another process's lock."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory for the database {path}: {exc.strerror}") from None
        self._check_file(path)
        # Two processes opening one new file at once can make SQLite answer "locked" at once, without waiting
        # (it refuses to wait where waiting could deadlock, e.g. both switching the file to WAL), so the whole
        # opening is retried with jitter until busy_timeout_ms has passed.
        patience = self.config.busy_timeout_ms if patience_ms is None else patience_ms
        deadline = time.monotonic() + patience / 1000
        delay = 0.005
        while True:
            conn = None
            try:
                conn = self._connect()
                if patience_ms is not None:
                    conn.execute(f"PRAGMA busy_timeout={int(patience_ms)}")
                self._check_foreign(conn)
                if integrity:
                    self._check_integrity(conn)
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != self.config.journal_mode.lower():
                    conn.execute(f"PRAGMA journal_mode={self.config.journal_mode}")
                from . import migrations  # sqlite-utils is only needed to create or upgrade the schema

                ran = migrations.apply(conn)
                if patience_ms is not None:
                    conn.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_ms)}")
                break
            except StorageError:
                if conn is not None:
                    conn.close()
                raise
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                if _kind(exc) != "locked" or time.monotonic() + delay > deadline:
                    raise self._explain(exc) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)
        if ran:
            log.info("database %s: applied %d migration(s)", path, ran)
        self._writer = conn
        if self.config.writer == "process" and self._process is None:
            self._process = WriterProcess(path, attrs.asdict(self.config))
            self._process.start()  # it opens the file while the service starts

    def _check_file(self, path: Path) -> None:
        if not path.exists() or path.stat().st_size == 0:
            if path.exists() and not os.access(path, os.W_OK):
                raise StorageError(f"the database {path} is not writable")
            if not os.access(path.parent, os.W_OK):
                raise StorageError(f"cannot create the database {path}: the directory is not writable")
            return
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise StorageError(
                f"{path} is not a SQLite database (it starts with {header[:8]!r}); "
                "refusing to overwrite it: point the sqlite storage `path` option at another file"
            )

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse a database that belongs to another application: anything in its schema, a user_version or an
        application_id that is not ours.  Only an empty file, or one our migrations made, is adopted."""
        objects = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if not objects and not user_version and application_id in (0, APPLICATION_ID):
            return
        ours = application_id == APPLICATION_ID
        if not ours and ("table", "_sqlite_migrations") in objects:
            ours = conn.execute(
                "SELECT 1 FROM _sqlite_migrations WHERE migration_set = ? LIMIT 1", [MIGRATION_SET]
            ).fetchone() is not None
        if not ours:
            found = [f"{kind} {name}" for kind, name in sorted(objects)[:8]]
            if user_version:
                found.append(f"user_version {user_version}")
            if application_id:
                found.append(f"application_id {application_id}")
            raise StorageError(
                f"{self.path} is a SQLite database but not a vibekit-telemetry one ({', '.join(found)}); "
                "refusing to modify it: point the sqlite storage `path` option at another file"
            )

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` before the first write: a corrupt file is refused while it is still untouched."""
        if self.config.integrity_check == "off":
            return
        if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            return  # a new, empty file
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StorageError(
                f"the database {self.path} is corrupt (quick_check: {'; '.join(problems)[:500]}); it was not "
                "modified: move it aside (or restore a backup) and start again, or recover what is readable "
                f"with `sqlite3 {self.path} .recover`"
            )

    def _explain(self, exc: sqlite3.Error) -> StorageError:
        text = str(exc)
        kind = _kind(exc)
        if kind == "corrupt":
            return StorageError(f"the database {self.path} is corrupt ({text}); it was not modified: "
                                "move it aside (or restore a backup) and start again")
        if kind == "locked":
            return StorageUnavailableError(f"the database {self.path} is locked by another process ({text}) "
                                           f"for longer than busy_timeout_ms={self.config.busy_timeout_ms}")
        if kind == "content":
            return EventsRejectedError(f"SQLite refused a value: {text}")
        # the store is there but cannot take writes now: space may be freed, the disk remounted, the file restored
        if kind == "readonly":
            return StorageUnavailableError(f"the database {self.path} is read-only ({text})")
        if kind == "full":
            return StorageUnavailableError(f"the disk holding {self.path} is full ({text}); events already stored "
                                           "are intact")
        if kind == "cantopen":
            return StorageUnavailableError(f"cannot open the database {self.path} ({text})")
        return StorageError(f"the database {self.path}: {text}")

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        assert self.path is not None
        conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous={self.config.synchronous}")
        conn.execute(f"PRAGMA cache_size=-{int(self.config.cache_size_kb)}")
        conn.execute("PRAGMA temp_store=memory")
        if self.config.max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count={int(self.config.max_page_count)}")
        if read_only:
            conn.execute("PRAGMA query_only=1")
        return conn

    def _reader(self) -> _Reading:
        """A read-only connection from the pool for the duration of a ``with`` block."""
        return _Reading(self)

    def _checkout(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.config.busy_timeout_ms / 1000
        with self._pool:
            while True:
                if self._closed or self.path is None:
                    raise StorageError("the sqlite storage is closed")
                self._close_idle(time.monotonic())
                if self._idle:
                    return self._idle.pop()[0]
                if self.config.pool_size is None or len(self._readers) < self.config.pool_size:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageUnavailableError(
                        f"all {self.config.pool_size} read connections (pool_size) of {self.path} were busy for "
                        f"longer than busy_timeout_ms={self.config.busy_timeout_ms}")
                self.pool_waits += 1
                self._pool.wait(left)
            conn = self._connect(read_only=True)
            self._readers.append(conn)
            return conn

    def _checkin(self, conn: sqlite3.Connection) -> None:
        with self._pool:
            if self._closed:
                self._drop_reader(conn)
            else:
                self._idle.append((conn, time.monotonic()))
                self._close_idle(time.monotonic())
            self._pool.notify()

    def _close_idle(self, now: float) -> None:
        """Close the read connections unused for ``idle_timeout`` ms (called with the pool's lock held)."""
        if self.config.idle_timeout is None:
            return
        cutoff = now - self.config.idle_timeout / 1000
        while self._idle and self._idle[0][1] <= cutoff:
            self._drop_reader(self._idle.pop(0)[0])
            self.idle_closed += 1

    def _drop_reader(self, conn: sqlite3.Connection) -> None:
        self._readers.remove(conn)
        conn.close()

    @property
    def read_connections(self) -> tuple[int, int]:
        """``(open, in use)`` read connections."""
        with self._pool:
            return len(self._readers), len(self._readers) - len(self._idle)

    @hookimpl
    def store(self, events: list[TelemetryEvent]) -> None:
        """Insert a batch and update its sessions in one transaction; ids already stored are skipped."""
        self.store_rows([e.to_row() for e in events])

    @hookimpl
    def store_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """:meth:`store` for the kernel's rows (``ROW_FIELDS`` order, which is the columns' order)."""
        if self._writer is None:
            raise StorageUnavailableError("the sqlite storage is not open")
        if self._process is not None:
            self._process.store(rows)
            return
        self.store_sql_parts((sql_rows(rows),))

    def store_sql_parts(self, parts: Iterable[list[tuple[Any, ...]]],
                        deltas: Callable[[], Mapping[str, tuple[Any, ...]] | None] | None = None) -> None:
        """Store a batch given as parts of SQL rows (:func:`sql_rows`) in one transaction, each part inserted
        as it comes (the writer process hands them over as they arrive), then its sessions; ids already
        stored are skipped.  A part that fails to arrive (the iterable raises) rolls the whole batch back.

        ``deltas``, asked once every part is in: the batch's sessions folded already
        (:func:`~vibekit_telemetry.model.fold_session_deltas`, the writer process's parent does it while this
        inserts), merged here into the stored rows.  Used only when every row was new; otherwise the new ones
        are folded here."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageUnavailableError("the sqlite storage is not open")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    received: list[tuple[Any, ...]] = []
                    inserted = 0
                    for part in parts:
                        inserted += conn.executemany(_INSERT_EVENT, part).rowcount
                        received += part
                    fresh = received
                    if inserted != len(received):
                        # Some ids were already stored (a retried batch, a replayed journal): redo with only the new ones.
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                        fresh = self._unseen(conn, received)
                        conn.executemany(_INSERT_EVENT, fresh)
                    self._update_sessions(conn, fresh, deltas() if deltas is not None and fresh is received else None)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._explain(exc) from exc

    def _index_text(self, limit: int | None) -> int:
        """Add up to ``limit`` (all if ``None``) stored rows to the full-text index; return how many rows it covered."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageError("the sqlite storage is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                done, newest = conn.execute(
                    "SELECT indexed_seq, (SELECT coalesce(max(seq), 0) FROM events) FROM fts_state WHERE id = 1"
                ).fetchone()
                upto = newest if limit is None else min(newest, done + limit)
                if upto > done:
                    conn.execute(
                        "INSERT INTO events_fts (rowid, prompt, stream_data) SELECT seq, prompt, stream_data FROM events "
                        "WHERE seq > ? AND seq <= ? AND (prompt IS NOT NULL OR stream_data IS NOT NULL)", [done, upto])
                    conn.execute("UPDATE fts_state SET indexed_seq = ? WHERE id = 1", [upto])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return max(0, upto - done)

    def text_index_backlog(self) -> int:
        """How many stored rows the full-text index has not covered yet."""
        with self._reader() as conn:
            return _backlog(conn)

    def catch_up_text_index(self) -> int:
        """Index every stored row now (text queries call this, so they always see every stored event)."""
        return self._index_text(None) if self.text_index_backlog() else 0

    @hookimpl
    def idle(self) -> None:
        """Extend the full-text index by one chunk while nothing waits to be written; close idle readers."""
        if self.config.idle_timeout is not None:
            with self._pool:
                self._close_idle(time.monotonic())
        with self._write_lock:
            # asked on the writer: a read connection here would keep one reader alive past idle_timeout forever
            conn = self._writer
            behind = conn is not None and bool(_backlog(conn))
        if behind:
            self._index_text(FTS_CHUNK)

    def _unseen(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        ids = [r[0] for r in rows]
        known: set[str] = set()
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            known.update(r[0] for r in conn.execute(
                f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
        fresh = []
        for row in rows:
            if row[0] not in known:
                known.add(row[0])
                fresh.append(row)
        return fresh

    @contextlib.contextmanager
    def _maintenance(self) -> Iterator[sqlite3.Connection]:
        """The writer inside one immediate transaction (rolled back, and explained, on an error)."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageError("the sqlite storage is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._explain(exc) from exc

    @staticmethod
    def _refold_sessions(conn: sqlite3.Connection, session_ids: set[str]) -> None:
        """Recompute these sessions from the events they still have; drop the ones left empty."""
        for sid in session_ids:
            remaining = [_event_from_row(r) for r in conn.execute(
                f"{_SELECT_EVENT} WHERE session_id = ? ORDER BY timestamp, seq", [sid])]
            if remaining:
                conn.execute(_UPSERT_SESSION, _session_row(summarize_sessions(remaining, {})[sid]))
            else:
                conn.execute("DELETE FROM sessions WHERE id = ?", [sid])

    @hookimpl
    def rewrite(self, events: list[TelemetryEvent]) -> int:
        """Replace the text fields and metadata of stored events (by id), keep the text index right, and
        recompute their sessions from their stored events, in one transaction."""
        columns = ("prompt", "stream_data", "label", "error_message", "error_stack", "metadata")
        positions = [EVENT_COLUMNS.index(c) for c in columns]
        found = 0
        with self._maintenance() as conn:
            indexed = conn.execute("SELECT indexed_seq FROM fts_state WHERE id = 1").fetchone()[0]
            for event in events:
                old = conn.execute("SELECT seq, prompt, stream_data FROM events WHERE id = ?", [event.id]).fetchone()
                if old is None:
                    continue
                seq, old_prompt, old_stream = old
                in_index = seq <= indexed
                if in_index and (old_prompt is not None or old_stream is not None):
                    conn.execute("INSERT INTO events_fts (events_fts, rowid, prompt, stream_data) "
                                 "VALUES ('delete', ?, ?, ?)", [seq, old_prompt, old_stream])
                row = event_row(event)
                conn.execute(f"UPDATE events SET {', '.join(f'{c} = ?' for c in columns)} WHERE seq = ?",
                             [*(row[i] for i in positions), seq])
                if in_index and (event.prompt is not None or event.stream_data is not None):
                    conn.execute("INSERT INTO events_fts (rowid, prompt, stream_data) VALUES (?, ?, ?)",
                                 [seq, event.prompt, event.stream_data])
                found += 1
            self._refold_sessions(conn, {e.session_id for e in events if e.session_id})
        return found

    @hookimpl
    def delete(self, event_ids: list[str]) -> int:
        """Delete events by id (their text index entries go with them) and refold or drop their sessions."""
        deleted = 0
        with self._maintenance() as conn:
            sids: set[str] = set()
            for start in range(0, len(event_ids), _IN_CHUNK):
                chunk = event_ids[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sids.update(r[0] for r in conn.execute(
                    f"SELECT DISTINCT session_id FROM events WHERE id IN ({marks}) AND session_id IS NOT NULL", chunk))
                deleted += conn.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk).rowcount
            conn.execute(_FORGET_DELETED_TAIL)
            self._refold_sessions(conn, sids)
        return deleted

    def _update_sessions(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                         deltas: Mapping[str, tuple[Any, ...]] | None = None) -> None:
        """Fold the batch's rows into their sessions: the stored rows read, folded as rows (or the batch's
        ``deltas`` merged into them), upserted."""
        sids = list(deltas) if deltas is not None else list({r[1] for r in rows if r[1]})
        if not sids:
            return
        existing: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(sids), _IN_CHUNK):
            chunk = sids[start : start + _IN_CHUNK]
            for row in conn.execute(f"{_SELECT_SESSION} WHERE id IN ({', '.join('?' * len(chunk))})", chunk):
                existing[row[0]] = _kernel_session_row(row)
        folded = merge_session_rows(deltas, existing) if deltas is not None else fold_session_rows(rows, existing)
        conn.executemany(_UPSERT_SESSION, [_sql_session_row(r) for r in folded.values()])

    @hookimpl
    def query(self, filter: QueryFilter) -> list[TelemetryEvent]:
        """Matching events via indexed, fully parameterized SQL."""
        try:
            if filter.text:
                self.catch_up_text_index()
            with self._reader() as conn:
                sql, params = self._event_sql(filter)
                return [_event_from_row(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    @hookimpl
    def scan(self, filter: QueryFilter) -> Iterator[TelemetryEvent] | None:
        """Every matching event through one cursor on a connection of its own (exports), in chunks."""
        if filter.limit is not None or filter.offset or filter.cursor or filter.text:
            return None
        sql, params = self._event_sql(filter)
        return self._scan(sql, params)

    @hookimpl
    def scan_rows(self, filter: QueryFilter, columns: tuple[str, ...]) -> Iterator[list[tuple[Any, ...]]] | None:
        """Every matching event as batches of row tuples of ``columns``, for exports (see ``export_rows.py``)."""
        from .export_rows import scan_rows

        return scan_rows(self, filter, columns)

    def _scan(self, sql: str, params: list[Any]) -> Iterator[TelemetryEvent]:
        conn = self._connect(read_only=True)  # a long read must not hold the thread's shared reader
        try:
            cursor = conn.execute(sql, params)
            while rows := cursor.fetchmany(2000):
                yield from map(_event_from_row, rows)
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc
        finally:
            conn.close()

    def _event_sql(self, f: QueryFilter) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        equal_and_range(f, EVENT_EQUAL_COLUMNS, "timestamp", where, params)
        if f.session_ids:
            where.append(f"session_id IN ({', '.join('?' * len(f.session_ids))})")
            params.extend(f.session_ids)
        for key, value in f.metadata.items():
            where.append("EXISTS (SELECT 1 FROM json_each(events.metadata) WHERE json_each.key = ? AND "
                         "json_each.value IS ?)")
            params.append(str(key))
            params.append(_json_each_value(value))
        if f.text:
            match = fts_query(f.text)
            # Few matches: look them up by rowid and sort them. Many: first try reading the page from the index
            # in row order, proved to be the page in time order (search.text_page; ``_text_fast_path = False``
            # turns it off, for benchmarks); failing that, walk the events in time order and keep the matching
            # ones (the unary + stops SQLite from choosing the first plan), which stops at the limit instead of
            # sorting every match. SQLite cannot tell the cases apart; the match count can.
            from .search import text_page

            with self._reader() as conn:
                many = conn.execute(
                    "SELECT count(*) > ? FROM (SELECT 1 FROM events_fts WHERE events_fts MATCH ? LIMIT ?)",
                    [_FEW_MATCHES, match, _FEW_MATCHES + 1]).fetchone()[0]
                page = (text_page(conn, f, match, where, params)
                        if many and getattr(self, "_text_fast_path", True) else None)
            if page is not None:
                # every event of the page was checked against the whole filter: only the order and the slice remain
                where[:] = ["seq IN (SELECT value FROM json_each(?))"]
                params[:] = [orjson.dumps(page).decode()]
            else:
                where.append(f"{'+' if many else ''}seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
                params.append(match)
        direction = "DESC" if f.order == "desc" else "ASC"
        if f.cursor:
            ts, event_id = decode_cursor(f.cursor)
            with self._reader() as conn:
                row = conn.execute("SELECT seq FROM events WHERE id = ?", [event_id]).fetchone()
            op = "<" if f.order == "desc" else ">"
            if row is not None:
                where.append(f"(timestamp {op} ? OR (timestamp = ? AND seq {op} ?))")
                params.extend([ts, ts, row[0]])
            else:
                where.append(f"timestamp {op} ?")
                params.append(ts)
        sql = _SELECT_EVENT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY timestamp {direction}, seq {direction}"
        if f.limit is not None or f.offset:
            sql += " LIMIT ? OFFSET ?"
            params.extend([-1 if f.limit is None else f.limit, f.offset])
        return sql, params

    def count(self, filter: QueryFilter | None = None) -> int:
        """How many events match (all of them without a filter)."""
        f = filter or QueryFilter()
        sql, params = self._event_sql(attrs.evolve(f, limit=None, offset=0))
        inner = sql.replace(_SELECT_EVENT, "SELECT 1 FROM events", 1)
        with self._reader() as conn:
            return conn.execute(f"SELECT count(*) FROM ({inner})", params).fetchone()[0]

    @hookimpl
    def get_session(self, session_id: str) -> Session | None:
        """The session row with this id."""
        with self._reader() as conn:
            row = conn.execute(_GET_SESSION, (session_id,)).fetchone()
        return _session_from_row(row) if row else None

    @hookimpl
    def get_sessions(self, filter: SessionFilter) -> list[Session]:
        """Matching sessions in the filter's order."""
        sql, params = session_page_sql(filter)
        try:
            with self._reader() as conn:
                return [_session_from_row(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    @hookimpl
    def count_sessions(self, filter: SessionFilter) -> int:
        """How many sessions match (limit and offset aside)."""
        where, params = session_where(filter)
        sql = "SELECT count(*) FROM sessions" + (" WHERE " + " AND ".join(where) if where else "")
        try:
            with self._reader() as conn:
                return conn.execute(sql, params).fetchone()[0]
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    @hookimpl
    def clean(self, before: int) -> int:
        """Delete events before ``before`` and sessions whose last event is before it, in short transactions."""
        deleted = 0
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageUnavailableError("the sqlite storage is not open")
            while True:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE timestamp < ? LIMIT 5000)", [before])
                conn.execute(_FORGET_DELETED_TAIL)
                conn.execute("COMMIT")
                deleted += cur.rowcount
                if cur.rowcount < 5000:
                    break
            conn.execute("DELETE FROM sessions WHERE started_at < ? AND coalesce(last_event_at, started_at) < ?",
                         [before, before])
        return deleted

    @hookimpl
    def optimize(self) -> None:
        """Merge the full-text index, refresh planner statistics, checkpoint the WAL, and vacuum when much is free."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageUnavailableError("the sqlite storage is not open")
            conn.execute("INSERT INTO events_fts(events_fts) VALUES ('optimize')")
            conn.execute("ANALYZE")
            conn.execute("PRAGMA optimize")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            free, total = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_count"))
            if total and free / total > 0.25:
                conn.execute("VACUUM")

    @hookimpl
    def health(self) -> dict[str, Any]:
        """File sizes, journal mode, schema version and full-text index backlog (read on a reader connection)."""
        if self.path is None or self._writer is None:
            return {"healthy": False, "issues": ["not open"]}
        from . import migrations

        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        report: dict[str, Any] = {"healthy": True, "issues": [], "path": str(self.path), "size_bytes": size}
        try:
            with self._reader() as reader:
                report["journal_mode"] = reader.execute("PRAGMA journal_mode").fetchone()[0]
                report["migrations"] = migrations.applied(reader)
                report["text_index_backlog"] = self.text_index_backlog()
        except sqlite3.Error as exc:
            report["healthy"] = False
            report["issues"] = [str(self._explain(exc))]
        opened, busy = self.read_connections
        report["read_connections"] = {"open": opened, "in_use": busy, "max": self.config.pool_size,
                                      "waits": self.pool_waits, "closed_idle": self.idle_closed}
        report["connections"] = {"active": opened + (1 if self._writer is not None else 0),
                                 "max": 1 + self.config.pool_size}
        return report

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Close every connection."""
        self.close()

    @hookimpl
    def after_fork(self, service: TelemetryService) -> None:
        """In a forked child: leave the parent's connections alone (closing them here could release the
        parent's locks) and open new ones."""
        _inherited.extend([self._writer, *self._readers])
        self._writer = None
        if self._process is not None:
            # the parent's writer process stays the parent's; this child gets its own on its first batch
            _inherited.append(self._process)
            self._process = WriterProcess(self._process.path, self._process.options)
        self._write_lock = threading.Lock()
        self._new_pool()  # the parent's pool lock may have been held by a thread the child does not have
        if self.path is not None and not self._closed:
            # The parent checked the file; a fork handler must not wait on another process's lock either.
            # StorageUnavailableError tells the kernel to reopen in the background.
            self._open(self.path, integrity=False, patience_ms=0)

    def close(self) -> None:
        """Close the writer and the idle read connections; those in use close when their read ends."""
        self._closed = True
        if self._process is not None:
            self._process.close(self.config.busy_timeout_ms / 1000 + 10)
            self._process = None
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with self._pool:
            for conn, _ in self._idle:
                self._drop_reader(conn)
            self._idle.clear()
            self._pool.notify_all()


#: ``SessionFilter.sort`` names as SQL over the sessions table (fixed strings, never user text).
_SESSION_SORT_SQL = {
    "started_at": "started_at", "ended_at": "ended_at", "duration_ms": "ended_at - started_at",
    "ttft_ms": "first_stream_at - started_at", "event_count": "event_count", "error_count": "error_count",
    "tokens": "coalesce(input_tokens, 0) + coalesce(output_tokens, 0)", "agent": "agent", "status": "status",
}


def session_page_sql(filter: SessionFilter) -> tuple[str, list[Any]]:
    """The SQL (and parameters) of one page of sessions in the filter's order.

    By start time the ``sessions_started`` index gives the order.  By any other
    column SQLite must sort every match; sorting only the keys and row ids, then
    reading the page's rows (a deferred join), is about three times faster than
    sorting whole rows, whose prompts and metadata make them wide.  NULLs sort
    first ascending and last descending, as ``SessionFilter.sort_key`` has it.
    """
    where, params = session_where(filter)
    direction = "DESC" if filter.order == "desc" else "ASC"
    condition = " WHERE " + " AND ".join(where) if where else ""
    params.extend([-1 if filter.limit is None else filter.limit, filter.offset])
    column = _SESSION_SORT_SQL[filter.sort]
    if column == "started_at":
        return f"{_SELECT_SESSION}{condition} ORDER BY started_at {direction}, id {direction} LIMIT ? OFFSET ?", params
    keys = f"page.sort_key {direction}, page.start {direction}, page.sid {direction}"
    return (f"{_SELECT_SESSION} JOIN (SELECT rowid AS row_id, {column} AS sort_key, started_at AS start, id AS sid "
            f"FROM sessions{condition} ORDER BY {keys.replace('page.', '')} LIMIT ? OFFSET ?) AS page "
            f"ON sessions.rowid = page.row_id ORDER BY {keys}"), params


def _json_each_value(value: Any) -> Any:
    """The SQL value ``json_each`` yields for a JSON value (booleans are 1/0, containers are JSON text)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return _dumps(value)
    return value
