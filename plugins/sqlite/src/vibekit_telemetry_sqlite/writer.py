"""The SQLite writer in a process of its own: ``storage.options.writer = "process"``.

The kernel's :class:`vibekit_telemetry.writer.WriterProcess` does the work (one child per database, batches
through a pipe, ``store`` returning once the child committed; its docs list the failure modes).  SQLite
adds what the child opens: this plugin's store on the same file, without the integrity check the parent ran
already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vibekit_telemetry.writer import WriterProcess as _KernelWriter


class WriterProcess(_KernelWriter):
    """The writer process of the SQLite file at ``path`` (``options``: the plugin's, as a dict)."""

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        self.path = path
        super().__init__("vibekit_telemetry_sqlite.writer:open_store",
                         {**options, "path": str(path), "writer": "thread", "integrity_check": "off"},
                         f"the SQLite writer process for {path}")


def open_store(options: dict[str, Any]) -> Any:
    """In the child: the sqlite store on the parent's file, open (what the writer thread would run)."""
    from . import SQLiteStorage

    store = SQLiteStorage(SQLiteStorage.Config(**options))
    store._open(Path(options["path"]), integrity=False)
    return store
