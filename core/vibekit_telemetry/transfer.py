"""What exports and imports share: the option vocabulary, formats and compression read from file names,
and compressed streams.

Exporter plugins write plain bytes; the kernel wraps their output in gzip or
zstd when asked (``compression=`` or a ``.gz``/``.zst`` file name), and
importers read through the matching decompressor, found by the stream's magic
bytes.  zstd needs the ``zstandard`` package (a dependency of the exporter plugins).
A format that compresses itself (Parquet) says so by taking a ``compression``
option (the ``export_options`` hook); it then gets the value instead.

One vocabulary for ``export()``, ``GET /api/export`` and ``telemetry export``
(:func:`split_export_arguments`): filter keys (``category``, ``session_id``,
``since`` ... and the seed's ``sessionId``, ``sessions``, ``timeRange``) and
options (``compression``, alias ``compress``; the format's own, such as
``delimiter`` and ``header``, alias ``headers``) may come in one mapping, as
the seed's ``export('json', {sessionId, compress: true})`` does.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import io
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import attrs

from .errors import InvalidQueryError, PluginError
from .model import QueryFilter

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


#: options the kernel itself takes in an export; everything that is neither these nor a filter key goes to the exporter
KERNEL_EXPORT_OPTIONS = ("compression", "compression_level", "progress")
#: other names of filter keys and options (the seed's among them) and the name they stand for
EXPORT_ALIASES = {"compress": "compression", "headers": "header", "sessions": "session_ids",
                  "timeRange": "time_range", "compressionLevel": "compression_level"}
_FILTER_KEYS = tuple(f.name for f in attrs.fields(QueryFilter))
_EXTENSIONS = {"json": ".json", "jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "otlp": ".otlp.json",
               "otlp-proto": ".pb"}
_SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}


@attrs.frozen
class ExportArguments:
    """What one export call asked for, sorted out: the filter, the kernel's options, the exporter's options.

    ``compression`` is what the kernel wraps the exporter's output in (``None``: nothing);
    ``compression_given`` says whether the caller chose it (so a file name's ``.gz`` does not override an
    explicit ``compression="none"``).
    """

    filter: dict[str, Any]
    compression: str | None = None
    compression_given: bool = False
    level: int | None = None
    progress: Callable[[int], Any] | None = None
    options: dict[str, Any] = attrs.field(factory=dict)


def _canonical(key: str) -> str:
    key = EXPORT_ALIASES.get(key, key)
    if re.fullmatch(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+", key):
        key = re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), key)
    return EXPORT_ALIASES.get(key, key)


def is_filter_key(key: str, value: Any = None) -> bool:
    """Whether ``key`` (any spelling) names a query filter rather than an export option.

    ``metadata`` is both: a mapping is the filter (events whose metadata has these values), a string the
    CSV/Parquet option (``"json"``, ``"flatten"``, ``"struct"``).
    """
    name = _canonical(key)
    if name == "metadata":
        return isinstance(value, Mapping)
    return name in _FILTER_KEYS or name == "time_range"


def export_vocabulary(format: str, format_options: Collection[str] | None) -> str:
    """The keys an export of ``format`` takes, for error messages."""
    own = ", ".join(sorted(format_options)) if format_options else "none"
    return (f"filter keys: {', '.join(sorted({*_FILTER_KEYS, 'time_range'}))}; export options: "
            f"{', '.join(KERNEL_EXPORT_OPTIONS)}; options of {format}: {own}"
            + ("" if format_options is not None else " (the exporter does not list them)"))


def split_export_arguments(format: str, layers: Iterable[Mapping[str, Any]], *,
                           format_options: Collection[str] | None) -> ExportArguments:
    """Sort the mappings an export was called with into filter, kernel options and the exporter's options.

    ``layers`` are merged in order (later ones win): a filter mapping, keyword options... Keys may be
    snake_case, camelCase or an alias (``compress``, ``headers``, ``sessions``).  ``format_options`` are the
    names the format's exporter takes (``None`` when it does not say: then every other key is passed on).
    A ``compression`` among them means the format compresses itself: the value goes to the exporter.
    Raises :class:`InvalidQueryError` naming a key that is none of these (listing the valid ones), or one
    given twice under two spellings with different values.
    """
    filter: dict[str, Any] = {}
    kernel: dict[str, Any] = {}
    options: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.items():
            if not isinstance(key, str):
                raise InvalidQueryError(repr(key), "export keys are strings")
            name = _canonical(key)
            other = spelled.get(name)
            if other is not None and other != key:
                previous = filter.get(name, kernel.get(name, options.get(name)))
                if previous != value:
                    raise InvalidQueryError(key, f"given twice, as {other!r} and {key!r}, with different values")
            spelled[name] = key
            if is_filter_key(key, value):
                if name == "session_ids" and isinstance(value, str):
                    value = tuple(s for s in value.split(",") if s)
                filter[name] = value
            elif name in KERNEL_EXPORT_OPTIONS:
                kernel[name] = value
            elif format_options is None or name in format_options:
                options[name] = value
            else:
                raise InvalidQueryError(key, f"unknown export key; {export_vocabulary(format, format_options)}")
    level = kernel.get("compression_level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise InvalidQueryError("compression_level", f"expected an integer, got {level!r}")
    given = "compression" in kernel
    compression = kernel.get("compression")
    if given and format_options is not None and "compression" in format_options:
        options["compression"] = compression  # the format compresses itself (Parquet's codecs)
        compression, given = None, False
    elif given:
        compression = stream_compression(compression, format)
    return ExportArguments(filter=filter, compression=compression, compression_given=given, level=level,
                           progress=kernel.get("progress"), options=options)


def stream_compression(value: Any, format: str = "the export") -> str | None:
    """``compression`` as the kernel applies it: ``True`` is gzip, ``False``/``"none"`` nothing."""
    if value is True:
        return "gzip"
    if value is None or value is False or isinstance(value, str) and value.lower() in ("", "none"):
        return None
    if isinstance(value, str) and value.lower() in COMPRESSIONS:
        return value.lower()
    raise InvalidQueryError("compression", f"{format} is compressed with {' or '.join(COMPRESSIONS)} (or true for "
                                           f"gzip, none), got {value!r}")


def default_export_name(format: str, compression: str | None = None, *, directory: str | os.PathLike[str] = ".",
                        now: _dt.datetime | None = None) -> str:
    """A file name for an export the caller did not name: ``telemetry-export-20250101-120000.otlp.json``.

    The name says the format and compression (so ``telemetry import`` reads it back without options) and
    never names a file that exists (``-2``, ``-3`` ... are added).
    """
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    suffix = _EXTENSIONS.get(format, f".{format}") + _SUFFIXES.get(compression or "", "")
    base = f"telemetry-export-{stamp}"
    if os.fspath(directory) not in ("", "."):
        base = os.path.join(os.fspath(directory), base)
    candidate, n = base + suffix, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{base}-{n}{suffix}"
    return candidate


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise PluginError("zstd compression needs the zstandard package: pip install zstandard") from None
    return zstandard


@contextlib.contextmanager
def compressed_writer(output: BinaryIO, compression: str | None, level: int | None = None, *,
                      name: str = "") -> Iterator[BinaryIO]:
    """``output`` itself, or a gzip/zstd stream onto it, finished (but ``output`` left open) on exit.

    ``name`` is the final file name, which a gzip header records (without ``.gz``): the export is written
    to ``<name>.partial`` first, and the header must not name that.
    """
    if compression is None:
        yield output
        return
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if compression == "gzip":
        # filename= is explicit: GzipFile would otherwise take output.name, the temporary "*.partial"
        stream: Any = gzip.GzipFile(filename=os.path.basename(name), fileobj=output, mode="wb",
                                    compresslevel=6 if level is None else level, mtime=0)
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
