"""The kernel's API as a user porting the TypeScript seed writes it: accepted means done, or a clear error.

Each test runs the real service on a real SQLite file (or the real API server and the real CLI) and
fails on the code before issue 16: seed-style plugins that were registered with no hooks, calls that
did not exist or took no single mapping, health figures the seed prints, debug output, event names
nothing emits, ids of events never stored, and huge times that crashed instead of being refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import httpx
import pytest

from vibekit_telemetry import (
    InvalidEventError,
    InvalidQueryError,
    PluginError,
    ServiceClosedError,
    TelemetryService,
    UnknownEventError,
    hookimpl,
    now_ms,
)
from vibekit_telemetry.model import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from vibekit_telemetry.times import MAX_TIME_MS, MIN_TIME_MS, query_time, time_range

HUGE = "999999999999999999999999999999"
TELEMETRY = shutil.which("telemetry", path=str(Path(sys.executable).parent)) or "telemetry"


class SeedPlugin:
    """The seed README's ``CustomStoragePlugin``, translated to Python as a porting user would: no @hookimpl."""

    name = "custom-storage"
    version = "1.0.0"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def initialize(self, context):
        self.calls.append(("initialize", context))

    async def before_track(self, event):
        await asyncio.sleep(0)  # a real await: the coroutine must run to completion, not be dropped
        return attrs.evolve(event, metadata={**event.metadata, "seen_by": self.name})

    async def after_track(self, event):
        self.calls.append(("after_track", event.id))

    async def shutdown(self):
        self.calls.append(("shutdown", None))


# 1. seed-style plugin classes


def test_a_seed_style_plugin_has_its_methods_registered_and_called(in_tmp):
    plugin = SeedPlugin()
    with TelemetryService(plugins=[plugin]) as t:
        assert t.host.hooks_of("custom-storage") == ["after_track", "before_track", "shutdown", "startup"]
        assert plugin.calls == [("initialize", t)]  # the seed's context is the service
        event_id = t.track({"category": "claude", "action": "code"})
        [stored] = t.query()
        assert stored.id == event_id and stored.metadata["seen_by"] == "custom-storage"
    assert ("after_track", event_id) in plugin.calls
    assert plugin.calls[-1] == ("shutdown", None)
    assert Path(".vibekit/telemetry.db").exists()


def test_camel_case_seed_methods_and_a_returned_mapping_work(in_tmp):
    class Tagger:
        def beforeTrack(self, event):  # noqa: N802 - the seed's spelling, kept by a direct port
            return {**event.to_dict(), "label": "tagged"}

    with TelemetryService(plugins=[Tagger()]) as t:
        assert t.host.hooks_of("Tagger") == ["before_track"]
        t.track({"category": "c"})
        assert [e.label for e in t.query()] == ["tagged"]


