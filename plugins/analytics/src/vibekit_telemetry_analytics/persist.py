"""The rollup file: aggregates and open sessions survive restarts in a small SQLite database.

The schema is owned by sqlite-utils migrations, like the storage plugin's.
Only changed buckets are written, on the flusher when it is idle and at shutdown.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .rollup import Agg, Bucket, OpenSession, Rollups

MIGRATION_SET = "vibekit_telemetry_analytics"
migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_rollups(db: Database) -> None:
    """Buckets by level, start and dimension; sessions still open; custom metric definitions."""
    db["buckets"].create({"level": str, "bucket": int, "dim_kind": str, "dim": str, "data": str},
                         pk=("level", "bucket", "dim_kind", "dim"), not_null={"data"})
    db["open_sessions"].create({"id": str, "data": str}, pk="id", not_null={"data"})
    db["definitions"].create({"name": str, "type": str, "unit": str, "description": str}, pk="name")
    db["meta"].create({"key": str, "value": str}, pk="key")


class RollupFile:
    """Read and write :class:`Rollups` to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        self.conn.execute("PRAGMA journal_mode=wal")
        self.conn.execute("PRAGMA synchronous=normal")
        db = Database(self.conn, execute_plugins=False)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def load(self, rollups: Rollups, *, minutes_from: int, hours_from: int) -> dict[str, dict[str, Any]]:
        """Fill ``rollups`` with the kept buckets and open sessions; return the metric definitions."""
        rows = self.conn.execute(
            "SELECT level, bucket, dim_kind, dim, data FROM buckets "
            "WHERE (level = 'm' AND bucket >= ?) OR (level = 'h' AND bucket >= ?)", [minutes_from, hours_from])
        for level, bucket, dim_kind, dim, data in rows:
            by_dim = rollups.levels[level].get(bucket)
            if by_dim is None:
                by_dim = rollups.levels[level][bucket] = Bucket()
            by_dim[(dim_kind, dim)] = Agg.from_json(orjson.loads(data))
        for sid, data in self.conn.execute("SELECT id, data FROM open_sessions"):
            rollups.open[sid] = OpenSession.from_json(orjson.loads(data))
        return {name: {"type": kind, "unit": unit, "description": description}
                for name, kind, unit, description in self.conn.execute("SELECT name, type, unit, description FROM definitions")}

    def save(self, rollups: Rollups, dirty: set[tuple[str, int]], *, sessions: bool, messages: bool = True) -> None:
        """Write the given buckets (and the open sessions when they changed) in one transaction."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for level, bucket in dirty:
                conn.execute("DELETE FROM buckets WHERE level = ? AND bucket = ?", [level, bucket])
                by_dim = rollups.levels[level].get(bucket)
                if by_dim:
                    conn.executemany(
                        "INSERT INTO buckets (level, bucket, dim_kind, dim, data) VALUES (?, ?, ?, ?, ?)",
                        [(level, bucket, kind, dim, orjson.dumps(agg.to_json(messages=messages)).decode())
                         for (kind, dim), agg in by_dim.items()])
            if sessions:
                conn.execute("DELETE FROM open_sessions")
                conn.executemany("INSERT INTO open_sessions (id, data) VALUES (?, ?)",
                                 [(sid, orjson.dumps(state.to_json()).decode()) for sid, state in rollups.open.items()])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    def delete_meta(self, key: str) -> None:
        """Remove a value of the ``meta`` table."""
        self.conn.execute("DELETE FROM meta WHERE key = ?", [key])

    def delete_before(self, level: str, cutoff: int) -> None:
        """Remove buckets of ``level`` older than ``cutoff``."""
        self.conn.execute("DELETE FROM buckets WHERE level = ? AND bucket < ?", [level, cutoff])

    def save_definition(self, name: str, kind: str, unit: str | None, description: str | None) -> None:
        """Remember a custom metric's definition."""
        self.conn.execute("INSERT OR REPLACE INTO definitions (name, type, unit, description) VALUES (?, ?, ?, ?)",
                          [name, kind, unit, description])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
