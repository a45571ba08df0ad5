"""The ``parquet`` plugin: export and import events as Apache Parquet with pyarrow.

The schema is fixed (``SCHEMA``), so files from different exports line up:
one column per event field, ``timestamp`` as ``timestamp[ms, UTC]``,
``value`` as float64, ``truncated`` as a list of strings.  Options:

* ``compression`` (or ``codec``, its older name): the Parquet codec, ``snappy``
  (default), ``zstd``, ``gzip``, ``lz4`` or ``none`` (``true``/``false`` for the
  default/none).  Parquet compresses itself, column by column, so this is what the
  seed's ``{compression: 'snappy'}`` and ``--compress zstd`` choose; the file stays
  a Parquet file any reader opens (a ``.parquet.gz`` name still gzips it whole);
* ``schema``: ``events``, the only one (``SCHEMA``), as the seed names it;
* ``metadata``: ``"json"`` (default) keeps metadata as a JSON string column and
  reads back exactly; ``"struct"`` writes a typed struct column (its type is
  inferred from the first row group) for query engines, and puts keys that do
  not fit it into ``metadata_extra`` (JSON).  Reading a struct back drops keys
  whose value is null;
* ``row_group_size``: events per row group (default 50,000), which bounds memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import functools

import orjson

from vibekit_telemetry import TelemetryEvent, hookimpl

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = ["SCHEMA", "ParquetFormat"]

_TEXT = ("id", "event_type", "category", "session_id", "parent_session_id", "action", "label", "agent", "mode",
         "prompt", "stream_data", "status", "error_type", "error_message", "error_stack")


@functools.cache
def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
        *((name, pa.string()) for name in _TEXT[1:]),
        ("value", pa.float64()), ("truncated", pa.list_(pa.string())), ("metadata", pa.string()),
    ])


def __getattr__(name: str) -> Any:
    # pyarrow loads on the first Parquet export or import, not when the CLI starts
    if name == "SCHEMA":
        return _schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
_CODECS = ("snappy", "zstd", "gzip", "lz4", "none")
_OPTIONS = {"compression", "codec", "metadata", "row_group_size", "schema"}
_SCHEMAS = ("events",)


#: the columns of ``SCHEMA``, in its order: what ``export_rows`` asks storage for
_COLUMNS = ("id", "timestamp", *_TEXT[1:], "value", "truncated", "metadata")


def _settings(options: dict[str, Any]) -> tuple[str, str, int]:
    """The codec, metadata mode and row group size of an export, each checked."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"parquet export has no options {sorted(unknown)} (it has {', '.join(sorted(_OPTIONS))})")
    if "codec" in options and "compression" in options and options["codec"] != options["compression"]:
        raise ValueError("parquet compression and codec are one option (codec is its older name): give one")
    codec = options.get("compression", options.get("codec", "snappy"))
    codec = "snappy" if codec is True else "none" if codec in (False, None) else codec
    if not isinstance(codec, str) or codec.lower() not in _CODECS:
        raise ValueError(f"parquet compression (its codec) must be one of {', '.join(_CODECS)}, got {codec!r}")
    schema = options.get("schema", "events")
    if schema not in _SCHEMAS:
        raise ValueError(f"parquet schema must be 'events' (one row per event, SCHEMA), got {schema!r}")
    mode = options.get("metadata", "json")
    if mode not in ("json", "struct"):
        raise ValueError(f"parquet metadata must be 'json' or 'struct', got {mode!r}")
    size = options.get("row_group_size", 50_000)
    if not isinstance(size, int) or size < 1:
        raise ValueError("row_group_size must be a positive integer")
    return codec.lower(), mode, size