def test_a_seed_before_track_returning_none_rejects_the_event_as_the_seed_does(in_tmp, caplog):
    class Rejecter:
        def before_track(self, event):
            if event.category != "secret":
                return event

    with TelemetryService(plugins=[Rejecter()]) as t:
        assert t.track({"category": "secret"}) is None
        assert t.track({"category": "secret"}) is None
        assert t.track({"category": "fine"}) is not None
        assert [e.category for e in t.query()] == ["fine"]
        assert t.get_health_status().counters["filtered"] == 2
    warnings = [r for r in caplog.records if "returned None" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per event


def test_a_seed_style_public_method_named_like_no_hook_is_an_error_listing_the_hooks(in_tmp):
    class Helper:
        def initialize(self, context):
            pass

        def format_row(self, event):
            return str(event)

    with pytest.raises(PluginError) as caught:
        TelemetryService(plugins=[Helper()])
    message = str(caught.value)
    assert "format_row is named like no hook" in message
    assert "before_track" in message and "after_track" in message and "startup" in message


def test_a_plugin_object_implementing_no_hook_is_an_error_not_a_silent_plugin(in_tmp):
    class Nothing:
        name = "nothing"

    with pytest.raises(PluginError, match="'nothing' implements no hook"):
        TelemetryService(plugins=[Nothing()])


def test_a_seed_method_taking_more_than_its_hook_gives_is_an_error(in_tmp):
    class Seed:
        def before_store(self, events, provider, context):  # the seed's beforeStore signature
            return events

    with pytest.raises(PluginError, match="takes 3 arguments, but the before_store\\(events\\) hook gives 1"):
        TelemetryService(plugins=[Seed()])


def test_hookimpl_initialize_is_an_alias_of_startup(in_tmp):
    seen = []

    class Marked:
        name = "marked"

        @hookimpl
        def initialize(self, service):
            seen.append(service)

    with TelemetryService(plugins=[Marked()]) as t:
        assert t.host.hooks_of("marked") == ["startup"]
        assert seen == [t]


def test_an_async_hookimpl_before_track_change_is_stored_even_from_inside_an_event_loop(in_tmp):
    threads = []

    class AsyncRedactor:
        name = "async-redactor"

        @hookimpl
        async def before_track(self, event):
            await asyncio.sleep(0.001)
            threads.append(threading.current_thread().name)
            return attrs.evolve(event, label="redacted")

    with TelemetryService(plugins=[AsyncRedactor()]) as t:
        async def app():
            # the caller's loop is running: the hook must not be run on it (it would deadlock) nor dropped
            return [t.track({"category": "c", "value": i}) for i in range(20)]

        ids = asyncio.run(app())
        assert None not in ids
        events = t.query(limit=100)
        assert len(events) == 20 and {e.label for e in events} == {"redacted"}
        assert t.get_health_status().counters["dropped"] == 0
    assert set(threads) == {"vibekit-telemetry-async-hooks"}


def test_a_method_named_like_a_hook_beside_marked_ones_is_reported(in_tmp, caplog):
    class HalfMarked:
        name = "half"

        @hookimpl
        def startup(self, service):
            pass

        def after_track(self, event):  # forgot @hookimpl
            pass

    with caplog.at_level(logging.WARNING, logger="vibekit_telemetry"):
        TelemetryService(plugins=[HalfMarked()]).shutdown()
    assert any("after_track is named like the after_track hook but has no @hookimpl" in r.getMessage()
               for r in caplog.records)


# 2. initialize() and the async forms


def test_initialize_is_idempotent_returns_the_service_and_refuses_after_shutdown(in_tmp):
    t = TelemetryService()
    heard = []
    t.on("initialized", heard.append)
    assert t.initialize() is t
    assert t.initialize() is t
    assert heard == [None]
    t.shutdown()
    with pytest.raises(ServiceClosedError, match="cannot be initialized again"):
        t.initialize()


def test_the_async_forms_do_what_the_sync_calls_do(in_tmp):
    async def app():
        t = await TelemetryService(analytics={"enabled": True}).ainitialize()
        sid = await t.atrack_start("claude", "code", "Fix this bug")
        await t.atrack_stream({"sessionId": sid, "streamData": "Here's the fix..."})
        await t.atrack_error(sid, RuntimeError("tool failed"))
        await t.atrack_end(sid, "completed")
        await t.atrack({"eventType": "custom", "category": "user-action", "action": "button-click"})
        metrics = await t.aget_metrics("1h")
        insights = await t.aget_insights({"timeRange": {"start": now_ms() - 3_600_000}, "categories": ["claude"]})
        exported = await t.aexport("jsonl")
        await t.ashutdown()
        return t, sid, metrics, insights, exported

    t, sid, metrics, insights, exported = asyncio.run(app())
    assert metrics.events.total == 5 and metrics.sessions.started == 1
    assert insights.summary[0].startswith("4 events in claude")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert [line["event_type"] for line in lines] == ["start", "stream", "error", "end", "custom"]
    assert lines[0]["session_id"] == sid
    with pytest.raises(ServiceClosedError):
        t.query()


# 3. single-mapping call forms


def test_track_error_takes_the_seeds_single_mapping(in_tmp):
    with TelemetryService() as t:
        sid = t.track_start("claude", "code", "p")
        t.track_error({"sessionId": sid, "error": ValueError("bad input"), "metadata": {"step": 2}})
        [error] = t.query(event_type="error")
        assert (error.session_id, error.error_type, error.error_message) == (sid, "ValueError", "bad input")
        assert error.metadata["step"] == 2
        with pytest.raises(InvalidEventError) as caught:
            t.track_error({"sesionId": sid, "error": "typo"})
        assert caught.value.field == "sesionId" and "session_id" in str(caught.value)


def test_get_insights_takes_the_seeds_options_and_its_summary_honours_categories(in_tmp):
    with TelemetryService(analytics={"enabled": True}) as t:
        for agent, count in (("claude", 3), ("gpt-4", 2), ("gemini", 7)):
            for _ in range(count):
                t.track_end(t.track_start(agent, "chat", "hi"), "completed")
        everything = t.get_insights("1h")
        chosen = t.get_insights({"timeRange": {"start": now_ms() - 86_400_000}, "categories": ["claude", "gpt-4"]})
    assert everything.summary[0].startswith("24 events")
    assert chosen.summary[0].startswith("10 events in claude, gpt-4, 5 sessions started")
    assert {f.subject for f in chosen.busiest_agents} == {"claude", "gpt-4"}


def test_get_audit_logs_takes_the_seeds_filter_mapping(in_tmp):
    with TelemetryService(plugins=["audit"]) as t:
        t.track({"category": "c"})
        t.export("jsonl")
        t.clean(30)
        entries = t.get_audit_logs({"action": "export", "since": now_ms() - 86_400_000})
        assert [e["action"] for e in entries] == ["export"]
        with pytest.raises(InvalidQueryError, match="since"):
            t.get_audit_logs({"action": "export", "since": HUGE})
        with pytest.raises(InvalidQueryError, match="takes no 'actor'"):
            t.get_audit_logs({"actor": "me"})


def test_create_batcher_define_metric_and_create_event_stream_take_a_mapping(in_tmp):
    with TelemetryService(analytics={"enabled": True}) as t:
        with t.create_batcher({"batchSize": 2, "flushInterval": 50, "maxRetries": 1}) as batcher:
            assert (batcher.batch_size, batcher.flush_interval, batcher.max_retries) == (2, 50, 1)
            batcher.add({"category": "batched"})
            batcher.add({"category": "batched"})
        definition = t.define_metric({"name": "token_usage", "type": "counter", "unit": "tokens",
                                      "description": "Total tokens consumed"})
        assert (definition["name"], definition["unit"]) == ("token_usage", "tokens")
        with t.create_event_stream({"category": "live", "eventType": "custom", "maxPending": 5}) as stream:
            t.track({"category": "other"})
            t.track({"category": "live", "action": "wanted"})
            t.flush()
            got = stream.get(timeout=5)
        assert got is not None and got.action == "wanted"
        assert len(t.query(category="batched")) == 2
        with pytest.raises(InvalidQueryError, match="takes no 'batch'"):
            t.create_batcher({"batch": 2})


# 4. health in the seed's shape


def test_health_has_the_seeds_connections_storage_units_and_a_measured_cpu(in_tmp):
    with TelemetryService() as t:
        for i in range(2000):
            t.track({"category": "c", "value": i})
        t.flush()
        first = t.get_health_status()
        data = first.to_dict()
    assert data["connections"]["active"] >= 1  # the SQLite writer holds the file open
    assert data["connections"]["by_component"]["sqlite"]["active"] == data["connections"]["active"]
    assert first.cpu["usage"] > 0  # the first call measures the work since start
    assert first.storage["used_bytes"] > 0 and first.storage["used"] == round(first.storage["used_bytes"] / 2**30, 6)
    assert first.storage["total"] > 0 and first.storage["total_bytes"] > first.storage["used_bytes"]
    assert {"memory", "cpu", "storage", "components", "counters", "uptime_s"} <= data.keys()


# 5. debug output


@pytest.mark.parametrize(("options", "env"), [
    ("debug=True", {}),
    ("log_level='debug'", {}),
    ("", {"DEBUG": "vibekit:telemetry:*"}),
    ("", {"DEBUG": "vibekit:*,-vibekit:telemetry"}),
    ("", {}),
], ids=["debug", "log_level", "DEBUG env", "DEBUG env excluding", "off"])
def test_debug_prints_the_kernels_log_to_stderr_when_the_app_set_up_no_logging(in_tmp, options, env):
    code = ("from vibekit_telemetry import TelemetryService\n"
            f"with TelemetryService({options}) as t:\n"
            "    t.track({'category': 'c'})\n"
            "    t.flush()\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_") and k != "DEBUG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_tmp,
                            env={**environment, **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    on = bool(options) or env.get("DEBUG") == "vibekit:telemetry:*"
    if on:
        assert "plugin sqlite registered" in result.stderr
        assert "flushed 1 events to sqlite" in result.stderr
    else:
        assert result.stderr == ""


def test_debug_goes_to_the_apps_own_logging_when_it_has_some(in_tmp):
    code = ("import logging, sys\n"
            "logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format='APP %(name)s %(message)s')\n"
            "from vibekit_telemetry import TelemetryService\n"
            "with TelemetryService(debug=True) as t:\n"
            "    t.track({'category': 'c'})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_tmp, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")})
    assert "APP vibekit_telemetry.plugins plugin sqlite registered" in result.stdout
    assert "vibekit_telemetry" not in result.stderr


