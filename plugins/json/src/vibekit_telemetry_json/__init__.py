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

import orjson

from vibekit_telemetry import TelemetryEvent, hookimpl

__all__ = ["JSONFormats"]

_FORMATS = ["json", "jsonl"]
_CHUNK = 2000


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
        count = 0
        lines: list[bytes] = []
        if format == "json":
            output.write(b"[\n")
        for event in events:
            lines.append(dumps(event.to_dict()))
            count += 1
            if len(lines) >= _CHUNK:
                self._write_chunk(format, output, lines, first=count == len(lines))
                lines.clear()
        if lines:
            self._write_chunk(format, output, lines, first=count == len(lines))
        if format == "json":
            output.write(b"\n]\n")
        return count

    @staticmethod
    def _write_chunk(format: str, output: BinaryIO, lines: list[bytes], *, first: bool) -> None:
        if format == "jsonl":
            output.write(b"\n".join(lines) + b"\n")
        else:  # the array: a comma between events, and none after the last
            output.write((b"" if first else b",\n") + b",\n".join(lines))

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
