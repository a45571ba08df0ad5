"""A storage plugin's writer in a process of its own (``storage.options.writer = "process"``).

On one interpreter the writer thread and the application share the GIL, so a busy application and the
store's Python work take turns: wall time is the caller's time plus the writer's.  With a writer process the
plugin starts one child (``python -c``, the parent's ``sys.path``) that opens its own store and owns the write
connection.  :meth:`WriterProcess.store` returns once the child answers that the batch is committed, so
everything ``docs/reliability.md`` promises holds as it does with the thread: a batch is stored or raises
(the kernel retries, journals, dead-letters), batches are written in order, ``flush()`` returns after the
commit.  The store's work runs on another core while the application keeps its own.

A batch travels as *parts* of :attr:`WriterProcess.part_rows` rows, each one length-prefixed frame (marshal,
the fastest codec for tuples of atoms, between two processes of the same interpreter; JSON, then pickle, for
what marshal refuses), every part but the last flagged "more follows".  The child starts on a part as soon as it
arrives, inside the batch's one transaction, while the parent encodes the next: the parent's work for a
batch overlaps the child's instead of preceding it.  The child commits after the last part and answers
once; a batch the parent could not finish sending (it died) is rolled back, never committed in part.

The child is told what to open by an *opener*: ``"module:function"``, a function taking the options (plain
JSON) and returning an open store with ``store_rows(rows)`` and ``close()``, and optionally
``store_parts(parts)``: the batch as an iterable of parts, consumed as they arrive, in one transaction.  A
plugin may also give ``prepare``, run in the parent on each part before it is encoded (the sqlite plugin
turns kernel rows into its SQL rows there, so the child binds them as they come).  The sqlite plugin names
its own (``writer = "process"``); another storage plugin gets the same by naming one.

Failure modes: the child exits (killed, out of memory) -> the batch in flight raises
:class:`StorageUnavailableError` (its transaction was rolled back, or committed before the answer was lost,
which the store's id check on the retry absorbs) and the next batch starts a new child.  The parent exits,
even by ``kill -9`` -> the child reads the end of its pipe, rolls back a batch it got only part of, and
exits.  A forked application child starts a writer of its own on its first batch.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import marshal
import os
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import orjson

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .errors import ConfigError, EventsRejectedError, StorageError, StorageUnavailableError

log = logging.getLogger("vibekit_telemetry.writer")

#: a frame: payload length, then its kind
_FRAME = struct.Struct("!IB")
_JSON, _PICKLE, _REPLY, _MARSHAL = 1, 2, 3, 4
#: added to a part's kind when more frames of the same batch follow
_MORE = 0x80
#: added to the kind of a batch's last frame when it is the batch's summary rather than rows
_SUMMARY = 0x40
#: rows per part of a batch (small enough that the child starts soon, large enough that framing costs nothing)
PART_ROWS = 1000
#: errors the child reports that the parent raises as the same class (the kernel's retry and dead-letter
#: decisions depend on the class: the built-in ones are what it takes for a value the store cannot hold, whose
#: event it isolates and dead-letters, as it does when the thread writer raises them); the child reports the
#: nearest of these in its exception's class hierarchy
_ERRORS: dict[str, type[Exception]] = {
    "StorageUnavailableError": StorageUnavailableError, "EventsRejectedError": EventsRejectedError,
    "StorageError": StorageError, "ConfigError": ConfigError, "OverflowError": OverflowError,
    "UnicodeError": UnicodeError, "TypeError": TypeError, "ValueError": ValueError,
}
#: what the child runs: the parent's import path first, then the serving loop
_BOOT = ("import sys, json; sys.path[:0] = json.loads(sys.stdin.buffer.readline()); "
         "from vibekit_telemetry.writer import serve; serve()")


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: BinaryIO) -> tuple[int, bytes] | None:
    header = _read_exact(stream, _FRAME.size)
    if header is None:
        return None
    size, kind = _FRAME.unpack(header)
    payload = _read_exact(stream, size) if size else b""
    return None if payload is None else (kind, payload)


def _write_frame(stream: BinaryIO, kind: int, payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload), kind))
    stream.write(payload)
    stream.flush()


def _widen(stream: BinaryIO) -> None:
    """Let the pipe hold a whole batch (Linux: up to ``/proc/sys/fs/pipe-max-size``, 1 MiB by default), so the
    parent sends every part while the child works on the first instead of waiting for it to read."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    for size in (1 << 22, 1 << 20):
        try:
            fcntl.fcntl(stream.fileno(), set_size, size)
            return
        except OSError:
            continue