# 6. event names and ids of events never stored


def test_on_an_unknown_event_name_is_an_error_listing_the_names(in_tmp):
    with TelemetryService() as t:
        with pytest.raises(UnknownEventError) as caught:
            t.on("nonsense", print)
        message = str(caught.value)
        for name in ("error", "flush", "drop", "anomaly", "memory:high", "connection:error"):
            assert name in message
        t.register_event("export:done")
        heard = []
        t.on("export:done", heard.append)
        t.emit("export:done", 3)
        assert heard == [3]


def test_a_rate_limited_track_returns_none_not_an_id_never_stored(in_tmp):
    limit = {"rate_limit": {"enabled": True, "max_requests": 3, "window_ms": 600_000}}
    with TelemetryService(reliability=limit) as t:
        ids = [t.track({"category": "c", "value": i}) for i in range(5)]
        sid = t.track_start("claude", "chat", "hi")  # start events are never thinned
        chunk = t.track_stream(sid, "over the limit")
        stored = {e.id for e in t.query(limit=100)}
        counters = t.get_health_status().counters
    assert ids[3:] == [None, None] and chunk is None
    assert set(ids[:3]) | {None} == set(ids) and set(ids[:3]) <= stored
    assert counters["sampled_out_by_reason"] == {"rate_limited": 3}


