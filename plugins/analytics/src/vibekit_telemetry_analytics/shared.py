"""Rollups shared by every process of a PostgreSQL store: one counter per cluster, everyone reads its buckets.

With a SQLite store each process counts what it stores into its own rollup file.  Processes sharing a
PostgreSQL store (app processes on several hosts, API servers behind a load balancer) would each see a part,
and app processes without analytics none at all.  So here one process of the cluster, elected by a
PostgreSQL advisory lock held on a connection of its own, **counts the store itself**: it follows the events
table in ``seq`` order from a watermark and folds what it reads into the rollups, then writes the changed
buckets, the sessions still open and the new watermark **in one transaction**.  Every stored event is counted
once, whichever process stored it; a leader that dies leaves the last committed state, and the process that
takes the lock over goes on from its watermark.  The others read the buckets from PostgreSQL (refreshed
at most once a second).  Only the leader runs the continuous anomaly detectors, so an anomaly is alerted once.

``seq`` comes from a sequence, assigned before commit: a batch that commits after a later one leaves a gap
below rows already counted.  Rows above a gap are remembered as counted (ranges, in the same transaction) and
the gap is read again at each step until it fills; a gap still empty after ``GAP_S`` (a batch rolled back,
the dedupe path's first attempt) is given up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from vibekit_telemetry import StorageError

from .rollup import HOUR, Agg, Bucket, OpenSession, Rollups

if TYPE_CHECKING:
    from . import AnalyticsPlugin

log = logging.getLogger("vibekit_telemetry.analytics")

#: advisory lock keys, one pair per schema (two stores in one database each elect a counter of their own):
#: the counter's election, and the tables' creation and resets
LEADER_LOCK = "hashtextextended('vibekit_telemetry_analytics_leader:' || current_schema(), 0)"
MIGRATE_LOCK = "hashtextextended('vibekit_telemetry_analytics_tables:' || current_schema(), 0)"
#: seconds a gap in ``seq`` is waited for before it is taken as a batch that never committed
GAP_S = 30.0
#: events read and counted per step
STEP = 5000
#: seconds between two refreshes of a follower's buckets
REFRESH_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS analytics_buckets (
    level text NOT NULL, bucket bigint NOT NULL, dim_kind text NOT NULL, dim text NOT NULL, data jsonb NOT NULL,
    PRIMARY KEY (level, bucket, dim_kind, dim));
CREATE TABLE IF NOT EXISTS analytics_open_sessions (id text PRIMARY KEY, data jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS analytics_definitions (name text PRIMARY KEY, type text, unit text, description text);
CREATE TABLE IF NOT EXISTS analytics_state (id int PRIMARY KEY, watermark bigint NOT NULL, counted jsonb NOT NULL,
    gap_since double precision, counted_events bigint NOT NULL DEFAULT 0);
ALTER TABLE analytics_state ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0;
INSERT INTO analytics_state (id, watermark, counted) VALUES (1, 0, '[]') ON CONFLICT DO NOTHING;
"""


def _event_columns() -> str:
    from vibekit_telemetry.model import ROW_FIELDS

    return ", ".join([*ROW_FIELDS[:17], "metadata::text", "truncated::text"])


class _Reload(Exception):
    """The state row changed under this counter (a reset, another counter): reload, count nothing now."""


