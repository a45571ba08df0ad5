"""SQLite-specific behaviour: files, migrations, injection safety, several processes."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibekit_telemetry import InvalidQueryError, StorageError, TelemetryEvent, TelemetryService, now_ms, search_words
from vibekit_telemetry_sqlite import SQLiteStorage, fts_query
from vibekit_telemetry_sqlite.migrations import MIGRATION_SET, migrations


def _service(path, **overrides):
    return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}],
                            data_dir=str(path.parent), **overrides)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_database_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with TelemetryService() as telemetry:
        telemetry.track({"category": "c"})
    assert (tmp_path / ".vibekit" / "telemetry.db").is_file()


def test_schema_is_created_by_numbered_migrations_once(tmp_path):
    path = tmp_path / "t.db"
    with _service(path):
        pass
    with _service(path) as telemetry:
        assert telemetry.get_health_status().components["sqlite"]["migrations"] == [m.name for m in migrations._migrations]
    rows = sqlite3.connect(path).execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]).fetchall()
    assert [r[0] for r in rows] == ["m001_events_and_sessions", "m002_session_labels"]
    with sqlite3.connect(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"events_session_time", "events_category_time", "events_type_time", "events_id"} <= indexes
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_metadata_filters_are_only_data(tmp_path):
    path = tmp_path / "t.db"
    nasty_key = "k'); DROP TABLE events; --"
    nasty_value = "' OR 1=1 --"
    with _service(path) as telemetry:
        telemetry.track({"category": "c", "metadata": {nasty_key: nasty_value, "quote\"key": "x"}})
        telemetry.track({"category": "c", "metadata": {"other": 1}})
        assert len(telemetry.query(metadata={nasty_key: nasty_value})) == 1
        assert len(telemetry.query(metadata={"quote\"key": "x"})) == 1
        assert telemetry.query(metadata={nasty_key: "' OR '1'='1"}) == []
        assert telemetry.query(category="c' OR '1'='1") == []
        assert len(telemetry.query(text='"); DROP TABLE events; --')) == 0
        assert len(telemetry.query()) == 2


def test_fts_query_keeps_only_words():
    assert fts_query('Parser NEAR(bug) "x AND y_z*') == "parser near bug x and y z"
    with pytest.raises(StorageError, match="no words"):
        fts_query('  "" * ')


# Latin letters with and without diacritics, Greek, Cyrillic, digits, punctuation, spaces and combining marks
_TEXT = st.text(st.sampled_from("aeiouAEIOU éèêëÉïîñÑçÇåÅøØæßőűąęșțİıǘệάωйЖ0123456789²,.;:!?-_'\" \t\n\u0301\u0308"),
                max_size=40)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_search_words_split_and_fold_text_as_the_unicode61_tokenizer_does(text):
    """Every store matches ``text=`` by :func:`search_words`; SQLite by its tokenizer: they must agree."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(t, detail=none)")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(f, 'row')")
    conn.execute("INSERT INTO f VALUES (?)", [text])
    assert sorted(set(search_words(text))) == sorted(r[0] for r in conn.execute("SELECT term FROM v"))


def test_a_text_search_without_words_is_an_invalid_query(tmp_path):
    with _service(tmp_path / "t.db") as telemetry, pytest.raises(InvalidQueryError, match="text"):
        telemetry.query(text=' "" * ')


def test_refuses_a_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("my precious notes\n" * 100)
    before = _digest(path)
    with pytest.raises(StorageError, match="not a SQLite database.*refusing to overwrite"):
        _service(path)
    assert _digest(path) == before