class ParquetFormat:
    """Exports and imports ``parquet``."""

    name = "parquet"

    @hookimpl
    def export_formats(self) -> list[str]:
        """``parquet``."""
        return ["parquet"]

    @hookimpl
    def import_formats(self) -> list[str]:
        """``parquet``."""
        return ["parquet"]

    @hookimpl
    def export_options(self, format: str) -> list[str] | None:
        """``compression`` (the codec: Parquet compresses itself), ``codec``, ``metadata``, ``row_group_size``, ``schema``."""
        return sorted(_OPTIONS) if format == "parquet" else None

    @hookimpl
    def export(self, format: str, events: Iterable[TelemetryEvent], output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write row groups of ``row_group_size`` events."""
        if format != "parquet":
            return None
        codec, mode, size = _settings(options)
        writer: pq.ParquetWriter | None = None
        struct_type: pa.DataType | None = None
        count = 0
        batch: list[TelemetryEvent] = []
        try:
            for event in events:
                batch.append(event)
                if len(batch) >= size:
                    writer, struct_type = self._write(output, writer, batch, codec, mode, struct_type)
                    count += len(batch)
                    batch = []
            if batch or writer is None:
                writer, struct_type = self._write(output, writer, batch, codec, mode, struct_type)
                count += len(batch)
        finally:
            if writer is not None:
                writer.close()
        return count

    @hookimpl
    def export_rows(self, format: str, rows: Any, output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write the row groups ``export`` writes, building each column straight from storage rows.

        Struct metadata is typed from the metadata mappings, so it takes the event path.
        """
        if format != "parquet":
            return None
        codec, mode, size = _settings(options)
        if mode != "json":
            return None
        batches = rows(_COLUMNS)
        if batches is None:
            return None
        import pyarrow as pa

        types = [field.type for field in _schema()]
        at_truncated, loads = _COLUMNS.index("truncated"), orjson.loads
        writer: pq.ParquetWriter | None = None
        # each store batch becomes Arrow arrays at once, so a row group waits as Arrow data, not Python objects
        chunks: list[list[pa.Array]] = [[] for _ in _COLUMNS]
        pending = count = 0
        try:
            for batch in batches:
                start = 0
                while start < len(batch):  # a row group holds exactly row_group_size rows, as on the event path
                    room = size - pending
                    part = batch if start == 0 and len(batch) <= room else batch[start:start + room]
                    columns: list[Any] = list(zip(*part))
                    truncated = columns[at_truncated]
                    if truncated.count(None) != len(part):
                        columns[at_truncated] = [None if names is None else loads(names) for names in truncated]
                    for chunk, values, type_ in zip(chunks, columns, types):
                        chunk.append(pa.array(values, type_))
                    pending += len(part)
                    start += len(part)
                    if pending == size:
                        writer = self._write_group(output, writer, chunks, codec)
                        count += pending
                        chunks, pending = [[] for _ in _COLUMNS], 0
            if pending or writer is None:
                writer = self._write_group(output, writer, chunks, codec)
                count += pending
        finally:
            if writer is not None:
                writer.close()
        return count

    @staticmethod
    def _write_group(output: BinaryIO, writer: pq.ParquetWriter | None, chunks: list[list[pa.Array]],
                     codec: str) -> pq.ParquetWriter:
        """One row group from its columns' chunks, made contiguous: the bytes are then the event path's."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema()
        arrays = [pa.concat_arrays(chunk) if chunk else pa.array([], field.type) for chunk, field in zip(chunks, schema)]
        if writer is None:
            writer = pq.ParquetWriter(output, schema, compression=None if codec == "none" else codec)
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        return writer

    def _write(self, output: BinaryIO, writer: pq.ParquetWriter | None, events: list[TelemetryEvent], codec: str,
               mode: str, struct_type: pa.DataType | None) -> tuple[pq.ParquetWriter, pa.DataType | None]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {name: [] for name in (*_TEXT, "timestamp", "value", "truncated")}
        appenders = [(columns[name].append, name) for name in _TEXT]
        timestamps, values, truncated = columns["timestamp"].append, columns["value"].append, columns["truncated"].append
        for event in events:
            d = event.__dict__
            for append, name in appenders:
                append(d[name])
            timestamps(d["timestamp"])
            values(d["value"])
            truncated(list(d["truncated"]) if d["truncated"] else None)
        arrays = {name: pa.array(columns[name], pa.string()) for name in _TEXT}
        arrays["timestamp"] = pa.array(columns["timestamp"], pa.timestamp("ms", tz="UTC"))
        arrays["value"] = pa.array(columns["value"], pa.float64())
        arrays["truncated"] = pa.array(columns["truncated"], pa.list_(pa.string()))
        metas = [e.metadata for e in events]
        if mode == "json":
            arrays["metadata"] = pa.array([orjson.dumps(m).decode() if m else None for m in metas], pa.string())
            schema = _schema()
        else:
            if struct_type is None:
                sample = [m for m in metas if m]
                struct_type = pa.array(sample).type if sample else pa.struct([])
                if not pa.types.is_struct(struct_type) or struct_type.num_fields == 0:
                    struct_type = pa.struct([pa.field("_", pa.null())])
            names = {f.name for f in struct_type}
            fitting, extra = [], []
            for m in metas:
                rest = {k: v for k, v in m.items() if k not in names}
                fitting.append({k: v for k, v in m.items() if k in names} or None)
                extra.append(orjson.dumps(rest).decode() if rest else None)
            try:
                arrays["metadata"] = pa.array(fitting, struct_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # a value of another type than the first row group's
                arrays["metadata"] = pa.array([None] * len(metas), struct_type)
                extra = [orjson.dumps(m).decode() if m else None for m in metas]
            arrays["metadata_extra"] = pa.array(extra, pa.string())
            schema = pa.schema([*(f for f in _schema() if f.name != "metadata"), ("metadata", struct_type),
                                ("metadata_extra", pa.string())])
        table = pa.table({f.name: arrays[f.name] for f in schema}, schema=schema)
        if writer is None:
            writer = pq.ParquetWriter(output, schema, compression=None if codec == "none" else codec)
        writer.write_table(table)
        return writer, struct_type

    @hookimpl
    def import_events(self, format: str, input: BinaryIO, options: dict[str, Any]) -> Iterable[Mapping[str, Any]] | None:
        """Read row groups back into events."""
        if format != "parquet":
            return None
        return _read(input)


def _read(input: BinaryIO) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (hasattr(input, "seekable") and input.seekable()):
        # Parquet is read from its footer: copy a stream (a zstd-compressed export) to a temporary file first
        spooled = tempfile.TemporaryFile()
        shutil.copyfileobj(input, spooled, 2**20)
        spooled.seek(0)
        input = spooled  # type: ignore[assignment]
    try:
        file = pq.ParquetFile(input)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not a Parquet file: {exc}") from None
    for batch in file.iter_batches(batch_size=10_000):
        if "timestamp" in batch.schema.names:  # exact epoch milliseconds, without a trip through datetime
            index = batch.schema.get_field_index("timestamp")
            batch = batch.set_column(index, "timestamp", batch.column(index).cast(pa.int64()))
        for row in batch.to_pylist():
            event = {k: v for k, v in row.items() if v is not None and k not in ("metadata", "metadata_extra")}
            metadata: dict[str, Any] = {}
            raw = row.get("metadata")
            if isinstance(raw, str):
                metadata = orjson.loads(raw)
            elif isinstance(raw, dict):
                metadata = {k: v for k, v in raw.items() if v is not None and k != "_"}
            if row.get("metadata_extra"):
                metadata.update(orjson.loads(row["metadata_extra"]))
            event["metadata"] = metadata
            yield event
