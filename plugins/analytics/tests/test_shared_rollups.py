"""Rollups shared by the processes of one PostgreSQL store: one counter per cluster, the same answers everywhere."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time

import pytest

from vibekit_telemetry import TelemetryError, TelemetryService, now_ms

pytest.importorskip("vibekit_telemetry_postgres")


def _service(tmp_path, name, pg_options, analytics=True):
    return TelemetryService(storage=[{"type": "postgres", "options": pg_options}], data_dir=str(tmp_path / name),
                            analytics={"enabled": analytics, "anomaly": {"enabled": True}}, stream_flush_interval=20)


def _sessions(t, n, agent, base, tokens=10):
    for i in range(n):
        sid = t.track_start(agent, "chat", f"task {i}", timestamp=base + i * 1000, metadata={"model": "gpt-4o"})
        t.track_stream(sid, "chunk", timestamp=base + i * 1000 + 100)
        t.track_end(sid, timestamp=base + i * 1000 + 500,
                    metadata={"input_tokens": tokens, "output_tokens": 1})
    t.flush()


def _analytics(t):
    return t.host.pm.get_plugin("analytics")


def test_every_process_answers_with_the_whole_clusters_counts(tmp_path, pg_options):
    base = now_ms() - 3_600_000
    a = _service(tmp_path, "a", pg_options)
    b = _service(tmp_path, "b", pg_options)
    plain = _service(tmp_path, "plain", pg_options, analytics=False)  # an app process without analytics
    try:
        assert [_analytics(t).shared.leader for t in (a, b)] == [True, False]  # one counter per cluster
        _sessions(a, 30, "planner", base)
        _sessions(b, 20, "coder", base + 100)
        _sessions(plain, 10, "tester", base + 200, tokens=5)
        for t in (a, b):
            assert _analytics(t).wait_for_catch_up(30)
        window = (base - 60_000, base + 600_000)
        ma, mb = a.get_metrics(window), b.get_metrics(window)
        assert ma.to_dict() == mb.to_dict()
        assert (ma.sessions.started, ma.sessions.completed, ma.events.total) == (60, 60, 180)
        assert ma.tokens.input == 30 * 10 + 20 * 10 + 10 * 5
        assert set(ma.by_category) == {"planner", "coder", "tester"}
        assert _analytics(b).health()["rollups"]["backend"] == "postgres"
        # only the leader watches for anomalies: an anomaly is alerted once for the cluster
        _analytics(a).idle()
        _analytics(b).idle()
        assert _analytics(a)._last_watch > 0 and _analytics(b)._last_watch == float("-inf")  # never watched
    finally:
        for t in (a, b, plain):
            t.shutdown()


def test_another_process_takes_the_count_over_when_the_leader_stops(tmp_path, pg_options):
    base = now_ms() - 3_600_000
    a = _service(tmp_path, "a", pg_options)
    b = _service(tmp_path, "b", pg_options)
    try:
        _sessions(a, 10, "first", base)
        assert _analytics(a).wait_for_catch_up(30)
        a.shutdown()
        _sessions(b, 15, "second", base + 50)
        assert _analytics(b).wait_for_catch_up(30)  # b takes the lead and goes on from a's watermark
        assert _analytics(b).shared.leader
        metrics = b.get_metrics("2h")
        assert (metrics.sessions.started, metrics.events.total) == (25, 75)  # nothing counted twice or lost
    finally:
        b.shutdown()


COUNTER = textwrap.dedent(
    """
    import sys, time
    from vibekit_telemetry import TelemetryService
    dsn, schema = sys.argv[1], sys.argv[2]
    t = TelemetryService(storage=[{"type": "postgres", "options": {"dsn": dsn, "schema": schema}}],
                         analytics={"enabled": True}, data_dir="killed")
    print("leading" if t.host.pm.get_plugin("analytics").shared.leader else "following", flush=True)
    time.sleep(120)
    """
)


def test_a_killed_leader_loses_no_count(tmp_path, pg_options):
    """kill -9 of the counting process: what it committed stays, the next leader goes on from there."""
    (tmp_path / "counter.py").write_text(COUNTER)
    base = now_ms() - 3_600_000
    writer = _service(tmp_path, "w", pg_options, analytics=False)
    _sessions(writer, 40, "early", base)
    proc = subprocess.Popen([sys.executable, "counter.py", pg_options["dsn"], pg_options["schema"]], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "leading"
        _sessions(writer, 40, "late", base + 100)
    finally:
        proc.kill()
        proc.wait()
    try:
        b = _service(tmp_path, "b", pg_options)
        assert _analytics(b).wait_for_catch_up(30)
        metrics = b.get_metrics("2h")
        assert (metrics.sessions.started, metrics.events.total) == (80, 240)
        assert b.get_metrics("2h").by_category["early"].events == 120
        with pytest.raises(TelemetryError, match="without a start time"):
            _analytics(b).rebuild(since=base)
        assert _analytics(b).rebuild() == 240  # counted again from the first event, the same figures
        assert b.get_metrics("2h").to_dict() == metrics.to_dict()
        b.shutdown()
    finally:
        writer.shutdown()


def test_a_counter_whose_connection_is_cut_mid_count_counts_nothing_twice(tmp_path, pg_options):
    """The lock's connection killed by the server: the step fails, the database's state is reloaded, the lead is
    taken again, and the figures come out exact."""
    import psycopg

    from vibekit_telemetry import StorageError

    base = now_ms() - 3_600_000
    a = _service(tmp_path, "a", pg_options)
    try:
        shared = _analytics(a).shared
        _sessions(a, 10, "before", base)
        assert _analytics(a).wait_for_catch_up(30)
        with psycopg.connect(pg_options["dsn"], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [shared._lock_conn.info.backend_pid])
        _sessions(a, 10, "after", base + 50)
        # the step that meets the cut connection (this one, or the flusher's idle before it) keeps nothing of
        # what it counted, in memory or in the database
        with contextlib.suppress(StorageError):
            shared.step()
        assert _analytics(a).wait_for_catch_up(30) and shared.leader
        metrics = a.get_metrics("2h")
        assert (metrics.sessions.started, metrics.events.total) == (20, 60)
    finally:
        a.shutdown()


def test_a_rebuild_asked_by_another_process_is_counted_again_by_the_counter(tmp_path, pg_options):
    base = now_ms() - 3_600_000
    a = _service(tmp_path, "a", pg_options)
    b = _service(tmp_path, "b", pg_options)
    try:
        _sessions(a, 12, "planner", base)
        assert _analytics(a).wait_for_catch_up(30)
        window = (base - 60_000, base + 600_000)
        before = a.get_metrics(window).to_dict()
        assert _analytics(b).rebuild() == 36  # b follows: the counter in a counts the emptied state again
        assert _analytics(a).wait_for_catch_up(30) and _analytics(b).wait_for_catch_up(30)
        time.sleep(1.1)  # a follower's buckets are at most a second old
        assert b.get_metrics(window).to_dict() == before == a.get_metrics(window).to_dict()
        assert before["events"]["total"] == 36
        assert _analytics(a).shared.generation == _analytics(b).shared.generation == 1
    finally:
        a.shutdown()
        b.shutdown()


def test_two_stores_in_one_database_each_elect_a_counter(tmp_path, postgres_dsn):
    import uuid

    schemas = [f"s_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    services = [_service(tmp_path, name, {"dsn": postgres_dsn, "schema": name}) for name in schemas]
    try:
        assert [_analytics(t).shared.leader for t in services] == [True, True]
    finally:
        import psycopg

        for t in services:
            t.shutdown()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for name in schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_retention_counts_the_hour_it_cuts_through_again_for_the_cluster(tmp_path, pg_options):
    """clean() drops the older buckets and counts the hour the cut-off falls in again from what is left, under
    the counter's state lock: every process answers with only the events still stored."""
    day, hour = 86_400_000, 3_600_000
    now = now_ms()
    start = (now - day) - (now - day) % hour  # an hour of yesterday; the cut-off goes through its middle
    cut = start + hour // 2
    a = _service(tmp_path, "a", pg_options)
    b = _service(tmp_path, "b", pg_options)
    try:
        for offset, agent in ((60_000, "gone"), (hour // 2 + 60_000, "kept")):  # one either side of the cut
            sid = a.track_start(agent, "chat", "p", timestamp=start + offset)
            a.track_end(sid, timestamp=start + offset + 1000)
        _sessions(a, 3, "recent", now - 60_000)
        for t in (a, b):
            assert _analytics(t).wait_for_catch_up(30)
        window = (start - hour, now + 60_000)
        assert a.get_metrics(window).events.total == 4 + 9
        deleted = b.clean((now_ms() - cut) / day)  # through the follower: the cut is the whole cluster's
        assert deleted == 2
        for t in (a, b):
            assert _analytics(t).wait_for_catch_up(30)
        _sessions(b, 1, "after", now - 30_000)  # counting goes on from the recounted buckets
        for t in (a, b):
            assert _analytics(t).wait_for_catch_up(30)
        time.sleep(1.1)  # a follower's buckets are at most a second old
        ma, mb = a.get_metrics(window), b.get_metrics(window)
        assert ma.to_dict() == mb.to_dict()
        assert ma.events.total == 2 + 9 + 3
        assert set(ma.by_category) == {"kept", "recent", "after"}
        hourly = a.get_metrics((start, start + hour))
        assert hourly.events.total == 2 and hourly.sessions.completed == 1
    finally:
        for t in (a, b):
            t.shutdown()
