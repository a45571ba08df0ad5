"""JSON and JSON Lines: the format contract, plus errors that name the line."""

from __future__ import annotations

import io

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import FormatContract


class TestJSONLines(FormatContract):
    format = "jsonl"


class TestJSONArray(FormatContract):
    format = "json"


def test_a_bad_line_is_named(tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service:
        data = b'{"category": "a"}\n{"category": "b"\n'
        with pytest.raises(ValueError, match="line 2"):
            service.import_events(io.BytesIO(data), "jsonl")


def test_any_json_array_of_events_can_be_imported(tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service:
        result = service.import_events(io.BytesIO(b'[{"category": "a", "action": "x"}, {"category": "b"}]'), "json")
        assert result.imported == 2
        assert {e.category for e in service.query()} == {"a", "b"}


def test_invalid_events_are_counted_and_the_rest_imported(tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service:
        data = b'{"category": "ok"}\n{"category": "x", "event_type": "bogus"}\n{"category": "ok2"}\n'
        result = service.import_events(io.BytesIO(data), "jsonl")
        assert (result.imported, result.rejected) == (2, 1)
        assert "event_type" in result.errors[0]


def test_options_it_does_not_have_are_refused(tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service, pytest.raises(ValueError, match="unknown export key") as err:
        service.export("jsonl", delimiter=";")
    assert "options of jsonl: none" in str(err.value) and "session_id" in str(err.value)
