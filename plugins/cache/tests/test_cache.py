"""The read cache on a real SQLite file: hits when nothing changed, never stale after a write."""

from __future__ import annotations

import time

import pytest

from vibekit_telemetry import TelemetryService, now_ms


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _stats(t):
    return t.get_health_status().components["cache"]


def test_repeated_reads_hit_and_writes_invalidate_exactly_what_they_change(in_tmp):
    with TelemetryService(plugins=["cache"]) as t:
        sid = t.track_start("claude", "code", "p")
        other = t.track_start("codex", "code", "p")
        assert len(t.query(category="claude", limit=10)) == 1
        assert len(t.query(category="claude", limit=10)) == 1
        assert t.get_session(sid).event_count == 1
        assert t.get_session(sid).event_count == 1
        assert _stats(t)["hits"] == 2
        t.track_stream(other, "chunk")  # another session, another category: both answers stay
        assert len(t.query(category="claude", limit=10)) == 1 and t.get_session(sid).event_count == 1
        assert _stats(t)["hits"] == 4
        t.track_stream(sid, "chunk")  # now they change
        assert len(t.query(category="claude", limit=10)) == 2
        assert t.get_session(sid).event_count == 2
        assert len(t.get_sessions()) == 2
        t.track_end(sid)
        assert t.get_sessions(status="completed")[0].id == sid


def test_ttl_size_bound_and_callers_cannot_corrupt_an_entry(in_tmp):
    with TelemetryService(plugins=[{"name": "cache", "options": {"ttl": "200ms", "max_entries": 2}}]) as t:
        t.track({"category": "a"})
        first = t.query(category="a")
        first.clear()  # the caller's list, not the cache's
        assert len(t.query(category="a")) == 1
        time.sleep(0.25)
        t.query(category="a")
        stats = _stats(t)
        assert (stats["hits"], stats["misses"]) == (1, 2)
        for category in ("b", "c", "d"):
            t.query(category=category)
        assert _stats(t)["entries"] == 2 and _stats(t)["evictions"] >= 1


def test_analytics_answers_are_cached_by_minute_and_dropped_on_new_events_clean_and_definitions(in_tmp):
    with TelemetryService(plugins=["cache"], analytics={"enabled": True}) as t:
        t.track({"category": "a"})
        assert t.get_metrics("1h").events.total == 1
        assert t.get_metrics("1h").events.total == 1  # a later "now", the same minutes: a hit
        assert _stats(t)["hits"] == 1
        t.track({"category": "a"})
        assert t.get_metrics("1h").events.total == 2
        t.track({"category": "old", "timestamp": now_ms() - 5 * 86_400_000})  # outside the window: kept
        hits = _stats(t)["hits"]
        assert t.get_metrics("1h").events.total == 2 and _stats(t)["hits"] == hits + 1
        t.define_metric("jobs", "gauge")
        assert t.get_metrics("1h").custom["jobs"].type == "gauge"
        t.clean(retention_days=0)
        assert t.get_metrics("1h").events.total == 0
        assert t.query(category="a") == []
