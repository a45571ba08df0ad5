"""The ``csv`` plugin: export and import events as CSV.

One row per event, one column per event field, in a fixed order (``COLUMNS``).
Options: ``delimiter`` (default ``,``), ``header`` (default true; the seed's
``headers`` is the same option) and ``metadata``:

* ``"json"`` (default): metadata is one column holding a JSON object; the export
  reads back exactly (``telemetry import``);
* ``"flatten"``: one ``metadata.<path>`` column per key found in the first
  1,000 events (nested keys joined with dots; strings as they are, other
  values as JSON), for spreadsheets; keys first seen later stay in the
  ``metadata`` column as JSON.  Reading it back is best effort (a string that
  looks like a number comes back as a number).

A missing value is an empty cell, so an empty string in a top-level column
reads back as no value; metadata keeps the difference.  Rows are written as
events are read, so memory stays flat.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import Any, BinaryIO

import orjson

from vibekit_telemetry import TelemetryEvent, hookimpl

from .columnar import columnar_writer

__all__ = ["COLUMNS", "CSVFormat"]

COLUMNS = ("id", "timestamp", "event_type", "category", "session_id", "parent_session_id", "action", "label", "value",
           "agent", "mode", "prompt", "stream_data", "status", "error_type", "error_message", "error_stack",
           "truncated", "metadata")
_TEXT = COLUMNS[:-1]
_SAMPLE = 1000
_OPTIONS = {"delimiter", "header", "metadata"}


def _flatten(value: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            yield from _flatten(item, path + ".")
        else:
            yield path, item


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _settings(options: dict[str, Any]) -> tuple[str, str, bool]:
    """The delimiter, metadata mode and header of an export, each checked."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"csv export has no options {sorted(unknown)} (it has {', '.join(sorted(_OPTIONS))})")
    delimiter = options.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"the CSV delimiter must be one character other than a quote or newline, got {delimiter!r}")
    mode = options.get("metadata", "json")
    if mode not in ("json", "flatten"):
        raise ValueError(f"csv metadata must be 'json' or 'flatten', got {mode!r}")
    header = options.get("header", True)
    if not isinstance(header, bool):
        raise ValueError(f"the csv header option is true or false, got {header!r}")
    return delimiter, mode, header


