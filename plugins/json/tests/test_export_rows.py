"""Exports straight from SQLite rows (``export_rows``) write exactly what the event path writes."""

from __future__ import annotations

import gzip
import io

import orjson
import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import (  # the export_rows helpers the exporters' tests share
    EXPORT_BASE as BASE,
    EXPORT_SECRET as SECRET,
    ReadAsStored,
    export_db,  # noqa: F401 - a fixture
    export_rows_spy,
    shut_down_export_services,  # noqa: F401 - an autouse fixture
)
from vibekit_telemetry.testing import open_export_service as _open
from vibekit_telemetry.testing import seed_export_events as _seed
from vibekit_telemetry_json import JSONFormats


@pytest.fixture
def db(export_db):
    return export_db


@pytest.fixture
def fast(monkeypatch):
    """What each ``export_rows`` call of the JSON plugin returned (a count when it wrote the export)."""
    return export_rows_spy(monkeypatch, JSONFormats)


FILTERS = [
    {}, {"category": "user-action"}, {"session_id": "s-1"}, {"event_type": "stream"},
    {"timeRange": {"start": BASE + 2, "end": BASE + 110}}, {"since": BASE + 105}, {"sessions": ["s-1", "s-2"]},
    {"metadata": {"kind": "odd"}}, {"category": "nobody"}, {"text": "bug"},
]


@pytest.mark.parametrize("format", ["jsonl", "json"])
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: ",".join(f) or "all")
def test_rows_and_events_export_the_same_bytes(db, tmp_path, fast, format, flt):
    from_rows = _open(db, tmp_path / "rows").export(format, dict(flt))
    from_events = _open(db, tmp_path / "events", ReadAsStored()).export(format, dict(flt))
    assert from_rows == from_events
    written = orjson.loads(from_rows) if format == "json" else [orjson.loads(line) for line in from_rows.splitlines()]
    assert fast == [None if "text" in flt else len(written), None]  # a text search is no scan: the event path
    if not flt:
        assert written == [e.to_dict() for e in _open(db, tmp_path / "q").iter_events()]


def test_store_batches_split_anywhere(db, tmp_path, fast, monkeypatch):
    from vibekit_telemetry_sqlite import export_rows

    expected = _open(db, tmp_path / "events", ReadAsStored()).export("jsonl")
    monkeypatch.setattr(export_rows, "BATCH", 4)
    assert _open(db, tmp_path / "rows").export("jsonl") == expected and fast == [None, 36]


def test_compression_and_progress_are_the_same_on_both_paths(db, tmp_path, fast, monkeypatch):
    from vibekit_telemetry_sqlite import export_rows

    monkeypatch.setattr(export_rows, "BATCH", 7)
    reports: dict[str, list[int]] = {"rows": [], "events": []}
    out = {}
    for name, plugins in (("rows", ()), ("events", (ReadAsStored(),))):
        path = tmp_path / f"{name}.jsonl.gz"
        _open(db, tmp_path / name, *plugins).export(output=path, progress=reports[name].append)
        out[name] = gzip.decompress(path.read_bytes())
    assert out["rows"] == out["events"] and fast == [36, None]
    assert reports["rows"] == reports["events"] == [0, 36]


def test_progress_counts_every_five_thousand_events_on_the_row_path(tmp_path, fast):
    path = tmp_path / "many.db"
    with _open(path, tmp_path / "seed") as service:
        service.track_all([{"category": "bulk", "timestamp": BASE + i} for i in range(12_001)])
        reports: list[int] = []
        service.export("jsonl", output=io.BytesIO(), progress=reports.append)
    assert reports == [0, 5000, 10000, 12001] and fast == [12_001]


def test_an_encrypted_store_is_exported_decrypted(tmp_path, monkeypatch, fast):
    pytest.importorskip("vibekit_telemetry_encryption")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", "ab" * 32)
    with TelemetryService(security={"encryption": {"enabled": True}}) as service:
        sid = service.track_start("claude", "code", SECRET, metadata={"note": "private note"})
        service.track_end(sid, "completed")
        data = service.export("jsonl")
        expected = [e.to_dict() for e in service.iter_events()]
    assert fast == [None]  # asked, and it left the export to the event path
    assert [orjson.loads(line) for line in data.splitlines()] == expected
    assert SECRET.encode() in data and b"private note" in data and b"enc:v2:" not in data
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".vibekit").rglob("*.db"))
    assert b"enc:v2:" in stored and SECRET.encode() not in stored


def test_a_store_without_rows_exports_through_events(tmp_path, db, fast):
    from_sqlite = _open(db, tmp_path / "sqlite").export("jsonl")
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path / "memory"),
                          max_field_bytes=1024) as memory:
        _seed(memory)
        from_memory = memory.export("jsonl")
    assert fast[0] == 36 and fast[1:] == [None]
    assert from_memory == from_sqlite


def test_sqlite_scan_rows_gives_stored_json_and_refuses_what_scan_refuses(db):
    from vibekit_telemetry import QueryFilter
    from vibekit_telemetry_sqlite import SQLiteStorage

    store = SQLiteStorage.open(db)
    try:
        batches = list(store.scan_rows(QueryFilter(session_id="s-1", order="asc"), ("id", "metadata", "truncated")))
        rows = [row for batch in batches for row in batch]
        assert [row[0] for row in rows] == ["e-00", "e-01", "e-02", "e-03", "e-04"]
        assert orjson.loads(rows[0][1])["nested"] == {"a": [1, 2.5, {"b": None}], "c": {"d": "é"}}
        assert orjson.loads(rows[0][2]) == ["prompt"] and rows[1][1:] == (None, None)  # empty forms are None
        for refused in (QueryFilter(limit=5), QueryFilter(offset=1), QueryFilter(text="bug")):
            assert store.scan_rows(refused, ("id",)) is None
        assert store.scan_rows(QueryFilter(), ("id", "colour")) is None
    finally:
        store.close()