def _encode(value: Any) -> tuple[int, bytes]:
    """A part or a summary as (kind, payload): marshal for plain values (tuples of atoms, the common case);
    what it refuses (a subclass of ``str`` or ``int`` such as an enum member, a datetime) as JSON, the form the
    store writes anyway (tuples arrive as lists, which rows and session rows are read as too); pickle last."""
    try:
        return _MARSHAL, marshal.dumps(value)
    except ValueError:
        pass
    try:
        return _JSON, orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return _PICKLE, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(kind: int, payload: bytes) -> Any:
    if kind == _MARSHAL:
        return marshal.loads(payload)
    return orjson.loads(payload) if kind == _JSON else pickle.loads(payload)


class _Truncated(Exception):
    """The parent stopped sending in the middle of a batch (it died): what arrived of it must not commit."""


class WriterProcess:
    """The parent's side: starts the child, sends it batches, turns its answers into results or exceptions.

    ``opener`` is ``"module:function"`` (see the module's docs), ``options`` what it gets, ``name`` how
    messages call the child (``"the SQLite writer process for /path/telemetry.db"``).
    """

    def __init__(self, opener: str, options: dict[str, Any], name: str, *,
                 prepare: Callable[[list[tuple[Any, ...]]], list[Any]] | None = None,
                 summarize: Callable[[list[tuple[Any, ...]]], Any] | None = None,
                 part_rows: int = PART_ROWS) -> None:
        self.opener = opener
        self.options = options
        self.name = name
        #: run on each part in the parent before it is encoded (``None``: the rows go as they are)
        self.prepare = prepare
        #: run on the whole batch in the parent after its parts are sent (while the child inserts them); what it
        #: returns reaches the child's ``store_parts`` as :attr:`Batch.summary`
        self.summarize = summarize
        self.part_rows = max(1, part_rows)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._owner = os.getpid()
        #: children started so far (a new one after each that died)
        self.started = 0

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the child (it opens its store while the parent goes on); idempotent."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            self._forget(self._proc)  # it exited between two batches
        proc = self._proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, close_fds=True)
        self._ready = False
        self.started += 1
        _LIVE.add(self)
        try:
            assert proc.stdin is not None
            _widen(proc.stdin)
            hello = orjson.dumps({"opener": self.opener, "options": self.options})
            proc.stdin.write(orjson.dumps([p for p in sys.path if p]) + b"\n")
            _write_frame(proc.stdin, _JSON, hello)
        except BaseException:
            # a child that did not get its whole hello would wait for it forever, and so would the next batch
            proc.kill()
            proc.wait()
            self._forget(proc)
            raise

    def _await_reply(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        frame = _read_frame(proc.stdout)
        if frame is None:
            code = proc.wait()
            self._forget(proc)
            raise StorageUnavailableError(f"{self.name} exited (code {code}); the batch is retried with a new one")
        return orjson.loads(frame[1])

    def store(self, rows: list[tuple[Any, ...]]) -> None:
        """Have the child store the rows (as the plugin's writer thread would, in one transaction)."""
        with self._lock:
            if os.getpid() != self._owner:  # a forked child: the pipe is the parent's
                self._proc, self._owner = None, os.getpid()
            self._start_locked()
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            if not self._ready:
                reply = self._await_reply(proc)  # the child opened its store (or says why it could not)
                self._raise_if_error(reply)
                self._ready = True
            try:
                self._send(proc, rows)
                reply = self._await_reply(proc)
            except StorageUnavailableError:
                raise  # the child exited
            except BaseException as exc:
                # Sending stopped in the middle of a batch (the pipe broke, or preparing a part raised) or the
                # answer was not read: the child must not take the next batch as the rest of this one, nor its
                # answer as the next one's.  Stopped, it rolls back what it had; the next batch starts a new one.
                proc.kill()
                proc.wait()
                self._forget(proc)
                if isinstance(exc, OSError):
                    raise StorageUnavailableError(f"{self.name} is gone ({exc}); the batch is retried with a new "
                                                  "one") from None
                raise
            self._raise_if_error(reply)

    def _send(self, proc: subprocess.Popen[bytes], rows: list[tuple[Any, ...]]) -> None:
        """The batch as parts; each is encoded while the child works on the one before."""
        stdin = proc.stdin
        assert stdin is not None
        prepare, step = self.prepare, self.part_rows
        size, summarize = len(rows), self.summarize
        for start in range(0, max(size, 1), step):  # an empty batch is one empty part
            part = rows[start:start + step]
            kind, payload = _encode(prepare(part) if prepare is not None else part)
            _write_frame(stdin, kind if start + step >= size and summarize is None else kind | _MORE, payload)
        if summarize is not None:
            kind, payload = _encode(summarize(rows))
            _write_frame(stdin, kind | _SUMMARY, payload)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        """A child that exited: its pipes closed, the next batch starts a new one."""
        self._proc = None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # a write buffered for a reader that is gone

    @staticmethod
    def _raise_if_error(reply: dict[str, Any]) -> None:
        error = reply.get("error")
        if error is not None:
            raise _ERRORS.get(error, StorageError)(reply.get("message") or error)

    def close(self, timeout: float = 10.0) -> None:
        """Let the child finish what it has and exit (killed after ``timeout`` seconds)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or os.getpid() != self._owner:
                return
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                log.error("%s (pid %d) did not exit in %.0f s: killed", self.name, proc.pid, timeout)
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()


def _error_name(exc: BaseException) -> str:
    """The class the parent raises for ``exc``: the nearest of :data:`_ERRORS` among its classes."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS), type(exc).__name__)


#: writers with a child, whose pipes a forked application child lets go of (see :func:`_after_fork_in_child`)
_LIVE: weakref.WeakSet[WriterProcess] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked application child: point the inherited ends of each writer's pipes at ``/dev/null``.

    Otherwise the fork keeps the parent's writer child from ever reading the end of its input: killed in the
    middle of a batch, the parent would leave its child waiting inside the batch's transaction (the file
    write-locked) for as long as the fork lives, and ``close()`` would wait for it.  The descriptors stay open
    (on ``/dev/null``), so the parent's file objects the fork inherited can never close a descriptor reused
    for something else, nor flush the parent's buffered bytes into the pipe.  The fork's own batches start a
    child of their own.
    """
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for writer in list(_LIVE):
            proc = writer._proc
            for stream in (proc.stdin, proc.stdout) if proc is not None else ():
                try:
                    if stream is not None:
                        os.dup2(null, stream.fileno())
                except (OSError, ValueError):
                    pass
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def serve() -> None:
    """The child's loop: open the store, then store each batch that arrives and answer; exit at end of input."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the answer pipe
    frame = _read_frame(stdin)
    if frame is None:
        return
    hello = orjson.loads(frame[1])
    try:
        module, _, function = hello["opener"].partition(":")
        store = getattr(importlib.import_module(module), function)(hello["options"])
    except Exception as exc:  # the parent re-raises it as its own
        _write_frame(stdout, _REPLY, orjson.dumps({"error": _error_name(exc), "message": str(exc)}))
        return
    _write_frame(stdout, _REPLY, b'{"ready":true}')
    store_parts = getattr(store, "store_parts", None)
    try:
        while (frame := _read_frame(stdin)) is not None:
            batch = Batch(stdin, frame)
            try:
                if store_parts is not None:
                    store_parts(batch)
                else:
                    store.store_rows(list(itertools.chain.from_iterable(batch)))
                answer = {"ok": True}
            except _Truncated:
                return  # the parent is gone: the batch was rolled back, nobody waits for the answer
            except Exception as exc:
                answer = {"error": _error_name(exc), "message": str(exc)}
            try:
                batch.skip_rest()  # what the store did not read of the batch (it stopped at an error)
            except _Truncated:
                return
            _write_frame(stdout, _REPLY, orjson.dumps(answer))
    finally:
        store.close()