class CSVFormat:
    """Exports and imports ``csv``."""

    name = "csv"

    @hookimpl
    def export_formats(self) -> list[str]:
        """``csv``."""
        return ["csv"]

    @hookimpl
    def import_formats(self) -> list[str]:
        """``csv``."""
        return ["csv"]

    @hookimpl
    def export_options(self, format: str) -> list[str] | None:
        """``delimiter``, ``header`` and ``metadata``."""
        return sorted(_OPTIONS) if format == "csv" else None

    @hookimpl
    def export(self, format: str, events: Iterable[TelemetryEvent], output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write one row per event."""
        if format != "csv":
            return None
        delimiter, mode, header = _settings(options)
        text = io.TextIOWrapper(output, encoding="utf-8", newline="", write_through=False)
        try:
            writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
            iterator = iter(events)
            flat_keys: list[str] = []
            if mode == "flatten":
                sample = list(islice(iterator, _SAMPLE))
                flat_keys = sorted({key for event in sample for key, _ in _flatten(event.metadata)})
                iterator = chain(sample, iterator)
            if header:
                writer.writerow([*_TEXT, *(f"metadata.{k}" for k in flat_keys), "metadata"])
            count = 0
            if mode == "json":
                count = self._write_json_rows(writer, iterator)
            else:
                known = set(flat_keys)
                for event in iterator:
                    flat = dict(_flatten(event.metadata))
                    rest = {k: v for k, v in flat.items() if k not in known}
                    writer.writerow([*self._base(event), *(_cell(flat.get(k)) for k in flat_keys),
                                     orjson.dumps(rest).decode() if rest else ""])
                    count += 1
        finally:
            text.flush()
            text.detach()
        return count

    @hookimpl
    def export_rows(self, format: str, rows: Any, output: BinaryIO, options: dict[str, Any]) -> int | None:
        """Write the rows ``export`` writes, from storage rows that are them already (``None`` is an empty cell).

        Flattened metadata needs each event's metadata as a mapping, so it takes the event path.
        """
        if format != "csv":
            return None
        delimiter, mode, header = _settings(options)
        if mode != "json":
            return None
        batches = rows(COLUMNS)
        if batches is None:
            return None
        text = io.TextIOWrapper(output, encoding="utf-8", newline="", write_through=False)
        count = 0
        try:
            writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
            if header:
                writer.writerow(COLUMNS)
            columnwise = columnar_writer(delimiter, len(COLUMNS))
            for batch in batches:
                if columnwise is None:
                    writer.writerows(batch)
                else:
                    text.write(columnwise(batch))
                count += len(batch)
        finally:
            text.flush()
            text.detach()
        return count

    @staticmethod
    def _base(event: TelemetryEvent) -> list[Any]:
        d = event.__dict__
        return [d["id"], d["timestamp"], d["event_type"], d["category"], d["session_id"] or "",
                d["parent_session_id"] or "", d["action"] or "", d["label"] or "",
                "" if d["value"] is None else d["value"], d["agent"] or "", d["mode"] or "", d["prompt"] or "",
                d["stream_data"] or "", d["status"] or "", d["error_type"] or "", d["error_message"] or "",
                d["error_stack"] or "", orjson.dumps(list(d["truncated"])).decode() if d["truncated"] else ""]

    def _write_json_rows(self, writer: Any, events: Iterator[TelemetryEvent]) -> int:
        dumps = orjson.dumps
        base = self._base
        rows: list[list[Any]] = []
        count = 0
        for event in events:
            row = base(event)
            row.append(dumps(event.metadata).decode() if event.metadata else "")
            rows.append(row)
            if len(rows) >= 2000:
                writer.writerows(rows)
                count += len(rows)
                rows.clear()
        writer.writerows(rows)
        return count + len(rows)

    @hookimpl
    def import_events(self, format: str, input: BinaryIO, options: dict[str, Any]) -> Iterable[Mapping[str, Any]] | None:
        """Read rows back into events (the header names the columns; the delimiter is detected from it)."""
        if format != "csv":
            return None
        return _read(input, options.get("delimiter"))


def _value(text: str) -> Any:
    if text[:1] in '-0123456789[{"tfn' :
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return text


def _unflatten(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[parts[-1]] = value


def _read(input: BinaryIO, delimiter: str | None) -> Iterator[dict[str, Any]]:
    text = io.TextIOWrapper(input, encoding="utf-8", newline="")
    first = text.readline()
    if not first:
        return
    if delimiter is None:
        delimiter = first[2] if first.startswith("id") and len(first) > 2 else ","
    header = next(csv.reader([first], delimiter=delimiter))
    missing = {"category"} - set(header)
    if missing:
        raise ValueError(f"the CSV header has no {', '.join(sorted(missing))} column (is the delimiter {delimiter!r}?)")
    for number, row in enumerate(csv.reader(text, delimiter=delimiter), 2):
        if len(row) != len(header):
            raise ValueError(f"row {number}: {len(row)} cells, the header has {len(header)}")
        event: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if cell == "":
                continue
            if name == "metadata":
                try:
                    extra = orjson.loads(cell)
                except orjson.JSONDecodeError:
                    raise ValueError(f"row {number}: the metadata cell is not JSON") from None
                metadata.update(extra)
            elif name.startswith("metadata."):
                _unflatten(metadata, name[9:], _value(cell))
            elif name == "timestamp":
                event["timestamp"] = int(cell) if cell.isdigit() else cell
            elif name == "value":
                try:
                    event["value"] = float(cell)
                except ValueError:
                    raise ValueError(f"row {number}: value {cell!r} is not a number") from None
            elif name == "truncated":
                event["truncated"] = orjson.loads(cell)
            else:
                event[name] = cell
        event["metadata"] = metadata
        yield event
