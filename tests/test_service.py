"""TelemetryService end to end on real SQLite files (and the memory store where noted)."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from vibekit_telemetry import (
    EventBuilder,
    InvalidEventError,
    ServiceClosedError,
    TelemetryEvent,
    TelemetryService,
    current_session_id,
    hookimpl,
)


def test_the_quick_start_from_the_issue(in_tmp):
    with TelemetryService(service_name="my-ai-app", service_version="1.0.0") as telemetry:
        sid = telemetry.track_start("claude", "code", "Fix this bug")
        telemetry.track_stream(session_id=sid, category="claude", action="code",
                               stream_data="Here's the fix...", metadata={"model": "claude-3-sonnet", "temperature": 0.7})
        telemetry.track_end(sid, "completed")
        telemetry.track({"event_type": "custom", "category": "user-action", "action": "button-click", "value": 1})
        events = telemetry.query(category="claude", event_type="stream", since="1h", limit=100)
        session = telemetry.get_session(sid)
    assert [e.stream_data for e in events] == ["Here's the fix..."]
    assert events[0].metadata == {"model": "claude-3-sonnet", "temperature": 0.7}
    assert session.status == "completed" and session.agent == "claude" and session.mode == "code"
    assert session.duration_ms >= 0 and session.ttft_ms >= 0
    assert (session.event_count, session.stream_count, session.error_count) == (3, 1, 0)
    assert (in_tmp / ".vibekit" / "telemetry.db").is_file()


def test_track_does_no_io_and_reads_flush_first(in_tmp):
    """A store that blocks shows that track() returns before storage, and query() waits for it."""
    release = threading.Event()
    stored: list[int] = []

    class GatedStore:
        name = "gated"

        @hookimpl
        def store(self, events):
            release.wait(10)
            stored.extend(e.value for e in events)

        @hookimpl
        def query(self, filter):
            return [TelemetryEvent(event_type="custom", category="x", value=v) for v in stored]

    with TelemetryService(storage=[], plugins=[GatedStore()], stream_batch_size=1) as t:
        started = time.perf_counter()
        for i in range(20):
            t.track({"category": "c", "value": i})
        assert time.perf_counter() - started < 1.0
        assert len(stored) < 20
        release.set()
        assert [e.value for e in t.query()] == list(range(20))


def test_invalid_event_is_rejected_alone(telemetry):
    telemetry.track({"category": "ok", "value": 1})
    with pytest.raises(InvalidEventError) as info:
        telemetry.track({"category": "bad", "value": "one"})
    assert info.value.field == "value"
    telemetry.track({"category": "ok", "value": 2})
    assert [e.value for e in telemetry.query(order="asc")] == [1, 2]
    assert telemetry.get_health_status().counters["rejected"] == 1


def test_track_batch_keeps_good_events_and_reports_bad_ones(telemetry):
    result = telemetry.track_batch([{"category": "a"}, {"category": ""}, {"category": "b", "bogus": 1}, {"category": "c"}])
    assert len(result.accepted) == 2
    assert [(i, e.field) for i, e in result.rejected] == [(1, "category"), (2, "bogus")]
    assert sorted(e.category for e in telemetry.query()) == ["a", "c"]


def test_track_accepts_events_builder_and_kwargs(telemetry):
    event = EventBuilder().with_session_id("s").with_category("claude").with_action("code-generation") \
        .with_label("react-component").with_value(150).with_metadata({"language": "typescript"}).build()
    telemetry.track(event)
    telemetry.track(category="kw", action="a")
    telemetry.track({"category": "map"}, label="merged")
    got = {e.category: e for e in telemetry.query()}
    assert got["claude"].value == 150 and got["claude"].metadata == {"language": "typescript"}
    assert got["kw"].action == "a" and got["map"].label == "merged"
    with pytest.raises(InvalidEventError):
        telemetry.track(42)


def test_session_context_manager(telemetry):
    with telemetry.session("claude", "code", "ok prompt") as ok:
        ok.stream("partial")
        ok.stream("answer")
    with pytest.raises(KeyError):
        with telemetry.session("claude", "code", "doomed") as doomed:
            doomed.stream("thinking")
            raise KeyError("missing-config")
    good, bad = telemetry.get_session(ok.id), telemetry.get_session(doomed.id)
    assert (good.status, good.stream_count) == ("completed", 2)
    assert (bad.status, bad.error_count) == ("failed", 1)
    [error] = telemetry.query(session_id=doomed.id, event_type="error")
    assert error.error_type == "KeyError" and "missing-config" in error.error_message
    assert "raise KeyError" in error.error_stack
    assert current_session_id() is None


def test_session_tree_across_threads_and_tasks(telemetry):
    with telemetry.session("agent", "plan", "top") as top:
        ctx = contextvars.copy_context()
        child_ids: list[str] = []

        def in_thread():
            with telemetry.session("llm", "call", "from a thread") as s:
                child_ids.append(s.id)

        thread = threading.Thread(target=ctx.run, args=(in_thread,))
        thread.start()
        thread.join()

        async def main():
            async def call(n):
                async with telemetry.session("tool", "run", f"task {n}") as s:
                    return s.id

            return await asyncio.gather(call(1), call(2))

        child_ids.extend(asyncio.run(main()))
        explicit = telemetry.track_start("llm", "call", "explicit child")
    tree = telemetry.get_session(top.id, tree=True)
    assert sorted(c.id for c in tree.children) == sorted([*child_ids, explicit])
    assert {c.parent_id for c in tree.children} == {top.id}


def test_stream_end_and_error_default_to_the_session_category(telemetry):
    sid = telemetry.track_start("gemini", "chat", "hi")
    telemetry.track_stream(sid, "hello")
    telemetry.track_error(sid, ValueError("bad token"))
    telemetry.track_end(sid, "failed")
    assert {e.category for e in telemetry.query(session_id=sid)} == {"gemini"}
    assert telemetry.get_session(sid).last_error == "bad token"


def test_oversized_fields_are_capped_and_marked(in_tmp):
    with TelemetryService(max_field_bytes=1024) as t:
        sid = t.track_start("a", "m", "p" * 5000, metadata={"blob": "é" * 3000, "nested": {"text": "n" * 4000}, "ok": "x"})
        [event] = t.query(session_id=sid)
    assert len(event.prompt.encode()) <= 1024
    assert len(event.metadata["blob"].encode()) <= 1024 and event.metadata["blob"].startswith("é")
    assert set(event.truncated) == {"prompt", "metadata.blob", "metadata.nested.text"}
    assert event.metadata["ok"] == "x"


def test_capture_content_false_keeps_text_out_of_storage(in_tmp):
    with TelemetryService(capture_content=False) as t:
        sid = t.track_start("a", "m", "secret prompt")
        t.track_stream(sid, "secret answer")
        t.track_end(sid)
        events = t.query(session_id=sid)
        assert all(e.prompt is None and e.stream_data is None for e in events)
        assert t.get_session(sid).stream_count == 1
    assert b"secret" not in (in_tmp / ".vibekit" / "telemetry.db").read_bytes()


class _SlowStore:
    name = "slow"

    def __init__(self):
        self.release = threading.Event()

    @hookimpl
    def store(self, events):
        self.release.wait(10)


@pytest.mark.parametrize(("policy", "reason"), [("drop_newest", "queue_full"), ("drop_oldest", "queue_full_oldest"),
                                                ("block", "queue_full")])
def test_full_queue_policy_counts_every_drop(in_tmp, policy, reason):
    slow = _SlowStore()
    t = TelemetryService(storage=[], plugins=[slow], max_queue_size=10, stream_batch_size=5, on_full=policy,
                         enqueue_timeout_ms=20)
    try:
        drops = []
        t.on("drop", drops.append)
        started = time.perf_counter()
        results = [t.track({"category": "c", "value": i}) for i in range(100)]
        elapsed = time.perf_counter() - started
        health = t.get_health_status()
        dropped = health.counters["dropped_by_reason"].get(reason, 0)
        assert dropped > 0
        if policy != "drop_oldest":
            assert results.count(None) == dropped
        assert health.counters["accepted"] == 100
        assert health.pipeline["queue_depth"] <= 10
        assert sum(d["count"] for d in drops) == dropped
        assert elapsed < 100 * 0.02 + 2
    finally:
        slow.release.set()
        t.shutdown()


def test_on_flush_handler_and_bad_handler_is_isolated(telemetry):
    flushed = []
    telemetry.on("flush", lambda payload: 1 / 0)
    telemetry.on("flush", flushed.append)
    telemetry.track({"category": "c"})
    telemetry.flush()
    assert [f["count"] for f in flushed] == [1] and flushed[0]["seconds"] >= 0


def test_batcher_hands_over_in_batches(memory_telemetry):
    with memory_telemetry.create_batcher(batch_size=10, flush_interval=50, max_retries=1) as batcher:
        for i in range(25):
            batcher.add({"category": "b", "value": i})
        assert len(memory_telemetry.query()) == 20
        time.sleep(0.3)
        assert len(memory_telemetry.query()) == 25
        batcher.add({"category": ""})
    assert batcher.accepted == 25 and batcher.rejected == 1


def test_event_stream_iterates_live_events(memory_telemetry):
    with memory_telemetry.create_event_stream(category="live") as stream:
        memory_telemetry.track({"category": "other"})
        memory_telemetry.track({"category": "live", "value": 1})
        memory_telemetry.flush()
        event = next(stream)
        assert (event.category, event.value) == ("live", 1)
        assert stream.get(timeout=0.05) is None
    assert list(stream) == []


def test_event_stream_async_and_bounded(memory_telemetry):
    stream = memory_telemetry.create_event_stream(max_pending=3)
    for i in range(10):
        memory_telemetry.track({"category": "c", "value": i})
    memory_telemetry.flush()

    async def consume():
        return [(await stream.__anext__()).value for _ in range(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert stream.dropped == 7
    stream.close()
    assert memory_telemetry.get_health_status().pipeline["live_streams"] == 0


def test_async_reads_do_not_block_the_loop(telemetry):
    async def main():
        sid = telemetry.track_start("a", "m", "p")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        events = await telemetry.aquery(session_id=sid)
        session = await telemetry.aget_session(sid)
        task.cancel()
        return events, session, ticks

    events, session, ticks = asyncio.run(main())
    assert len(events) == 1 and session.status == "active" and ticks > 0


def test_health_status_reports_components_resources_and_counters(telemetry):
    telemetry.track({"category": "c"})
    telemetry.flush()
    health = telemetry.get_health_status()
    assert health.healthy and health.issues == []
    assert health.components["sqlite"]["size_bytes"] > 0
    assert health.counters["accepted"] == health.counters["stored"] == 1
    assert health.memory["used"] > 0 and health.storage["used_bytes"] > 0 and "usage" in health.cpu
    assert health.to_dict()["pipeline"]["queue_depth"] == 0


def test_shutdown_drains_and_reads_after_shutdown_fail(in_tmp):
    t = TelemetryService(stream_flush_interval=60_000, stream_batch_size=1000)
    for i in range(50):
        t.track({"category": "c", "value": i})
    t.shutdown()
    t.shutdown()
    assert t.track({"category": "late"}) is None
    assert t.get_health_status().counters["dropped_by_reason"] == {"after_shutdown": 1}
    with pytest.raises(ServiceClosedError):
        t.query()
    with TelemetryService() as again:
        assert len(again.query()) == 50


def test_interpreter_exit_drains_pending_events(in_tmp):
    script = textwrap.dedent("""
        from vibekit_telemetry import TelemetryService
        t = TelemetryService(stream_flush_interval=600000, stream_batch_size=100000)
        for i in range(1234):
            t.track({"category": "exit", "value": i})
        # no shutdown(): the atexit hook must drain
    """)
    subprocess.run([sys.executable, "-c", script], cwd=in_tmp, check=True, timeout=60)
    with TelemetryService() as t:
        assert len(t.query(category="exit")) == 1234


def test_export_without_exporter_is_a_clear_error(memory_telemetry):
    memory_telemetry.track({"category": "c"})
    with pytest.raises(Exception, match="no plugin exports format 'xlsx'"):
        memory_telemetry.export("xlsx")


def test_an_installed_format_loads_on_first_use_and_a_failed_export_leaves_no_file(memory_telemetry, in_tmp):
    memory_telemetry.track({"category": "c"})
    assert "json" not in memory_telemetry.plugin_names()
    assert {"csv", "json", "jsonl", "parquet"} <= set(memory_telemetry.export_formats())
    assert memory_telemetry.export(output="events.jsonl") == 1
    assert "json" in memory_telemetry.plugin_names()
    with pytest.raises(ValueError, match="unknown export key"):
        memory_telemetry.export(output="broken.jsonl", delimiter=";")
    assert not (in_tmp / "broken.jsonl").exists() and not (in_tmp / "broken.jsonl.partial").exists()


def test_export_and_detect_through_plugins(in_tmp):
    class Lines:
        name = "lines"

        @hookimpl
        def export_formats(self):
            return ["lines"]

        @hookimpl
        def export(self, format, events, output, options):
            if format != "lines":
                return None
            n = 0
            for event in events:
                output.write(f"{event.category}{options.get('suffix', '')}\n".encode())
                n += 1
            return n

    class Threshold:
        name = "threshold"

        @hookimpl
        def detect(self, metric, points, sensitivity):
            from vibekit_telemetry import Anomaly

            return [Anomaly(metric=metric, timestamp=t, value=v, detector="threshold") for t, v in points if v > 10]

    with TelemetryService(storage=[{"type": "memory"}], plugins=[Lines(), Threshold()]) as t:
        for c in ("a", "b", "c"):
            t.track({"category": c})
        assert t.export("lines", suffix="!") == b"a!\nb!\nc!\n"
        assert t.export("lines", {"category": "b"}, suffix="?") == b"b?\n"
        out = in_tmp / "x.txt"
        assert t.export("lines", output=out) == 3 and out.read_text().count("\n") == 3
        assert {"lines", "csv", "json", "jsonl", "parquet"} <= set(t.export_formats())
        seen = []
        t.on("anomaly", seen.append)
        found = t.detect("latency", [(1, 1.0), (2, 50.0), (3, 2.0)])
        assert [(a.timestamp, a.detector) for a in found] == [(2, "threshold")]
        assert seen == [], "an on-demand check returns its findings without announcing them"
        assert t.detect("latency", [(1, 1.0), (2, 50.0), (3, 2.0)], emit=True) == found and seen == found


def test_seed_style_track_stream_mapping(memory_telemetry):
    sid = memory_telemetry.track_start("claude", "code", "p")
    memory_telemetry.track_stream({"sessionId": sid, "eventType": "stream", "category": "claude", "action": "code",
                                   "streamData": "chunk", "metadata": {"model": "m"}})
    [event] = memory_telemetry.query(event_type="stream")
    assert (event.session_id, event.stream_data, event.metadata) == (sid, "chunk", {"model": "m"})


def test_cpu_usage_is_measured_between_calls(telemetry):
    telemetry.get_health_status()
    sum(i * i for i in range(2_000_000))
    assert telemetry.get_health_status().cpu["usage"] > 0


def test_logging_levels(in_tmp, monkeypatch):
    import logging

    logger = logging.getLogger("vibekit_telemetry")
    with TelemetryService(storage=[{"type": "memory"}], debug=True):
        assert logger.level == logging.DEBUG
    with TelemetryService(storage=[{"type": "memory"}], log_level="error"):
        assert logger.level == logging.ERROR
    monkeypatch.setenv("TELEMETRY_LOG_LEVEL", "INFO")
    with TelemetryService(storage=[{"type": "memory"}]):
        assert logger.level == logging.INFO


def test_a_hook_that_reads_does_not_deadlock_the_flusher(in_tmp):
    seen = []

    class Reader:
        name = "reader"

        def __init__(self):
            self.service = None

        @hookimpl
        def startup(self, service):
            self.service = service

        @hookimpl
        def after_track(self, event):
            seen.append(len(self.service.query(session_id=event.session_id)))

    with TelemetryService(storage=[{"type": "memory"}], plugins=[Reader()]) as t:
        t.track({"category": "c", "session_id": "s"})
        t.flush()
    assert seen == [1]


def test_batcher_retries_events_the_full_queue_refused(in_tmp):
    t = TelemetryService(storage=[{"type": "memory"}], max_queue_size=10, on_full="drop_newest",
                         stream_batch_size=1000, stream_flush_interval=600_000)
    try:
        with t.create_batcher(batch_size=30, flush_interval=600_000, max_retries=2) as batcher:
            for i in range(30):
                batcher.add({"category": "b", "value": i})
        # Nothing drains the queue: 10 fit, 20 are refused on the first try and on both retries.
        assert (batcher.accepted, batcher.dropped) == (10, 20)
        assert t.get_health_status().counters["dropped_by_reason"]["queue_full"] == 60

        t.on("drop", lambda payload: t.flush())  # now every refusal makes room, so a retry succeeds
        with t.create_batcher(batch_size=30, flush_interval=600_000, max_retries=2) as batcher:
            for i in range(30):
                batcher.add({"category": "c", "value": i})
        assert (batcher.accepted, batcher.dropped) == (30, 0)
        assert sorted(e.value for e in t.query(category="c")) == list(range(30))
    finally:
        t.shutdown()
