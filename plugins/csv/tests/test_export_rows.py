"""CSV straight from SQLite rows (``export_rows``) is byte for byte the CSV of the event path."""

from __future__ import annotations

import io

import pytest

from vibekit_telemetry import TelemetryService, hookimpl
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
from vibekit_telemetry_csv import CSVFormat


@pytest.fixture
def db(export_db):
    return export_db


@pytest.fixture
def fast(monkeypatch):
    """What each ``export_rows`` call of the CSV plugin returned (a count when it wrote the export)."""
    return export_rows_spy(monkeypatch, CSVFormat)


FILTERS = [{}, {"category": "user-action"}, {"session_id": "s-1"}, {"timeRange": {"start": BASE + 2, "end": BASE + 110}},
           {"metadata": {"kind": "odd"}}, {"category": "nobody"}]
OPTIONS = [{}, {"delimiter": ";"}, {"delimiter": "\t", "header": False}, {"headers": False}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: ",".join(f) or "all")
def test_rows_and_events_export_the_same_bytes(db, tmp_path, fast, flt, options):
    from_rows = _open(db, tmp_path / "rows").export("csv", dict(flt), **options)
    from_events = _open(db, tmp_path / "events", ReadAsStored()).export("csv", dict(flt), **options)
    assert from_rows == from_events
    expected = len(list(_open(db, tmp_path / "q").iter_events(dict(flt))))
    assert fast == [expected, None]
    if not flt and not options:
        assert expected == 36 and "Réparer le bug 🐛" in from_rows.decode() and b'""quoted""' in from_rows


def test_flattened_metadata_takes_the_event_path(db, tmp_path, fast):
    data = _open(db, tmp_path / "rows").export("csv", metadata="flatten")
    assert data == _open(db, tmp_path / "events", ReadAsStored()).export("csv", metadata="flatten")
    assert fast == [None, None] and b"metadata.nested.c.d" in data


def test_store_batches_split_anywhere(db, tmp_path, fast, monkeypatch):
    from vibekit_telemetry_sqlite import export_rows

    expected = _open(db, tmp_path / "events", ReadAsStored()).export("csv")
    monkeypatch.setattr(export_rows, "BATCH", 5)
    assert _open(db, tmp_path / "rows").export("csv") == expected and fast == [None, 36]


def test_an_encrypted_store_is_exported_decrypted(tmp_path, monkeypatch, fast):
    pytest.importorskip("vibekit_telemetry_encryption")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", "ab" * 32)
    with TelemetryService(security={"encryption": {"enabled": True}}) as service:
        sid = service.track_start("claude", "code", SECRET, metadata={"note": "private note"})
        service.track_end(sid, "completed")
        data = service.export("csv")
        target = TelemetryService(data_dir=str(tmp_path / "target"))
        try:
            target.import_events(io.BytesIO(data), "csv")
            assert [e.to_dict() for e in target.iter_events()] == [e.to_dict() for e in service.iter_events()]
        finally:
            target.shutdown()
    assert fast == [None]  # asked, and it left the export to the event path
    assert SECRET.encode() in data and b"private note" in data and b"enc:v2:" not in data
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".vibekit").rglob("*.db"))
    assert b"enc:v2:" in stored and SECRET.encode() not in stored


def test_a_store_without_rows_exports_through_events(tmp_path, db, fast):
    from_sqlite = _open(db, tmp_path / "sqlite").export("csv")
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path / "memory"),
                          max_field_bytes=1024) as memory:
        _seed(memory)
        from_memory = memory.export("csv")
    assert fast == [36, None] and from_memory == from_sqlite


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|", " ", "a", "1", ".", "é", "🐛"])
def test_the_columnar_writer_writes_what_csv_writer_writes(delimiter):
    import csv
    import random

    from vibekit_telemetry_csv.columnar import columnar_writer

    rng = random.Random(delimiter)
    alphabet = ["a", "1", ".", "-", " ", '"', ",", ";", "\t", "\n", "\r", "\x00", "é", "🐛", "\u2028", delimiter]
    values = [lambda: None, lambda: "", lambda: "".join(rng.choices(alphabet, k=rng.randint(1, 8))),
              lambda: rng.randint(-10**12, 10**18), lambda: rng.uniform(-1e6, 1e6),
              lambda: rng.random() * 10**rng.randint(-300, 300)]
    rows = [tuple(rng.choice(values)() for _ in range(19)) for _ in range(2000)]
    rows += [(None,) * 19, ("",) * 19, tuple(f"plain{i}" for i in range(19)), tuple(f'"{i}"' for i in range(19))]
    write = columnar_writer(delimiter, 19)
    assert write is not None
    expected = io.StringIO(newline="")
    csv.writer(expected, delimiter=delimiter, lineterminator="\n").writerows(rows)
    assert write(rows) == expected.getvalue()
    assert write(rows[:1]) + write(rows[1:]) == expected.getvalue() and write([]) == ""
    crowded = [*rows[:50], ("\x00\x01\x02\uffff",) * 19]  # no character left to part fields with
    expected = io.StringIO(newline="")
    csv.writer(expected, delimiter=delimiter, lineterminator="\n").writerows(crowded)
    assert write(crowded) == expected.getvalue()


def test_without_the_columnar_writer_rows_go_through_csv_writer(db, tmp_path, fast, monkeypatch):
    import vibekit_telemetry_csv

    expected = _open(db, tmp_path / "events", ReadAsStored()).export("csv", delimiter=";")
    monkeypatch.setattr(vibekit_telemetry_csv, "columnar_writer", lambda delimiter, width: None)
    assert _open(db, tmp_path / "rows").export("csv", delimiter=";") == expected and fast == [None, 36]


def test_a_configured_exporter_of_the_format_keeps_its_precedence(db, tmp_path, fast):
    class OwnCSV:
        name = "own-csv"

        @hookimpl
        def export_formats(self):
            return ["csv"]

        @hookimpl
        def export(self, format, events, output, options):
            if format != "csv":
                return None
            count = sum(1 for _ in events)
            output.write(b"own %d\n" % count)
            return count

    service = _open(db, tmp_path / "own", OwnCSV())
    service.import_events(io.BytesIO(b"id,category\n"), "csv")  # which loads the csv plugin, after OwnCSV
    assert [impl.plugin for impl in service.host.impls("export_rows")] == ["csv"]
    assert service.export("csv") == b"own 36\n" and fast == []
