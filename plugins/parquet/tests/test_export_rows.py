"""Parquet straight from SQLite rows (``export_rows``) is byte for byte the file of the event path."""

from __future__ import annotations

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
from vibekit_telemetry_parquet import ParquetFormat


@pytest.fixture
def db(export_db):
    return export_db


@pytest.fixture
def fast(monkeypatch):
    """What each ``export_rows`` call of the Parquet plugin returned (a count when it wrote the export)."""
    return export_rows_spy(monkeypatch, ParquetFormat)


FILTERS = [{}, {"category": "user-action"}, {"session_id": "s-1"}, {"timeRange": {"start": BASE + 2, "end": BASE + 110}},
           {"metadata": {"kind": "odd"}}, {"category": "nobody"}]
OPTIONS = [{}, {"compression": "zstd"}, {"codec": "none"}, {"row_group_size": 7}, {"row_group_size": 36},
           {"row_group_size": 1, "compression": "gzip"}]


def _table(data: bytes):
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(data))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: ",".join(f) or "all")
def test_rows_and_events_export_the_same_bytes(db, tmp_path, fast, flt, options):
    from_rows = _open(db, tmp_path / "rows").export("parquet", dict(flt), **options)
    from_events = _open(db, tmp_path / "events", ReadAsStored()).export("parquet", dict(flt), **options)
    assert from_rows == from_events
    file = _table(from_rows)
    expected = len(list(_open(db, tmp_path / "q").iter_events(dict(flt))))
    assert fast == [expected, None] and file.metadata.num_rows == expected


@pytest.mark.parametrize("row_group_size", [3, 4, 5, 9, 50])
def test_row_groups_are_cut_where_the_event_path_cuts_them_whatever_the_store_batches(db, tmp_path, fast, monkeypatch,
                                                                                      row_group_size):
    from vibekit_telemetry_sqlite import export_rows

    expected = _open(db, tmp_path / "events", ReadAsStored()).export("parquet", row_group_size=row_group_size)
    monkeypatch.setattr(export_rows, "BATCH", 4)
    data = _open(db, tmp_path / "rows").export("parquet", row_group_size=row_group_size)
    assert data == expected and fast == [None, 36]
    sizes = [_table(data).metadata.row_group(i).num_rows for i in range(_table(data).metadata.num_row_groups)]
    assert sum(sizes) == 36 and all(size == row_group_size for size in sizes[:-1])


def test_struct_metadata_takes_the_event_path(db, tmp_path, fast):
    flt = {"category": "user-action"}  # (the mixed list in the start event's metadata has no struct type)
    data = _open(db, tmp_path / "rows").export("parquet", flt, metadata="struct")
    assert data == _open(db, tmp_path / "events", ReadAsStored()).export("parquet", flt, metadata="struct")
    assert fast == [None, None]


def test_what_is_written_reads_back_as_the_events(db, tmp_path, fast):
    data = _open(db, tmp_path / "rows").export("parquet")
    target = _open(tmp_path / "target.db", tmp_path / "target")
    target.import_events(io.BytesIO(data), "parquet")
    assert [e.to_dict() for e in target.iter_events()] == [e.to_dict() for e in _open(db, tmp_path / "q").iter_events()]
    assert fast == [36]


def test_an_encrypted_store_is_exported_decrypted(tmp_path, monkeypatch, fast):
    pytest.importorskip("vibekit_telemetry_encryption")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", "ab" * 32)
    with TelemetryService(security={"encryption": {"enabled": True}}) as service:
        sid = service.track_start("claude", "code", SECRET, metadata={"note": "private note"})
        service.track_end(sid, "completed")
        data = service.export("parquet", codec="none")
        expected = [e.to_dict() for e in service.iter_events()]
    assert fast == [None]  # asked, and it left the export to the event path
    rows = _table(data).read().to_pylist()
    assert [row["prompt"] for row in rows] == [e.get("prompt") for e in expected] and rows[0]["prompt"] == SECRET
    metadata = [orjson.loads(row["metadata"]) if row["metadata"] else {} for row in rows]
    assert metadata == [e["metadata"] for e in expected]
    assert b"enc:v2:" not in data
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".vibekit").rglob("*.db"))
    assert b"enc:v2:" in stored and SECRET.encode() not in stored


def test_a_store_without_rows_exports_through_events(tmp_path, db, fast):
    from_sqlite = _open(db, tmp_path / "sqlite").export("parquet")
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path / "memory"),
                          max_field_bytes=1024) as memory:
        _seed(memory)
        from_memory = memory.export("parquet")
    assert fast == [36, None] and from_memory == from_sqlite
