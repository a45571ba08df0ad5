"""Plugin discovery, assembly order, isolation and the errors for bad plugins."""

from __future__ import annotations

import pytest

from vibekit_telemetry import ConfigError, PluginError, TelemetryEvent, TelemetryService, hookimpl
from vibekit_telemetry.plugins import installed_plugins


class Tagger:
    def __init__(self, name, log):
        self.name = name
        self.log = log

    @hookimpl
    def before_track(self, event):
        self.log.append(self.name)
        return TelemetryEvent.from_dict({**event.to_dict(), "metadata": {**event.metadata, "seen": [*event.metadata.get("seen", []), self.name]}})


def test_installed_plugins_are_listed_with_their_distribution():
    found = {p.name: p for p in installed_plugins()}
    assert found["sqlite"].distribution == "vibekit-telemetry-sqlite"
    assert found["memory"].version == "0.1.0"


def test_unknown_plugin_lists_installed_and_suggests_a_package(in_tmp):
    with pytest.raises(PluginError) as info:
        TelemetryService(plugins=["nonesuch"])
    text = str(info.value)
    assert "unknown plugin 'nonesuch'" in text and "sqlite" in text and "memory" in text
    assert "pip install vibekit-telemetry-nonesuch" in text


def test_duplicate_plugin_names_are_an_error(in_tmp):
    with pytest.raises(PluginError, match="more than once"):
        TelemetryService(storage=[{"type": "memory"}], plugins=["memory"])
    with pytest.raises(PluginError, match="more than once"):
        TelemetryService(storage=[{"type": "memory"}], plugins=["analytics", "analytics"])


def test_a_plugin_both_listed_and_enabled_by_its_section_loads_once(in_tmp):
    """``plugins = ["analytics"]`` with ``[analytics] enabled = true``: one plugin, both option sets."""
    with TelemetryService(storage=[{"type": "memory"}], analytics={"enabled": True, "minute_retention": "3d"},
                          plugins=[{"name": "analytics", "options": {"hour_retention": "30d"}}]) as t:
        assert t.host.order.count("analytics") == 1
        plugin = t.host.meta["analytics"]["object"]
        assert (plugin.config.minute_retention, plugin.config.hour_retention) == ("3d", "30d")


def test_require_plugin_loads_an_installed_plugin_once_with_options(in_tmp):
    with TelemetryService(storage=[{"type": "memory"}]) as t:
        t.require_plugin("analytics", options={"anomaly": {"enabled": True, "interval": 15_000}})
        plugin = t.host.meta["analytics"]["object"]
        assert plugin.config.anomaly.enabled and plugin.config.anomaly.interval == 15_000
        t.require_plugin("analytics", options={"anomaly": {"enabled": False}})  # already loaded: kept as it is
        assert t.host.meta["analytics"]["object"] is plugin and plugin.config.anomaly.enabled
        with pytest.raises(PluginError, match="nonesuch"):
            t.require_plugin("nonesuch")
        with pytest.raises(ConfigError, match="anomaly: unknown key"):
            t.require_plugin("pii", options={"anomaly": {}})  # options are checked as in a configuration file


def test_plugin_that_fails_to_import_names_distribution_version_and_cause(in_tmp, install_plugin):
    install_plugin("broken", "raise RuntimeError('needs libfoo >= 2')\n", dist="acme-broken", version="0.4.2")
    with pytest.raises(PluginError) as info:
        TelemetryService(storage=[{"type": "memory"}], plugins=["broken"])
    text = str(info.value)
    assert "'broken'" in text and "acme-broken 0.4.2" in text and "needs libfoo >= 2" in text


def test_third_party_plugin_with_config_through_entry_point(in_tmp, install_plugin):
    install_plugin("stamp", """
import attrs
from vibekit_telemetry import hookimpl

class Plugin:
    @attrs.frozen
    class Config:
        label: str = "default"

    def __init__(self, config):
        self.config = config

    @hookimpl
    def before_track(self, event):
        return attrs.evolve(event, label=self.config.label)
""")
    with TelemetryService(storage=[{"type": "memory"}], plugins=[{"name": "stamp", "options": {"label": "hi"}}]) as t:
        t.track({"category": "c"})
        assert t.query()[0].label == "hi"
    with pytest.raises(ValueError, match=r"plugins\[0\]\.options\.lable: unknown key"):
        TelemetryService(storage=[{"type": "memory"}], plugins=[{"name": "stamp", "options": {"lable": "x"}}])