def test_refuses_a_foreign_sqlite_database(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    before = _digest(path)
    with pytest.raises(StorageError, match="not a vibekit-telemetry one.*customers"):
        _service(path)
    assert _digest(path) == before


def test_corrupt_database_gives_a_clear_error_and_is_left_alone(tmp_path):
    path = tmp_path / "t.db"
    with _service(path) as telemetry:
        for i in range(200):
            telemetry.track({"category": "c", "value": i, "metadata": {"pad": "x" * 200}})
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(StorageError, match="corrupt"):
        _service(path)
    assert _digest(path) == before


def test_a_database_with_corrupt_pages_but_a_valid_header_is_refused_before_any_write(tmp_path):
    path = tmp_path / "t.db"
    with _service(path) as telemetry:
        for i in range(2000):
            telemetry.track({"category": "c", "value": i, "prompt": f"prompt {i} " + "y" * 300})
    page_size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    middle = (len(data) // page_size // 2) * page_size
    data[middle + 8 : middle + page_size] = bytes(range(256)) * ((page_size - 8) // 256) + b"\x00" * ((page_size - 8) % 256)
    path.write_bytes(bytes(data))
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    before = _digest(path)
    with pytest.raises(StorageError, match=r"corrupt \(quick_check"):
        _service(path)
    assert _digest(path) == before
    assert not (tmp_path / "t.db-wal").exists() or (tmp_path / "t.db-wal").stat().st_size == 0


def test_a_database_of_another_application_is_refused_even_without_tables(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIEW answers AS SELECT 42 AS answer")
        conn.execute("PRAGMA user_version = 42")
    before = _digest(path)
    with pytest.raises(StorageError, match="not a vibekit-telemetry one.*view answers.*user_version 42"):
        _service(path)
    assert _digest(path) == before
    only_version = tmp_path / "versioned.db"
    with sqlite3.connect(only_version) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(StorageError, match="user_version 7"):
        _service(only_version)
    ours = tmp_path / "ours.db"
    with _service(ours) as telemetry:
        telemetry.track({"category": "c"})
    assert sqlite3.connect(ours).execute("PRAGMA application_id").fetchone()[0] == 0x564B5431
    with _service(ours) as telemetry:  # and ours opens again
        assert len(telemetry.query()) == 1


def test_retried_batch_does_not_double_rows(tmp_path):
    store = SQLiteStorage.open(tmp_path / "t.db")
    try:
        base = now_ms()
        batch = [TelemetryEvent(event_type="start", category="c", session_id="s", timestamp=base)]
        batch += [TelemetryEvent(event_type="stream", category="c", session_id="s", stream_data=f"{i}",
                                 timestamp=base + i) for i in range(1, 5)]
        store.store(batch)
        store.store(batch)
        store.store(batch[:2] + [TelemetryEvent(event_type="end", category="c", session_id="s", timestamp=base + 9)])
        assert store.count() == 6
        session = store.get_session("s")
        assert (session.event_count, session.stream_count, session.status) == (6, 4, "completed")
    finally:
        store.close()


def test_clean_and_optimize(tmp_path):
    path = tmp_path / "t.db"
    with _service(path) as telemetry:
        old = now_ms() - 40 * 86_400_000
        sid = telemetry.track_start("a", "m", "old prompt words", timestamp=old)
        telemetry.track_stream(sid, "old streamed words", timestamp=old + 1)
        telemetry.track_end(sid, timestamp=old + 2)
        telemetry.track_start("a", "m", "fresh prompt words")
        assert telemetry.clean(30) == 3
        assert telemetry.get_session(sid) is None
        assert [e.prompt for e in telemetry.query(text="words")] == ["fresh prompt words"]
        telemetry.optimize()
        assert telemetry.get_health_status().healthy


WRITER = textwrap.dedent(
    """
    import sys
    from vibekit_telemetry import TelemetryService
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": path}}], stream_batch_size=50) as t:
        for i in range(n):
            sid = t.track_start(tag, "m", f"prompt {i}")
            t.track_stream(sid, "chunk")
            t.track_end(sid)
        health = t.get_health_status()
        assert health.counters["dropped"] == 0, health.counters
    """
)


def test_two_processes_writing_one_file_lose_nothing(tmp_path):
    path = tmp_path / "shared.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), tag, "400"], cwd=tmp_path)
             for tag in ("p1", "p2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with _service(path) as telemetry:
        assert len(telemetry.query(category="p1")) == 1200
        assert len(telemetry.query(category="p2")) == 1200
        assert len(telemetry.get_sessions(status="completed")) == 800


def test_unicode_and_nested_metadata_round_trip(tmp_path):
    path = tmp_path / "t.db"
    meta = {"emoji": "🚀✨", "nested": {"list": [1, 2.5, None, {"deep": "ü"}]}, "empty": "", "zero": 0}
    with _service(path) as telemetry:
        event_id = telemetry.track({"category": "ünï", "label": "", "metadata": meta, "prompt": "日本語のプロンプト"})
    with _service(path) as telemetry:
        [event] = telemetry.query()
        assert (event.id, event.category, event.metadata, event.prompt) == (event_id, "ünï", meta, "日本語のプロンプト")
        assert telemetry.query(text="日本語のプロンプト")[0].id == event_id


def test_text_index_catches_up_while_idle(tmp_path):
    import time

    path = tmp_path / "t.db"
    with _service(path, stream_flush_interval=50) as telemetry:
        sid = telemetry.track_start("a", "m", "needle in the prompt")
        telemetry.track_stream(sid, "haystack chunk")
        telemetry.flush()
        store = telemetry.host.meta["sqlite"]["object"]
        deadline = time.monotonic() + 5
        while store.text_index_backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.text_index_backlog() == 0
        telemetry.track_stream(sid, "another needle")
        assert len(telemetry.query(text="needle")) == 2


def test_text_search_plans_agree(tmp_path, monkeypatch):
    import vibekit_telemetry_sqlite

    path = tmp_path / "t.db"
    with _service(path) as telemetry:
        base = now_ms() - 100_000
        for i in range(60):
            # timestamps out of insertion order, so ordering by time is not ordering by row
            telemetry.track({"category": "c", "prompt": f"common word {i}", "timestamp": base + (i * 37) % 60})
        telemetry.track({"category": "c", "prompt": "rare word"})
        few = [e.id for e in telemetry.query(text="common", limit=25)]
        rare_few = [e.id for e in telemetry.query(text="rare")]
        monkeypatch.setattr(vibekit_telemetry_sqlite, "_FEW_MATCHES", 2)
        many = [e.id for e in telemetry.query(text="common", limit=25)]
        assert many == few and len(few) == 25
        assert [e.id for e in telemetry.query(text="rare")] == rare_few and len(rare_few) == 1
        times = [e.timestamp for e in telemetry.query(text="common word", limit=25)]
        assert times == sorted(times, reverse=True)


def test_a_new_migration_upgrades_an_existing_database_once(tmp_path):
    path = tmp_path / "t.db"
    with _service(path) as telemetry:
        telemetry.track({"category": "kept"})

    @migrations(name="m999_test_column")
    def m999(db):
        db["sessions"].add_column("test_note", str)

    try:
        for _ in range(2):
            with _service(path) as telemetry:
                assert [e.category for e in telemetry.query()] == ["kept"]
                assert telemetry.get_health_status().components["sqlite"]["migrations"][-1] == "m999_test_column"
        columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(sessions)")]
        assert columns.count("test_note") == 1
    finally:
        migrations._migrations.pop()


def test_opening_retries_an_immediate_lock_refusal(tmp_path, monkeypatch):
    # SQLite answers "locked" without waiting where waiting could deadlock (two processes switching one new
    # file to WAL at once); that refusal cannot be provoked on demand, so it is injected here.
    from vibekit_telemetry_sqlite import migrations as module

    real, calls = module.apply, []

    def refuse_twice(conn):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(conn)

    monkeypatch.setattr(module, "apply", refuse_twice)
    store = SQLiteStorage.open(tmp_path / "t.db")
    assert len(calls) == 3 and store.count() == 0
    store.close()

    def refuse_always(conn):
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    calls.clear()
    monkeypatch.setattr(module, "apply", refuse_always)
    with pytest.raises(StorageError, match="locked by another process"):
        SQLiteStorage.open(tmp_path / "u.db", busy_timeout_ms=200)
    assert len(calls) > 2


def test_a_read_only_directory_is_a_clear_error(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    if os.geteuid() == 0:  # root writes through permission bits; /proc/self is read-only even for root
        directory = "/proc/self"
    else:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o555)
    with pytest.raises(StorageError, match="the directory is not writable"):
        TelemetryService(storage=[{"type": "sqlite", "options": {"path": f"{directory}/t.db"}}])


def test_events_stored_after_the_newest_were_deleted_are_found_by_text(tmp_path):
    """seq numbers freed by deleting the newest rows are reused: the text index must index the new rows."""
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db")}}],
                          data_dir=str(tmp_path)) as t:
        ids = [t.track({"category": "c", "prompt": f"needle {i}"}) for i in range(3)]
        t.flush()
        assert len(t.query(text="needle")) == 3  # the index covers all three now
        assert t.delete([ids[-1]]) == 1
        t.track({"category": "c", "prompt": "needle again"})
        t.flush()
        assert len(t.query(text="needle")) == 3
