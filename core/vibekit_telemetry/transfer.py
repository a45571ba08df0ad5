"""What exports and imports share: formats and compression read from file names, and compressed streams.

Exporter plugins write plain bytes; the kernel wraps their output in gzip or
zstd when asked (``compression=`` or a ``.gz``/``.zst`` file name), and
importers read through the matching decompressor, found by the stream's magic
bytes.  zstd needs the ``zstandard`` package (a dependency of the exporter plugins).
"""

from __future__ import annotations

import contextlib
import gzip
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from .errors import PluginError

COMPRESSIONS = ("gzip", "zstd")
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMAT_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
                    ".parquet": "parquet", ".pb": "otlp-proto"}
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def infer_from_name(name: str) -> tuple[str | None, str | None]:
    """``(format, compression)`` from a file name: ``events.jsonl.gz`` is ``("jsonl", "gzip")``.

    ``*.otlp.json`` is OTLP/JSON; unknown suffixes give ``None``.
    """
    lower = name.lower().rsplit("/", 1)[-1]
    compression = None
    for suffix, kind in _COMPRESSION_SUFFIXES.items():
        if lower.endswith(suffix):
            compression = kind
            lower = lower[: -len(suffix)]
            break
    if lower.endswith(".otlp.json"):
        return "otlp", compression
    for suffix, fmt in _FORMAT_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt, compression
    return None, compression


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise PluginError("zstd compression needs the zstandard package: pip install zstandard") from None
    return zstandard


@contextlib.contextmanager
def compressed_writer(output: BinaryIO, compression: str | None, level: int | None = None) -> Iterator[BinaryIO]:
    """``output`` itself, or a gzip/zstd stream onto it, finished (but ``output`` left open) on exit."""
    if compression is None:
        yield output
        return
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if compression == "gzip":
        stream: Any = gzip.GzipFile(fileobj=output, mode="wb", compresslevel=6 if level is None else level, mtime=0)
    else:
        stream = _zstandard().ZstdCompressor(level=3 if level is None else level).stream_writer(output, closefd=False)
    try:
        yield stream
    finally:
        stream.close()


def decompressed_reader(source: BinaryIO) -> BinaryIO:
    """``source`` or a decompressing reader over it, chosen by its first bytes (gzip, zstd or plain)."""
    reader = source if hasattr(source, "peek") else io.BufferedReader(source)  # type: ignore[arg-type]
    head = reader.peek(4)[:4]
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=reader, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD_MAGIC):
        return io.BufferedReader(_zstandard().ZstdDecompressor().stream_reader(reader, closefd=False))
    return reader  # type: ignore[return-value]
