"""The ``json`` plugin: export and import events as a JSON array (``json``) or JSON Lines (``jsonl``).

Installed, it is available to ``telemetry export --format jsonl`` and
``telemetry.export("jsonl", ...)`` without configuration.  Each event is one
object with every field that is set (``TelemetryEvent.to_dict()``), written as
it is read, so memory stays flat.  The array is written one event per line,
which lets ``import`` read it back line by line too; other JSON arrays are
read whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import attrs
import orjson

from vibekit_telemetry import TelemetryEvent, hookimpl

__all__ = ["JSONFormats"]

_FORMATS = ["json", "jsonl"]
_WRITE_SIZE = 1 << 18
#: the event's fields in ``to_dict()`` order, which is the order of the keys written
_FIELDS = tuple(field.name for field in attrs.fields(TelemetryEvent))
_METADATA, _TRUNCATED = _FIELDS.index("metadata"), _FIELDS.index("truncated")
_NO_METADATA = (orjson.Fragment(b"{}"),)


def _write_lines(format: str, output: BinaryIO, lines: Iterable[bytes]) -> int:
    """Write JSON Lines, or the array with one event per line, through a buffer of a few hundred KiB.

    orjson gives each line an allocation of some KiB whatever its length: a thousand of them held until
    written made the C allocator hand pages back and fault them in again, a third of a large export's time.
    """
    between, end = (b"\n", b"\n") if format == "jsonl" else (b",\n", b"\n]\n")
    buffer = bytearray(b"" if format == "jsonl" else b"[\n")
    count = 0
    for line in lines:
        if count:
            buffer += between
        buffer += line
        count += 1
        if len(buffer) >= _WRITE_SIZE:
            output.write(bytes(buffer))  # a copy: a destination may keep what it is given
            buffer.clear()
    if count or format == "json":
        buffer += end
    if buffer:
        output.write(bytes(buffer))
    return count


def _row_lines(batches: Iterable[list[tuple[Any, ...]]]) -> Iterator[bytes]:
    """The line of each storage row (``export_rows``): ``to_dict()``'s keys, the stored JSON put in as it is."""
    dumps, fragment = orjson.dumps, orjson.Fragment
    fields, at_metadata, at_truncated = _FIELDS, _METADATA, _TRUNCATED
    for batch in batches:
        for row in batch:
            metadata = row[at_metadata]
            if metadata is None:  # an event always has its metadata key, {} when empty, in its place
                row = row[:at_metadata] + _NO_METADATA + row[at_metadata + 1:]
            out = {name: value for name, value in zip(fields, row) if value is not None}
            if metadata is not None:
                out["metadata"] = fragment(metadata)
            if row[at_truncated] is not None:
                out["truncated"] = fragment(row[at_truncated])
            yield dumps(out)


class JSONFormats:
    """Exports and imports ``json`` and ``jsonl``."""

    name = "json"

    @hookimpl
    def export_formats(self) -> list[str]:
        """``json`` and ``jsonl``."""
        return list(_FORMATS)

    @hookimpl
    def import_formats(self) -> list[str]:
        """``json`` and ``jsonl``."""
        return list(_FORMATS)

    @hookimpl
    def export_options(self, format: str) -> list[str] | None:
        """None: compression (``compress``) and the filter are the kernel's."""
        return [] if format in _FORMATS else None

    @hookimpl
    def export(self, format: str, events: Iterable[TelemetryEvent], output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write events as JSON Lines, or as an array with one event per line."""
        if format not in _FORMATS:
            return None
        if options:
            raise ValueError(f"{format} export takes no options, got {sorted(options)}")
        dumps = orjson.dumps
        return _write_lines(format, output, (dumps(event.to_dict()) for event in events))

    @hookimpl
    def export_rows(self, format: str, rows: Any, output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write the lines ``export`` writes from storage rows: the stored metadata JSON goes in as it is."""
        if format not in _FORMATS or options:
            return None
        batches = rows(_FIELDS)
        if batches is None:
            return None
        return _write_lines(format, output, _row_lines(batches))

    @hookimpl
    def import_events(self, format: str, input: BinaryIO, options: dict[str, Any]) -> Iterable[Mapping[str, Any]] | None:
        """Read events back, line by line where the layout allows."""
        if format not in _FORMATS:
            return None
        return _read_lines(input) if format == "jsonl" else _read_array(input)


def _parse(line: bytes, number: int) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"line {number}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"line {number}: expected an event object, got {type(value).__name__}")
    return value


def _read_lines(input: BinaryIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(input, 1):
        if line.strip():
            yield _parse(line, number)


def _read_array(input: BinaryIO) -> Iterator[dict[str, Any]]:
    first = input.readline()
    if first.strip() != b"[":  # not our one-event-per-line layout: read the whole document
        data = orjson.loads(first + input.read())
        if not isinstance(data, list):
            raise ValueError("a JSON export is an array of event objects")
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise ValueError(f"item {index}: expected an event object")
            yield item
        return
    for number, line in enumerate(input, 2):
        text = line.strip()
        if text in (b"]", b""):
            continue
        yield _parse(text[:-1] if text.endswith(b",") else text, number)