class Batch:
    """One batch in the child: iterate for its parts (lists of rows, each read from the pipe as the store asks
    for it), then read :attr:`summary` (what the parent's ``summarize`` made of the batch, or ``None``).

    Iterating raises :class:`_Truncated` (inside the store's transaction, which rolls it back) when the pipe
    ends before the batch does.
    """

    def __init__(self, stdin: BinaryIO, first: tuple[int, bytes]) -> None:
        self._stdin = stdin
        #: the frame read and not yet handed out, and whether frames of this batch remain in the pipe
        self._frame: tuple[int, bytes] | None = first
        self._more = False
        self.summary: Any = None

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            frame = self._frame
            if frame is None:
                if not self._more:
                    return
                # read only when the store asks: the parent is still sending it while the store works
                frame = _read_frame(self._stdin)
                if frame is None:
                    self._more = False
                    raise _Truncated
            self._frame = None
            kind, payload = frame
            self._more = bool(kind & _MORE)
            if kind & _SUMMARY:
                self.summary = _decode(kind & ~(_MORE | _SUMMARY), payload)
            else:
                yield _decode(kind & ~_MORE, payload)

    def skip_rest(self) -> None:
        """Read what is left of the batch from the pipe (the next batch starts after it)."""
        for _ in self:
            pass
