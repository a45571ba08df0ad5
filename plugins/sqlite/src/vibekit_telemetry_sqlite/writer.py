"""The SQLite writer in a process of its own: ``storage.options.writer = "process"``.

The kernel's :class:`vibekit_telemetry.writer.WriterProcess` does the work (one child per database, batches
through a pipe in parts, ``store`` returning once the child committed; its docs list the failure modes).
SQLite adds what the child opens, this plugin's store on the same file without the integrity check the
parent ran already, and the parent's share of the work, done while the child inserts the parts before: each
part's kernel rows become SQL rows, and the batch's sessions are folded (:func:`fold_session_deltas`), so the
child binds what arrives and merges the folds into the stored sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vibekit_telemetry.model import fold_session_deltas
from vibekit_telemetry.writer import Batch
from vibekit_telemetry.writer import WriterProcess as _KernelWriter


class WriterProcess(_KernelWriter):
    """The writer process of the SQLite file at ``path`` (``options``: the plugin's, as a dict)."""

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        self.path = path
        from . import sql_rows

        super().__init__("vibekit_telemetry_sqlite.writer:open_store",
                         {**options, "path": str(path), "writer": "thread", "integrity_check": "off"},
                         f"the SQLite writer process for {path}", prepare=sql_rows, summarize=fold_session_deltas)


class _ChildStore:
    """What the child serves: parts arrive as SQL rows, the batch's summary is its sessions folded (the parent
    did both while the child inserted the parts before)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.close = store.close

    def store_parts(self, batch: Batch) -> None:
        self._store.store_sql_parts(batch, lambda: batch.summary)

    def store_rows(self, rows: list[tuple[Any, ...]]) -> None:
        self._store.store_sql_parts((rows,))


def open_store(options: dict[str, Any]) -> Any:
    """In the child: the sqlite store on the parent's file, open (what the writer thread would run)."""
    from . import SQLiteStorage

    store = SQLiteStorage(SQLiteStorage.Config(**options))
    store._open(Path(options["path"]), integrity=False)
    return _ChildStore(store)
