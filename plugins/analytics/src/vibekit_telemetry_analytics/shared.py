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

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from vibekit_telemetry import StorageError

from .rollup import Agg, Bucket, OpenSession, Rollups

if TYPE_CHECKING:
    from . import AnalyticsPlugin

log = logging.getLogger("vibekit_telemetry.analytics")

#: advisory lock keys: the counter's election, and the tables' migration
LEADER_LOCK = 0x76_69_62_65_6B_61_6C
MIGRATE_LOCK = LEADER_LOCK + 1
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
INSERT INTO analytics_state (id, watermark, counted) VALUES (1, 0, '[]') ON CONFLICT DO NOTHING;
"""


def _event_columns() -> str:
    from vibekit_telemetry.model import ROW_FIELDS

    return ", ".join([*ROW_FIELDS[:17], "metadata::text", "truncated::text"])


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
        self.closed = False
        #: one step at a time in this process (the flusher's idle and a caller waiting for the catch-up)
        self._step_lock = threading.Lock()
        self._select = f"SELECT seq, {_event_columns()} FROM events"
        with store.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK])
            conn.execute(_SCHEMA)

    # --- leadership ------------------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Take the counter's lock if nobody holds it (and load the cluster's state); whether this process leads."""
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
            got = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK]).fetchone()[0]
        except psycopg.Error as exc:
            log.debug("analytics: cannot reach PostgreSQL for the counter's lock: %s", exc)
            self._resign()
            return False
        if got:
            self.leader = True
            self.load(full=True)
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

    # --- reading ---------------------------------------------------------------------------------------

    def load(self, *, full: bool = False) -> None:
        """Replace the plugin's rollups with the cluster's (kept buckets, open sessions, definitions)."""
        plugin = self.plugin
        now = int(time.time() * 1000)
        rollups = plugin._new_rollups()
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT level, bucket, dim_kind, dim, data::text FROM analytics_buckets "
                "WHERE (level = 'm' AND bucket >= %s) OR (level = 'h' AND bucket >= %s)",
                [now - plugin._minute_keep, now - plugin._hour_keep]).fetchall()
            sessions = conn.execute("SELECT id, data::text FROM analytics_open_sessions").fetchall()
            definitions = conn.execute("SELECT name, type, unit, description FROM analytics_definitions").fetchall()
            state = conn.execute("SELECT watermark, counted::text, gap_since, counted_events FROM analytics_state "
                                 "WHERE id = 1").fetchone()
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
        self.watermark, counted, self.gap_since, self.counted_events = state
        self.counted = orjson.loads(counted)
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """A follower's view: the cluster's buckets, at most :data:`REFRESH_S` old."""
        if not self.leader and time.monotonic() - self._refreshed >= REFRESH_S:
            self.load()

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
        from vibekit_telemetry.model import event_from_row

        plugin = self.plugin
        top = self.counted[-1][1] if self.counted else self.watermark
        gaps = self._gaps()
        where = ["seq > %s"]
        params: list[Any] = [top]
        for first, last in gaps:
            where.append("seq BETWEEN %s AND %s")
            params.extend([first, last])
        with self.store.connection() as conn, conn.transaction():
            rows = conn.execute(f"{self._select} WHERE {' OR '.join(where)} ORDER BY seq LIMIT %s",
                                [*params, STEP]).fetchall()
            seqs = [r[0] for r in rows]
            events = []
            for r in rows:
                truncated = r[19]
                events.append(event_from_row((*r[1:19], tuple(orjson.loads(truncated)) if truncated else ())))
            with plugin._lock:
                if events:
                    plugin.rollups.add(events, plugin._lookup_session)
                for seq in seqs:
                    self._mark(seq)
                self._advance()
                self._save(conn, len(events))
        self.counted_events += len(events)
        return len(events)

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

    def _advance(self) -> None:
        """Move the watermark over the counted ranges that touch it, and over a gap given up on."""
        ranges = self.counted
        while ranges:
            first, last = ranges[0]
            if first <= self.watermark + 1:
                self.watermark = max(self.watermark, last)
                ranges.pop(0)
                self.gap_since = None
                continue
            now = time.time()
            if self.gap_since is None:
                self.gap_since = now
            elif now - self.gap_since >= GAP_S:
                log.debug("analytics: seq %d..%d never committed; counting on", self.watermark + 1, first - 1)
                self.watermark = first - 1
                self.gap_since = None
                continue
            break

    def _save(self, conn: Any, counted: int) -> None:
        """Write the changed buckets, the open sessions and the watermark (in the caller's transaction)."""
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

    # --- maintenance -----------------------------------------------------------------------------------

    def delete_before(self, level: str, cutoff: int) -> None:
        """Remove buckets of ``level`` older than ``cutoff`` (retention)."""
        with self.store.connection() as conn:
            conn.execute("DELETE FROM analytics_buckets WHERE level = %s AND bucket < %s", [level, cutoff])

    def save_definition(self, name: str, kind: str, unit: str | None, description: str | None) -> None:
        """Remember a custom metric's definition for the whole cluster."""
        with self.store.connection() as conn:
            conn.execute("INSERT INTO analytics_definitions (name, type, unit, description) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET type = excluded.type, unit = excluded.unit, "
                         "description = excluded.description", [name, kind, unit, description])

    def reset(self) -> None:
        """Forget every bucket and count the store again from its first event (``telemetry analytics rebuild``)."""
        with self.store.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK])
            conn.execute("DELETE FROM analytics_buckets")
            conn.execute("DELETE FROM analytics_open_sessions")
            conn.execute("UPDATE analytics_state SET watermark = 0, counted = '[]', gap_since = NULL, "
                         "counted_events = 0 WHERE id = 1")
        self.plugin.rollups = self.plugin._new_rollups()
        self.watermark, self.counted, self.gap_since, self.counted_events = 0, [], None, 0

    def catch_up(self, timeout: float | None = None) -> bool:
        """Count until nothing stored is left uncounted (the leader), or wait for the leader to (a follower)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.try_lead():
                    while self.step():
                        if deadline is not None and time.monotonic() > deadline:
                            return False
                    if not self._gaps():
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
        return {"backend": "postgres", "leader": self.leader, "watermark": self.watermark, "lag": behind}