def test_misspelled_hook_is_caught(in_tmp):
    class Typo:
        @hookimpl
        def before_trak(self, event):
            return event

    with pytest.raises(PluginError, match="before_trak"):
        TelemetryService(storage=[{"type": "memory"}], plugins=[Typo()])


def test_before_track_chain_runs_in_configuration_order(in_tmp):
    log: list[str] = []
    plugins = [Tagger("first", log), Tagger("second", log), Tagger("third", log)]
    with TelemetryService(storage=[{"type": "memory"}], plugins=plugins) as t:
        t.track({"category": "c"})
        assert log == ["first", "second", "third"]
        assert t.query()[0].metadata["seen"] == ["first", "second", "third"]


def test_before_track_can_drop_and_failures_drop_rather_than_leak(in_tmp):
    class DropSecrets:
        name = "drop"

        @hookimpl
        def before_track(self, event):
            return None if event.category == "secret" else event

    class Explodes:
        name = "explodes"

        @hookimpl
        def before_track(self, event):
            if event.category == "boom":
                raise RuntimeError("redactor crashed")
            return event

    errors = []
    with TelemetryService(storage=[{"type": "memory"}], plugins=[DropSecrets(), Explodes()]) as t:
        t.on("error", errors.append)
        assert t.track({"category": "secret"}) is None
        assert t.track({"category": "boom"}) is None
        assert t.track({"category": "fine"}) is not None
        assert [e.category for e in t.query()] == ["fine"]
        health = t.get_health_status()
        assert health.counters["filtered"] == 1
        assert health.counters["dropped_by_reason"] == {"before_track_error": 1}
        assert health.components["explodes"]["failures"] == 1
        assert "redactor crashed" in str(errors[0])


def test_a_failing_store_does_not_stop_the_others(in_tmp):
    class FlakySink:
        name = "flaky"

        @hookimpl
        def store(self, events):
            raise OSError("disk on fire")

    errors = []
    with TelemetryService(storage=[{"type": "memory"}], plugins=[FlakySink()]) as t:
        t.on("error", errors.append)
        for i in range(10):
            t.track({"category": "c", "value": i})
        assert len(t.query()) == 10
        health = t.get_health_status()
        assert health.counters["stored"] == 10
        assert health.components["flaky"]["failures"] >= 1
        assert "disk on fire" in health.components["flaky"]["last_error"]
        assert not health.healthy
        assert any("disk on fire" in str(e) for e in errors)


def test_failing_primary_store_counts_drops(in_tmp):
    class DeadStore:
        name = "dead"

        @hookimpl
        def store(self, events):
            raise OSError("gone")

        @hookimpl
        def query(self, filter):
            return []

    # By default a failing store's batches wait in the journal: buffered, not lost.
    with TelemetryService(storage=[], plugins=[DeadStore()]) as t:
        for _ in range(5):
            t.track({"category": "c"})
        t.flush()
        health = t.get_health_status()
        assert health.counters["buffered"] == 5
        assert health.counters["dropped"] == 0 and health.counters["stored"] == 0
    # Without the journal they are lost, and counted with the reason.
    with TelemetryService(storage=[], plugins=[DeadStore()], reliability={"buffer_on_error": False}) as t:
        for _ in range(5):
            t.track({"category": "c"})
        t.flush()
        health = t.get_health_status()
        assert health.counters["dropped_by_reason"] == {"storage_error": 5}
        assert health.counters["stored"] == 0


def test_startup_failure_names_the_plugin(in_tmp):
    class Broken:
        name = "broken-start"

        @hookimpl
        def startup(self, service):
            raise RuntimeError("cannot reach the collector")

    with pytest.raises(PluginError, match="'broken-start' failed to start.*cannot reach the collector"):
        TelemetryService(storage=[{"type": "memory"}], plugins=[Broken()])


def test_module_plugins_and_unregister(in_tmp):
    import types

    module = types.ModuleType("counting_plugin")
    seen = []

    @hookimpl
    def after_track(event):
        seen.append(event.id)

    module.after_track = after_track
    with TelemetryService(storage=[{"type": "memory"}], plugins=[module]) as t:
        event_id = t.track({"category": "c"})
        t.flush()
        assert seen == [event_id]
        t.host.unregister("counting_plugin")
        t.track({"category": "c"})
        t.flush()
        assert seen == [event_id]
