"""Parquet: the format contract, a stable schema, codecs, row groups and struct metadata."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import FormatContract
from vibekit_telemetry_parquet import SCHEMA


class TestParquet(FormatContract):
    format = "parquet"


@pytest.fixture
def service(tmp_path):
    with TelemetryService(data_dir=str(tmp_path / "s")) as svc:
        for i in range(25):
            svc.track({"category": "a", "action": "x", "value": i, "metadata": {"model": "m1", "n": i}})
        svc.track({"category": "b", "metadata": {"model": "m2", "late_key": "only here"}})
        yield svc


def test_the_schema_is_fixed_and_codecs_apply(service):
    for codec in ("snappy", "zstd"):
        data = service.export("parquet", codec=codec, row_group_size=10)
        file = pq.ParquetFile(io.BytesIO(data))
        assert file.schema_arrow.equals(SCHEMA)
        assert file.metadata.num_row_groups == 3 and file.metadata.num_rows == 26
        assert file.metadata.row_group(0).column(0).compression.lower() == codec


def test_struct_metadata_is_typed_and_keeps_keys_that_do_not_fit(service, tmp_path):
    data = service.export("parquet", metadata="struct", row_group_size=25)
    table = pq.read_table(io.BytesIO(data))
    struct = table.schema.field("metadata").type
    assert pa.types.is_struct(struct) and struct.field("n").type == pa.int64()
    target = TelemetryService(data_dir=str(tmp_path / "t"))
    try:
        target.import_events(io.BytesIO(data), "parquet")
        late = target.query(category="b")[0]
        assert late.metadata == {"model": "m2", "late_key": "only here"}
    finally:
        target.shutdown()


def test_not_parquet_is_a_clear_error(service):
    with pytest.raises(ValueError, match="not a Parquet file"):
        list(service.import_events(io.BytesIO(b"PAR1 nope"), "parquet").errors)
