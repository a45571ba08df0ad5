"""An on-disk journal of event batches: append at the tail, replay from the head, acknowledge.

One journal is one directory owned by one live process, which holds an
exclusive ``flock`` on its ``lock`` file.  Batches are appended as records::

    magic "VKJ1" (or "VKJS") | event count (u32) | payload length (u32) | CRC-32 of payload (u32) | payload (JSON list)

in numbered segment files; the read position lives in ``ack``.  A record cut
short by a crash (wrong length or checksum) ends the journal: everything before
it is replayed, the torn tail is discarded.  When the owning process dies, the
lock is released, and the next process to look in the parent directory adopts
the journal (:meth:`Journal.adopt_orphans`) and replays it.

Replay is at-least-once: a batch stored just before a crash, but not yet
acknowledged, is replayed again; storage plugins ignore event ids they already
hold, so the end result is exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from .errors import StorageError
from .model import TelemetryEvent

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: journals are not shared between processes there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("vibekit_telemetry.journal")

_HEADER = struct.Struct("<4sIII")
_MAGIC = b"VKJ1"
#: the same record, its payload written by the standard library's encoder (see ``_encode``): read it back with
#: the standard library too, since orjson would read an integer beyond 64 bits as a float without a word
_MAGIC_STDLIB = b"VKJS"
_MAGICS = (_MAGIC, _MAGIC_STDLIB)
_SEGMENT_BYTES = 8 * 2**20


class JournalFull(StorageError):
    """The journal reached its bound in events or bytes; the batch was not written."""


def _encode(events: list[TelemetryEvent]) -> tuple[bytes, bytes]:
    """The batch as a JSON array and the record magic saying who encoded it; raises :class:`UnencodableEvent`
    naming the first event JSON cannot hold at all.

    orjson is fast but refuses integers beyond 64 bits and lone surrogates; the journal must hold whatever
    was accepted (a store may still refuse it later, and then it goes to the dead-letter file), so those
    events are written by the standard library, which escapes surrogates and writes any integer.
    """
    try:
        return orjson.dumps([event.__dict__ for event in events]), _MAGIC
    except orjson.JSONEncodeError:
        pass
    parts = []
    for event in events:
        try:
            parts.append(orjson.dumps(event.__dict__))
        except orjson.JSONEncodeError:
            try:
                parts.append(json.dumps(event.__dict__, ensure_ascii=True, allow_nan=True,
                                        separators=(",", ":")).encode())
            except (TypeError, ValueError) as exc:
                raise UnencodableEvent(event, exc) from None
    return b"[" + b",".join(parts) + b"]", _MAGIC_STDLIB


def encode_event(event: TelemetryEvent) -> bytes:
    """One event as the JSON a journal record holds (orjson; raises ``orjson.JSONEncodeError`` for what only
    the standard library could write, which events that passed the gate never hold)."""
    return orjson.dumps(event.__dict__)


def ensure_encodable(event: TelemetryEvent) -> None:
    """Raise :class:`UnencodableEvent` if no JSON encoder can write ``event``."""
    _encode([event])


class UnencodableEvent(TypeError):
    """An event holds a value that no JSON encoder can write; ``event`` is the event."""

    def __init__(self, event: TelemetryEvent, cause: Exception) -> None:
        self.event = event
        super().__init__(f"event {event.id} cannot be written to a journal: {cause}")


def _decode(payload: bytes, magic: bytes = _MAGIC) -> list[TelemetryEvent]:
    events = []
    rows = json.loads(payload) if magic == _MAGIC_STDLIB else orjson.loads(payload)
    for fields in rows:
        fields["truncated"] = tuple(fields.get("truncated") or ())
        events.append(TelemetryEvent.restore(fields))
    return events


class Journal:
    """A bounded, crash-safe FIFO of event batches in ``directory``.

    ``max_events`` and ``max_bytes`` bound what waits in it; ``fsync`` makes
    every :meth:`append` durable before it returns (one ``fsync`` per batch).
    Thread-safe.
    """

    def __init__(self, directory: Path, *, max_events: int, max_bytes: int, fsync: bool = True,
                 segment_bytes: int = _SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._tail: object | None = None  # the open segment file appended to
        self._tail_segment = 0
        #: (segment, offset, end, events, sequence number) per unread record, oldest first
        self._pending: list[tuple[int, int, int, int, int]] = []
        self._next_seq = 0
        self.pending_events = 0
        self.pending_bytes = 0
        self._closed = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, parent: Path, **options: object) -> Journal:
        """A new journal in a fresh directory under ``parent``, locked by this process."""
        directory = parent / f"{os.getpid()}-{secrets.token_hex(4)}"
        directory.mkdir(parents=True, exist_ok=False)
        journal = cls(directory, **options)  # type: ignore[arg-type]
        if not journal._try_lock():  # pragma: no cover - a fresh random directory
            raise StorageError(f"cannot lock the new journal {directory}")
        journal._tail_segment = 1
        return journal

    @classmethod
    def adopt_orphans(cls, parent: Path, **options: object) -> list[Journal]:
        """The journals under ``parent`` whose owning process is gone, oldest first, now locked by us."""
        if not parent.is_dir():
            return []
        found = []
        for directory in sorted(parent.iterdir(), key=lambda p: (p.stat().st_mtime, p.name)):
            if not directory.is_dir() or not (directory / "lock").exists():
                continue
            journal = cls(directory, **options)  # type: ignore[arg-type]
            if not journal._try_lock():
                continue  # a live process owns it
            journal._scan()
            if journal.pending_events:
                found.append(journal)
            else:
                journal.close(remove_if_empty=True)
        return found

    def _try_lock(self) -> bool:
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        self._lock_fd = fd
        return True

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.directory.glob("seg-*.log") if p.stem[4:].isdigit())

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"seg-{number:08d}.log"

    def _scan(self) -> None:
        """Read record headers from the acknowledged position on; cut a torn tail."""
        ack_segment, ack_offset = self._read_ack()
        segments = self._segments()
        for number in segments:
            if number < ack_segment:
                self._segment_path(number).unlink(missing_ok=True)
                continue
            path = self._segment_path(number)
            data = path.read_bytes()
            offset = ack_offset if number == ack_segment else 0
            while offset + _HEADER.size <= len(data):
                magic, count, length, crc = _HEADER.unpack_from(data, offset)
                end = offset + _HEADER.size + length
                if magic not in _MAGICS or end > len(data) or zlib.crc32(data[offset + _HEADER.size:end]) != crc:
                    break
                self._pending.append((number, offset, end, count, self._next_seq))
                self._next_seq += 1
                self.pending_events += count
                self.pending_bytes += end - offset
                offset = end
            if offset < len(data):  # a torn or corrupt tail: keep what is whole
                with path.open("r+b") as fh:
                    fh.truncate(offset)
        self._tail_segment = (segments[-1] if segments else 0) + 1  # never append to an adopted segment

    def _read_ack(self) -> tuple[int, int]:
        try:
            text = (self.directory / "ack").read_text().split()
            return int(text[0]), int(text[1])
        except (OSError, ValueError, IndexError):
            return 0, 0

    # -- writing -------------------------------------------------------------------------------

    def append_encoded(self, parts: list[bytes]) -> int:
        """:meth:`append` for events encoded one by one beforehand (:func:`encode_event`); same bounds and token."""
        if not parts:
            raise ValueError("an empty batch")
        return self._append_payload(b"[" + b",".join(parts) + b"]", _MAGIC, len(parts))

    @staticmethod
    def record_bytes(payload_bytes: int) -> int:
        """What a record of ``payload_bytes`` of events costs against ``max_bytes``."""
        return _HEADER.size + payload_bytes + 2

    def append(self, events: list[TelemetryEvent]) -> int:
        """Write one batch at the tail and return its token for :meth:`ack` (tokens increase with each batch).

        Raises :class:`JournalFull` past the bounds, ``OSError`` on I/O errors, :class:`UnencodableEvent`
        when an event holds a value no JSON encoder can write (the batch is then not in the journal).
        """
        if not events:
            raise ValueError("an empty batch")
        payload, magic = _encode(events)
        return self._append_payload(payload, magic, len(events))

    def _append_payload(self, payload: bytes, magic: bytes, count: int) -> int:
        record = _HEADER.pack(magic, count, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._closed:
                raise StorageError(f"the journal {self.directory} is closed")
            if self.pending_events + count > self.max_events or self.pending_bytes + len(record) > self.max_bytes:
                raise JournalFull(
                    f"the journal {self.directory} is full ({self.pending_events} events, {self.pending_bytes} bytes; "
                    f"bounds {self.max_events} events, {self.max_bytes} bytes)"
                )
            tail = self._open_tail(len(record))
            offset = tail.tell()  # type: ignore[attr-defined]
            try:
                tail.write(record)  # type: ignore[attr-defined]
                tail.flush()  # type: ignore[attr-defined]
                if self.fsync:
                    os.fsync(tail.fileno())  # type: ignore[attr-defined]
            except OSError:
                tail.truncate(offset)  # type: ignore[attr-defined]
                raise
            seq = self._next_seq
            self._next_seq += 1
            self._pending.append((self._tail_segment, offset, offset + len(record), count, seq))
            self.pending_events += count
            self.pending_bytes += len(record)
            return seq

    def _open_tail(self, size: int) -> object:
        if self._tail is not None and self._tail.tell() + size > self._segment_bytes and self._tail.tell():  # type: ignore[attr-defined]
            self._tail.close()  # type: ignore[attr-defined]
            self._tail = None
            self._tail_segment += 1
        if self._tail is None:
            self._tail = open(self._segment_path(self._tail_segment), "ab")  # noqa: SIM115
        return self._tail

    # -- reading -------------------------------------------------------------------------------

    def peek(self, position: int = 0) -> tuple[list[TelemetryEvent], int] | None:
        """The oldest unacknowledged batch (or the one ``position`` places after it) and its token, or ``None``."""
        with self._lock:
            if len(self._pending) <= position:
                return None
            segment, offset, end, _count, seq = self._pending[position]
            if segment == self._tail_segment and self._tail is not None:
                self._tail.flush()  # type: ignore[attr-defined]
            with self._segment_path(segment).open("rb") as fh:
                fh.seek(offset)
                data = fh.read(end - offset)
        return _decode(data[_HEADER.size:], data[:4]), seq

    def head(self) -> int | None:
        """The token of the oldest unacknowledged batch, or ``None`` when none is pending."""
        with self._lock:
            return self._pending[0][4] if self._pending else None

    def is_pending(self, token: int) -> bool:
        """Whether the batch with ``token`` is still waiting to be acknowledged."""
        with self._lock:
            return bool(self._pending) and self._pending[0][4] <= token < self._next_seq

    def batches(self) -> Iterator[list[TelemetryEvent]]:
        """Every pending batch in order, each acknowledged once the consumer asks for the next one."""
        while (item := self.peek()) is not None:
            events, token = item
            yield events
            self.ack(token)

    def ack(self, token: int) -> None:
        """Mark the batch :meth:`peek` returned with ``token`` as stored."""
        with self._lock:
            if not self._pending or self._pending[0][4] != token:
                return
            segment, offset, end, count, _seq = self._pending.pop(0)
            self.pending_events -= count
            self.pending_bytes -= end - offset
            if self._pending:
                position = (self._pending[0][0], self._pending[0][1])
            else:
                position = (self._tail_segment, end if segment == self._tail_segment else 0)
            for number in range(segment, position[0]):
                if number != self._tail_segment:
                    self._segment_path(number).unlink(missing_ok=True)
            if not self._pending and self._tail is not None and self._tail.tell() > self._segment_bytes // 2:  # type: ignore[attr-defined]
                # Everything was read: start the next segment rather than growing an empty one.
                self._tail.close()  # type: ignore[attr-defined]
                self._segment_path(self._tail_segment).unlink(missing_ok=True)
                self._tail, self._tail_segment, position = None, self._tail_segment + 1, (self._tail_segment + 1, 0)
            tmp = self.directory / "ack.tmp"
            try:
                tmp.write_text(f"{position[0]} {position[1]}\n")
                os.replace(tmp, self.directory / "ack")
            except OSError as exc:
                # The batch is stored; only the read position on disk lags.  A later process replays from the
                # older position, and storage ignores the ids it already holds: nothing is lost or doubled.
                log.warning("journal %s: cannot record the read position (%s); a later start may replay "
                            "batches already stored (they are deduplicated)", self.directory, exc)

    # -- closing -------------------------------------------------------------------------------

    def close(self, *, remove_if_empty: bool = True) -> None:
        """Flush, release the lock, and delete the directory when nothing is pending."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._tail is not None:
                try:
                    self._tail.flush()  # type: ignore[attr-defined]
                    os.fsync(self._tail.fileno())  # type: ignore[attr-defined]
                finally:
                    self._tail.close()  # type: ignore[attr-defined]
                    self._tail = None
            empty = not self._pending
            if empty and remove_if_empty:
                for path in self.directory.iterdir():
                    if path.name != "lock":
                        path.unlink(missing_ok=True)
            if self._lock_fd is not None:
                if empty and remove_if_empty:
                    (self.directory / "lock").unlink(missing_ok=True)
                os.close(self._lock_fd)
                self._lock_fd = None
            if empty and remove_if_empty:
                try:
                    self.directory.rmdir()
                except OSError:
                    pass

    def abandon(self) -> None:
        """Forget the journal without touching its files (in a forked child, whose parent still owns it).

        The open segment file is kept referenced, never closed here: closing it could flush a write the
        parent had in progress a second time.  The lock descriptor is closed; the parent's copy keeps the lock.
        """
        self._closed = True
        if self._tail is not None:
            _inherited_files.append(self._tail)
            self._tail = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


#: segment files a forked child inherited: referenced forever so they are never flushed or closed in the child
_inherited_files: list[object] = []
