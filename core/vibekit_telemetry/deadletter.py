"""The dead-letter file: events a storage plugin refused for what they hold, kept for a person to look at.

A batch that a plugin refuses because of its content (a value out of range,
text it cannot encode) is split until the events at fault are alone; those
land here, one JSON line each, with the plugin and the error, instead of
taking the innocent events of their batch down with them or blocking the
journal forever.  ``telemetry dead-letter list|replay|purge`` reads, retries
and deletes them.

One file per storage plugin, ``<buffer_path>/dead-letter/<plugin>.jsonl``.
Lines are appended with ``O_APPEND`` under an exclusive ``flock``, so several
processes can share the directory; rewriting (replay, purge) takes the same
lock and replaces the file, and an appender that finds the file replaced
opens it again.  The events are in the form the plugin was given (after
``before_store``, so encrypted when encryption is on): nothing reaches this
file in clear that the store would not have held in clear.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from .model import TelemetryEvent
from .times import now_ms

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process at a time
    fcntl = None  # type: ignore[assignment]

_FIELDS = tuple(f.name for f in attrs.fields(TelemetryEvent))

#: Held while this process has a dead-letter file open under its ``flock``, and across ``fork``: a child
#: inherits open descriptors with their locks, and one forked mid-append would hold the lock for its lifetime.
_process_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_process_lock.acquire, after_in_parent=_process_lock.release,
                        after_in_child=_process_lock.release)


@attrs.frozen
class DeadLetter:
    """One refused event: which plugin refused it, when, why, and the event as the plugin got it."""

    plugin: str
    at: int
    error: str
    event: TelemetryEvent | None
    raw: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the event as stored in the file)."""
        return {"plugin": self.plugin, "at": self.at, "error": self.error, "event": self.raw.get("event")}


def _line(plugin: str, error: str, event: TelemetryEvent) -> bytes:
    fields = {name: event.__dict__.get(name) for name in _FIELDS}
    fields["truncated"] = list(fields["truncated"] or ())
    record = {"plugin": plugin, "at": now_ms(), "error": error, "event": fields}
    # the standard library's encoder, never orjson: these values are exactly the ones orjson may refuse
    # (integers beyond 64 bits, lone surrogates, NaN); repr keeps a readable trace of anything stranger
    return (json.dumps(record, ensure_ascii=True, allow_nan=True, default=repr, separators=(",", ":"))
            + "\n").encode("ascii")


def _restore(fields: Any) -> TelemetryEvent | None:
    if not isinstance(fields, dict) or set(fields) != set(_FIELDS):
        return None
    fields = dict(fields)
    fields["truncated"] = tuple(fields["truncated"] or ())
    if not isinstance(fields["metadata"], dict):
        return None
    return TelemetryEvent.restore(fields)


class DeadLetters:
    """The dead-letter files under ``directory`` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, plugin: str) -> Path:
        """The file holding what ``plugin`` refused."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in plugin) or "plugin"
        return self.directory / f"{safe}.jsonl"

    @contextlib.contextmanager
    def _locked(self, plugin: str, *, create: bool) -> Iterator[int | None]:
        """An open descriptor of the plugin's file under an exclusive lock (``None`` if absent and not created)."""
        path = self.path(plugin)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        with _process_lock:
            yield from self._open_locked(path, create)

    @staticmethod
    def _open_locked(path: Path, create: bool) -> Iterator[int | None]:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o600)
            except FileNotFoundError:
                yield None
                return
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # replaced by a rewrite while we waited for the lock: open the new file
        try:
            yield fd
        finally:
            os.close(fd)

    def add(self, plugin: str, events: list[TelemetryEvent], error: str) -> None:
        """Append refused events durably (``fsync``); raises ``OSError`` when the file cannot be written."""
        if not events:
            return
        data = b"".join(_line(plugin, error, event) for event in events)
        with self._locked(plugin, create=True) as fd:
            assert fd is not None
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                # a line cut short (a full disk) would swallow the next record appended after it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise

    def plugins(self) -> list[str]:
        """The plugins that have a dead-letter file."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.jsonl"))

    def records(self, plugin: str | None = None) -> list[DeadLetter]:
        """Every dead letter, oldest first (of one plugin, or of all)."""
        found: list[DeadLetter] = []
        for name in [plugin] if plugin else self.plugins():
            path = self.path(name)
            if not path.exists():
                continue
            found.extend(self._parse(path.read_bytes()))
        return sorted(found, key=lambda r: r.at)

    def count(self, plugin: str | None = None) -> int:
        """How many dead letters there are."""
        total = 0
        for name in [plugin] if plugin else self.plugins():
            path = self.path(name)
            if path.exists():
                with path.open("rb") as fh:
                    total += sum(1 for line in fh if line.strip())
        return total

    @staticmethod
    def _parse(data: bytes) -> list[DeadLetter]:
        out = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:  # a line cut short by a crash while appending
                continue
            if not isinstance(raw, dict):
                continue
            out.append(DeadLetter(plugin=str(raw.get("plugin")), at=int(raw.get("at") or 0),
                                  error=str(raw.get("error")), event=_restore(raw.get("event")), raw=raw))
        return out

    def take(self, plugin: str, keep: Any) -> list[DeadLetter]:
        """Rewrite the plugin's file keeping only the records for which ``keep(record)`` is true; return the rest.

        ``keep`` runs under the file's lock, so records appended meanwhile are never lost.
        """
        with self._locked(plugin, create=False) as fd:
            if fd is None:
                return []
            path = self.path(plugin)
            records = self._parse(path.read_bytes())
            kept, taken = [], []
            for record in records:
                (kept if keep(record) else taken).append(record)
            if not taken:
                return []
            if not kept:
                path.unlink()
                return taken
            tmp = path.with_suffix(".jsonl.tmp")
            with open(tmp, "wb") as fh:
                for record in kept:
                    fh.write((json.dumps(record.raw, ensure_ascii=True, allow_nan=True, separators=(",", ":"))
                              + "\n").encode("ascii"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return taken

    def purge(self, plugin: str | None = None) -> int:
        """Delete every dead letter (of one plugin, or of all); return how many went."""
        return sum(len(self.take(name, lambda record: False)) for name in ([plugin] if plugin else self.plugins()))