class SharedRollups:
    """The rollups of a PostgreSQL store (``store`` a ``PostgresStorage``) for ``plugin``."""

    def __init__(self, store: Any, plugin: AnalyticsPlugin) -> None:
        self.store = store
        self.plugin = plugin
        self.leader = False
        self._lock_conn: Any = None
        self._refreshed = 0.0
        self.watermark = 0
        #: ``[first, last]`` ranges of seq above the watermark already counted
        self.counted: list[list[int]] = []
        self.gap_since: float | None = None
        self.counted_events = 0
        #: bumped by a reset (``telemetry analytics rebuild``): a counter that sees another reloads
        self.generation = 0
        #: the rollups or buckets could not be read lately: figures are as of the last read that worked
        self.stale: str | None = None
        self.closed = False
        #: one step at a time in this process (the flusher's idle and a caller waiting for the catch-up)
        self._step_lock = threading.Lock()
        self._select = f"SELECT seq, {_event_columns()} FROM events"
        with store.connection() as conn, conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
            conn.execute(_SCHEMA)

    # --- leadership ------------------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Take the counter's lock if nobody holds it (and load the cluster's state); whether this process leads."""
        with self._step_lock:
            return self._try_lead()

    def _try_lead(self) -> bool:
        if self.closed:
            return False
        if self.leader:
            if self._lock_conn is not None and not self._lock_conn.closed:
                return True
            self._resign()
        import psycopg

        try:
            if self._lock_conn is None or self._lock_conn.closed:
                self._lock_conn = psycopg.connect(self.store._conninfo(), autocommit=True,
                                                  **self.store._connect_kwargs())
            got = self._lock_conn.execute(f"SELECT pg_try_advisory_lock({LEADER_LOCK})").fetchone()[0]
            if got:
                self.load()  # the cluster's state first: counting starts from what was committed
        except (psycopg.Error, StorageError) as exc:
            log.debug("analytics: cannot take the counter's lock or read its state: %s", exc)
            self._resign()
            return False
        if got:
            self.leader = True
            log.info("analytics: this process counts the rollups of %s", self.store.where)
        return self.leader

    def _resign(self) -> None:
        self.leader = False
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()  # the session's advisory lock goes with it
            except Exception:  # noqa: BLE001 - a broken connection is already closed for the server
                pass

    def close(self) -> None:
        """Give the lead up for good (another process takes it over at its next step)."""
        self.closed = True
        with self._step_lock:
            self._resign()

    def after_fork(self) -> None:
        """In a forked child: the parent's lock connection and lead stay the parent's; fresh locks here."""
        self._lock_conn = None
        self.leader = False
        self._step_lock = threading.Lock()
        self._refreshed = 0.0

    # --- reading ---------------------------------------------------------------------------------------

    def load(self) -> None:
        """Replace the plugin's rollups with the cluster's (kept buckets, open sessions, definitions)."""
        plugin = self.plugin
        now = int(time.time() * 1000)
        rollups = plugin._new_rollups()
        with self.store.connection() as conn, conn.transaction():
            # one snapshot: the buckets and the watermark of the same commit
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = conn.execute(
                "SELECT level, bucket, dim_kind, dim, data::text FROM analytics_buckets "
                "WHERE (level = 'm' AND bucket >= %s) OR (level = 'h' AND bucket >= %s)",
                [now - plugin._minute_keep, now - plugin._hour_keep]).fetchall()
            sessions = conn.execute("SELECT id, data::text FROM analytics_open_sessions").fetchall()
            definitions = conn.execute("SELECT name, type, unit, description FROM analytics_definitions").fetchall()
            state = conn.execute("SELECT watermark, counted::text, gap_since, counted_events, generation "
                                 "FROM analytics_state WHERE id = 1").fetchone()
        for level, bucket, dim_kind, dim, data in rows:
            by_dim = rollups.levels[level].get(bucket)
            if by_dim is None:
                by_dim = rollups.levels[level][bucket] = Bucket()
            by_dim[(dim_kind, dim)] = Agg.from_json(orjson.loads(data))
        for sid, data in sessions:
            rollups.open[sid] = OpenSession.from_json(orjson.loads(data))
        plugin.rollups = rollups
        plugin.definitions = {name: {"type": kind, "unit": unit, "description": description}
                              for name, kind, unit, description in definitions}
        self.watermark, counted, self.gap_since, self.counted_events, self.generation = state
        self.counted = orjson.loads(counted)
        self._refreshed = time.monotonic()
        self.stale = None

    def refresh(self) -> None:
        """A follower's view: the cluster's buckets, at most :data:`REFRESH_S` old."""
        if not self.leader and time.monotonic() - self._refreshed >= REFRESH_S:
            try:
                self.load()
            except StorageError as exc:  # answer from the last buckets read, and say so in health
                self.stale = str(exc)
                self._refreshed = time.monotonic()

    def lag(self) -> int:
        """Stored events the rollups have not counted yet (an estimate from ``seq``)."""
        with self.store.connection() as conn:
            newest = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        done = self.counted[-1][1] if self.counted else self.watermark
        return max(0, newest - max(done, self.watermark))

    # --- counting (the leader) -------------------------------------------------------------------------

    def step(self) -> int:
        """Count up to :data:`STEP` events the rollups have not seen; return how many were counted."""
        with self._step_lock:
            if not self.leader or self.closed:
                return 0
            return self._step()

    def _step(self) -> int:
        import psycopg

        from vibekit_telemetry.model import event_from_row

        plugin = self.plugin
        # On the connection that holds the counter's lock: if it died (and another process took the lock
        # over), this step cannot commit, so two counters never both write.
        conn = self._lock_conn
        dirty: set[tuple[str, int]] = set()
        try:
            with conn.transaction():
                # the state row, locked: a reset (or another counter) since this one loaded means reload
                state = conn.execute("SELECT watermark, generation FROM analytics_state WHERE id = 1 FOR UPDATE"
                                     ).fetchone()
                if tuple(state) != (self.watermark, self.generation):
                    raise _Reload()
                top = self.counted[-1][1] if self.counted else self.watermark
                where = ["seq > %s"]
                params: list[Any] = [top]
                for first, last in self._gaps():
                    where.append("seq BETWEEN %s AND %s")
                    params.extend([first, last])
                rows = conn.execute(f"{self._select} WHERE {' OR '.join(where)} ORDER BY seq LIMIT %s",
                                    [*params, STEP]).fetchall()
                events = []
                for r in rows:
                    truncated = r[19]
                    events.append(event_from_row((*r[1:19], tuple(orjson.loads(truncated)) if truncated else ())))
                if events and plugin.service is not None:
                    events = plugin.service.decode_stored(events)  # what before_store did (encryption) undone
                may_give_up = self._gap_closed(conn)
                with plugin._lock:
                    if events:
                        plugin.rollups.add(events, plugin._lookup_session)
                    for r in rows:
                        self._mark(r[0])
                    self._advance(may_give_up)
                    dirty = self._save(conn, len(events))
        except BaseException as exc:
            # what is counted in memory is now ahead of what was committed: the database is the truth
            if isinstance(exc, psycopg.Error):
                self._resign()
            with plugin._lock:
                plugin.rollups.dirty |= dirty
                try:
                    self.load()
                except Exception as again:  # noqa: BLE001 - the lead cannot go on from a state it could not read
                    self.stale = str(again)
                    self._resign()
            if isinstance(exc, _Reload):
                return 0
            if isinstance(exc, psycopg.Error):
                raise self.store._explain(exc) from exc
            raise
        self.counted_events += len(events)
        return len(events)

    def _gap_closed(self, conn: Any) -> bool:
        """Whether the oldest gap may be given up: waited for :data:`GAP_S`, and no transaction that began before
        it was seen is still open (one that took those seq numbers and has not committed yet)."""
        if self.gap_since is None or time.time() - self.gap_since < GAP_S:
            return False
        still_open = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND xact_start < to_timestamp(%s)", [self.gap_since]).fetchone()[0]
        if still_open:
            if time.time() - self.gap_since > 10 * GAP_S:
                log.warning("analytics: events seq %d.. have been missing for %.0f s while %d older transactions "
                            "stay open; counting waits for them", self.watermark + 1, time.time() - self.gap_since,
                            still_open)
            return False
        return True

    def _gaps(self) -> list[tuple[int, int]]:
        """The seq ranges between the watermark and the newest counted row not counted yet."""
        out = []
        low = self.watermark + 1
        for first, last in self.counted:
            if first > low:
                out.append((low, first - 1))
            low = last + 1
        return out

    def _mark(self, seq: int) -> None:
        """Remember ``seq`` as counted (rows come in seq order, gap rows before new ones)."""
        ranges = self.counted
        for i, (first, last) in enumerate(ranges):
            if first - 1 <= seq <= last + 1:
                ranges[i] = [min(first, seq), max(last, seq)]
                if i + 1 < len(ranges) and ranges[i][1] + 1 >= ranges[i + 1][0]:
                    ranges[i] = [ranges[i][0], ranges[i + 1][1]]
                    del ranges[i + 1]
                return
            if seq < first:
                ranges.insert(i, [seq, seq])
                return
        ranges.append([seq, seq])

    def _advance(self, may_give_up: bool = False) -> None:
        """Move the watermark over the counted ranges that touch it, and over a gap given up on."""
        ranges = self.counted
        while ranges:
            first, last = ranges[0]
            if first <= self.watermark + 1:
                self.watermark = max(self.watermark, last)
                ranges.pop(0)
                self.gap_since = None
                continue
            if self.gap_since is None:
                self.gap_since = time.time()
            elif may_give_up:
                log.debug("analytics: seq %d..%d never committed; counting on", self.watermark + 1, first - 1)
                self.watermark = first - 1
                self.gap_since = None
                may_give_up = False
                continue
            break

    def _save(self, conn: Any, counted: int) -> set[tuple[str, int]]:
        """Write the changed buckets, the open sessions and the watermark (in the caller's transaction); return
        the buckets written (marked changed again if the transaction does not commit)."""
        rollups = self.plugin.rollups
        messages = self.plugin._persist_messages
        dirty, rollups.dirty = rollups.dirty, set()
        for level, bucket in sorted(dirty):
            conn.execute("DELETE FROM analytics_buckets WHERE level = %s AND bucket = %s", [level, bucket])
            by_dim = rollups.levels[level].get(bucket)
            if by_dim:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO analytics_buckets (level, bucket, dim_kind, dim, data) VALUES (%s, %s, %s, %s, %s)",
                        [(level, bucket, kind, dim, orjson.dumps(agg.to_json(messages=messages)).decode())
                         for (kind, dim), agg in by_dim.items()])
        if rollups.open_dirty:
            conn.execute("DELETE FROM analytics_open_sessions")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO analytics_open_sessions (id, data) VALUES (%s, %s)",
                                [(sid, orjson.dumps(state.to_json()).decode()) for sid, state in rollups.open.items()])
            rollups.open_dirty = False
        conn.execute("UPDATE analytics_state SET watermark = %s, counted = %s, gap_since = %s, "
                     "counted_events = counted_events + %s WHERE id = 1",
                     [self.watermark, orjson.dumps(self.counted).decode(), self.gap_since, counted])
        return dirty

    # --- maintenance -----------------------------------------------------------------------------------

    def delete_before(self, level: str, cutoff: int) -> None:
        """Remove buckets of ``level`` older than ``cutoff`` (retention)."""
        with self.store.connection() as conn:
            conn.execute("DELETE FROM analytics_buckets WHERE level = %s AND bucket < %s", [level, cutoff])

    def recount_hour(self, hour: int) -> int:
        """After retention cleaning: count the hour starting at ``hour`` (the one the cut-off falls in) again from
        what the store still holds, and replace its hour and minute buckets for the cluster; return the events
        counted.

        Only the events the counter has counted already are read (``seq`` up to the watermark, or in its counted
        ranges): the rest it counts at its next steps as usual, into the new buckets.  One transaction holding
        the state row, so no step of any process runs meanwhile; the generation moves on, so the counter (in
        whichever process) reloads the cluster's buckets before its next step."""
        from vibekit_telemetry.model import event_from_row

        plugin = self.plugin
        end = hour + HOUR
        messages = plugin._persist_messages
        with self._step_lock:
            with self.store.connection() as conn, conn.transaction():
                conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
                watermark, counted = conn.execute(
                    "SELECT watermark, counted::text FROM analytics_state WHERE id = 1 FOR UPDATE").fetchone()
                seen = ["seq <= %s"]
                params: list[Any] = [watermark]
                for first, last in orjson.loads(counted):
                    seen.append("seq BETWEEN %s AND %s")
                    params.extend([first, last])
                rows = conn.execute(f"{self._select} WHERE timestamp >= %s AND timestamp < %s "
                                    f"AND ({' OR '.join(seen)}) ORDER BY seq", [hour, end, *params]).fetchall()
                events = [event_from_row((*r[1:19], tuple(orjson.loads(r[19])) if r[19] else ())) for r in rows]
                if events and plugin.service is not None:
                    events = plugin.service.decode_stored(events)
                fresh = plugin._new_rollups()
                if events:
                    fresh.add(events, plugin._lookup_session)
                conn.execute("DELETE FROM analytics_buckets WHERE (level = 'h' AND bucket = %s) "
                             "OR (level = 'm' AND bucket >= %s AND bucket < %s)", [hour, hour, end])
                out = [(level, bucket, kind, dim, orjson.dumps(agg.to_json(messages=messages)).decode())
                       for level in ("m", "h") for bucket, by_dim in fresh.levels[level].items()
                       if hour <= bucket < end for (kind, dim), agg in by_dim.items()]
                if out:
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO analytics_buckets (level, bucket, dim_kind, dim, data) "
                                        "VALUES (%s, %s, %s, %s, %s)", out)
                conn.execute("UPDATE analytics_state SET generation = generation + 1 WHERE id = 1")
            with plugin._lock:
                self.load()
        return len(events)

    def save_definition(self, name: str, kind: str, unit: str | None, description: str | None) -> None:
        """Remember a custom metric's definition for the whole cluster."""
        with self.store.connection() as conn:
            conn.execute("INSERT INTO analytics_definitions (name, type, unit, description) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET type = excluded.type, unit = excluded.unit, "
                         "description = excluded.description", [name, kind, unit, description])

    def reset(self) -> None:
        """Forget every bucket and count the store again from its first event (``telemetry analytics rebuild``).

        The state's generation is bumped in the same transaction: the counter (in whichever process) finds it
        changed at its next step, reloads the emptied state and counts from the first event."""
        with self._step_lock:
            with self.store.connection() as conn, conn.transaction():
                conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
                conn.execute("SELECT 1 FROM analytics_state WHERE id = 1 FOR UPDATE")
                conn.execute("DELETE FROM analytics_buckets")
                conn.execute("DELETE FROM analytics_open_sessions")
                conn.execute("UPDATE analytics_state SET watermark = 0, counted = '[]', gap_since = NULL, "
                             "counted_events = 0, generation = generation + 1 WHERE id = 1")
            with self.plugin._lock:
                self.load()

    def catch_up(self, timeout: float | None = None) -> bool:
        """Count until nothing stored is left uncounted (the leader), or wait for the leader to (a follower)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.try_lead():
                    while self.step():
                        if deadline is not None and time.monotonic() > deadline:
                            return False
                    if not self._gaps() and self.lag() == 0:
                        return True
                else:
                    self.load()
                    if self.lag() == 0:
                        return True
            except StorageError:
                pass
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        """For health: who counts, how far, how far behind."""
        try:
            behind = self.lag()
        except StorageError:
            behind = None
        return {"backend": "postgres", "leader": self.leader, "watermark": self.watermark, "lag": behind,
                "stale": self.stale}