# 7. huge times: one parser with a range check


def test_the_time_range_ends_where_the_event_gates_does():
    assert (MIN_TIME_MS, MAX_TIME_MS) == (MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
    assert query_time("1h", "since", now=2_000_000_000_000) == 2_000_000_000_000 - 3_600_000
    # a bound may reach back to the epoch (since=0: everything), never past the latest time an event can have
    assert query_time(0, "since") == 0 and query_time(1_700_000_000, "since") == 1_700_000_000
    assert query_time(-10**30, "since") == -MAX_TIME_MS  # a retention cutoff centuries back: everything
    assert query_time("99999999999999999999d", "since") == -MAX_TIME_MS  # that far back is everything too
    for value in (10**19, HUGE, float("inf"), "1e400"):
        with pytest.raises(InvalidQueryError) as caught:
            query_time(value, "since")
        assert caught.value.field == "since"
    with pytest.raises(InvalidQueryError) as caught:
        time_range(("1h", HUGE), names=("since", "until"))
    assert caught.value.field == "until"


@pytest.mark.parametrize("call", [
    lambda t: t.query(since=10**19),
    lambda t: t.query({"timeRange": {"start": HUGE}}),
    lambda t: t.query(until=float("inf")),
    lambda t: list(t.iter_events(since=10**19)),
    lambda t: t.get_sessions(since=HUGE),
    lambda t: t.count_sessions(since=HUGE),
    lambda t: t.get_metrics((10**19, None)),
    lambda t: t.get_insights({"timeRange": {"start": HUGE}}),
], ids=["query", "query timeRange", "query inf", "iter_events", "get_sessions", "count_sessions", "get_metrics",
        "get_insights"])
def test_huge_times_in_python_are_an_invalid_query_error_naming_the_parameter(in_tmp, call):
    with TelemetryService(analytics={"enabled": True}) as t:
        t.track({"category": "c"})
        with pytest.raises(InvalidQueryError) as caught:
            call(t)
        assert caught.value.field in ("since", "until", "time_range.start")
        assert len(t.query()) == 1  # the service is unharmed


@pytest.fixture
def api(in_tmp):
    service = TelemetryService(data_dir=str(in_tmp / ".vibekit"), analytics={"enabled": True})
    server = service.start_api_server(port=0, rate_limit={"enabled": False})
    client = httpx.Client(base_url=server.url, timeout=30)
    yield service, client
    client.close()
    service.shutdown()


@pytest.mark.parametrize("path", ["/api/events", "/api/sessions", "/api/metrics", "/api/insights"])
@pytest.mark.parametrize("param", ["since", "until"])
def test_huge_times_over_http_are_a_400_naming_the_parameter(api, path, param):
    service, client = api
    service.track({"category": "c"})
    params = {param: HUGE} if param == "since" else {"since": "1h", param: HUGE}
    response = client.get(path, params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Validation Error"
    assert [d["field"] for d in body["details"]] == [param]
    assert "before 2200-01-01" in body["details"][0]["message"]
    assert client.get(path, params={"since": "1h"}).status_code == 200


@pytest.mark.parametrize("command", [["query", "--since", HUGE], ["query", "--until", HUGE],
                                     ["metrics", "--since", HUGE]], ids=["query since", "query until", "metrics"])
def test_huge_times_on_the_command_line_are_a_usage_error(in_tmp, command):
    with TelemetryService() as t:
        t.track({"category": "c"})
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    result = subprocess.run([TELEMETRY, *command], cwd=in_tmp, capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert command[1] in result.stderr and "before 2200-01-01" in result.stderr
