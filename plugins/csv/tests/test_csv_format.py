"""CSV: the format contract, delimiters, headers and flattened metadata."""

from __future__ import annotations

import csv
import io

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import FormatContract
from vibekit_telemetry_csv import COLUMNS


class TestCSV(FormatContract):
    format = "csv"
    exact_empty_strings = False


@pytest.fixture
def service(tmp_path):
    with TelemetryService(data_dir=str(tmp_path / "s")) as svc:
        svc.track({"category": "a", "action": "x", "value": 2, "metadata": {"model": "m1", "usage": {"in": 3}}})
        svc.track({"category": "b", "label": "semi;colon", "metadata": {"model": "m2", "extra": [1, 2]}})
        yield svc


def test_delimiter_and_header_options(service, tmp_path):
    data = service.export("csv", delimiter=";").decode()
    rows = list(csv.reader(io.StringIO(data), delimiter=";"))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 3
    assert '"semi;colon"' in data
    target = TelemetryService(data_dir=str(tmp_path / "t"))
    try:
        assert target.import_events(io.BytesIO(data.encode()), "csv").imported == 2  # the delimiter is detected
    finally:
        target.shutdown()
    headless = service.export("csv", header=False).decode()
    assert len(headless.splitlines()) == 2 and not headless.startswith("id")


def test_flattened_metadata_gets_a_column_per_key(service, tmp_path):
    data = service.export("csv", metadata="flatten").decode()
    header = next(csv.reader(io.StringIO(data)))
    assert {"metadata.model", "metadata.usage.in", "metadata.extra"} <= set(header)
    target = TelemetryService(data_dir=str(tmp_path / "t"))
    try:
        target.import_events(io.BytesIO(data.encode()), "csv")
        metas = sorted((e.metadata for e in target.query()), key=lambda m: m["model"])
        assert metas == [{"model": "m1", "usage": {"in": 3}}, {"model": "m2", "extra": [1, 2]}]
    finally:
        target.shutdown()


@pytest.mark.parametrize(("options", "message"), [({"delimiter": "ab"}, "one character"),
                                                   ({"metadata": "xml"}, "metadata"), ({"colour": 1}, "unknown export key"),
                                                   ({"headers": "yes"}, "true or false")])
def test_bad_options_are_refused(service, options, message):
    with pytest.raises(ValueError, match=message):
        service.export("csv", **options)


def test_a_file_that_is_not_our_csv_is_refused_clearly(service):
    with pytest.raises(ValueError, match="no category column"):
        service.import_events(io.BytesIO(b"name,age\nbob,3\n"), "csv")
