"""Rendering rows for the command line: ``table`` (rich), ``json``, ``jsonl`` and ``csv``."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .times import format_ms

FORMATS = ("table", "json", "jsonl", "csv")
_NO_WRAP = frozenset({"id", "session_id", "timestamp", "started_at", "event_type", "status", "duration_ms", "ttft_ms"})

EVENT_COLUMNS = ("timestamp", "event_type", "category", "action", "session_id", "text", "value", "id")
SESSION_COLUMNS = ("id", "kind", "agent", "model", "status", "started_at", "duration_ms", "ttft_ms", "event_count",
                   "error_count", "tokens", "cost_usd", "prompt")


def _cell(column: str, record: dict[str, Any], width: int = 60) -> str:
    if column == "text":
        value = record.get("stream_data") or record.get("prompt") or record.get("error_message") or record.get("label") or ""
    elif column == "tokens":
        value = (record.get("tokens") or {}).get("total") or ""
    else:
        value = record.get(column)
    if value is None:
        return ""
    if column in ("timestamp", "started_at", "ended_at") and isinstance(value, int):
        return format_ms(value)[:23].replace("T", " ")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def render(records: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, *, title: str | None = None,
           out: TextIO | None = None) -> None:
    """Write records in a format; ``columns`` chooses the table and CSV columns (JSON keeps everything)."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(list(records), out, indent=2, ensure_ascii=False, default=str)
        out.write("\n")
    elif fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    elif fmt == "csv":
        all_columns = list(dict.fromkeys(k for r in records for k in r)) or list(columns)
        writer = csv.DictWriter(out, fieldnames=all_columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                             for k, v in record.items()})
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for column in columns:
            if column in _NO_WRAP:
                table.add_column(column, no_wrap=True)
            else:
                table.add_column(column, overflow="fold", max_width=48)
        for record in records:
            table.add_row(*[_cell(c, record) for c in columns])
        Console(file=out, width=max(200, Console().width)).print(table)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
