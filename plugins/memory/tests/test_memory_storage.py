"""The memory store against the storage contract, plus its own bound."""

from __future__ import annotations

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import StorageContract


class TestMemoryContract(StorageContract):
    @pytest.fixture
    def make_service(self, tmp_path):
        def make(**overrides):
            return TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path), **overrides)

        return make


def test_loaded_by_name_through_its_entry_point(tmp_path):
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path)) as telemetry:
        assert telemetry.plugin_names() == ["memory"]
        assert "store" in telemetry.host.hooks_of("memory")


def test_max_events_evicts_oldest_and_reports_it(tmp_path):
    with TelemetryService(storage=[{"type": "memory", "options": {"max_events": 10}}], data_dir=str(tmp_path)) as t:
        for i in range(25):
            t.track({"event_type": "custom", "category": "c", "value": i, "timestamp": 1_700_000_000_000 + i})
        values = [e.value for e in t.query(order="asc")]
        assert values == list(range(15, 25))
        assert t.get_health_status().components["memory"]["evicted"] == 15


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"storage\[0\]\.options\.max_event: unknown key"):
        TelemetryService(storage=[{"type": "memory", "options": {"max_event": 10}}], data_dir=str(tmp_path))
