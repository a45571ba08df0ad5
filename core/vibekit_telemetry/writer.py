"""A storage plugin's writer in a process of its own (``storage.options.writer = "process"``).

On one interpreter the writer thread and the application share the GIL, so a busy application and the
store's Python work take turns: wall time is the caller's time plus the writer's.  With a writer process the
plugin starts one child (``python -c``, the parent's ``sys.path``) that opens its own store and owns the write
connection; each batch of rows goes to it through a pipe as one length-prefixed frame (orjson; pickle for
what orjson refuses), and :meth:`WriterProcess.store` returns once the child answers that the batch is
committed.  So everything ``docs/reliability.md`` promises holds as it does with the thread: a batch is
stored or raises (the kernel retries, journals, dead-letters), batches are written in order, ``flush()``
returns after the commit.  The store's work runs on another core while the application keeps its own.

The child is told what to open by an *opener*: ``"module:function"``, a function taking the options (plain
JSON) and returning an open store with ``store_rows(rows)`` and ``close()``.  The sqlite plugin names its
own (``writer = "process"``); another storage plugin gets the same by naming one.

Failure modes: the child exits (killed, out of memory) -> the batch in flight raises
:class:`StorageUnavailableError` (its transaction was rolled back, or committed before the answer was lost,
which the store's id check on the retry absorbs) and the next batch starts a new child.  The parent exits,
even by ``kill -9`` -> the child reads the end of its pipe, finishes the batch in hand and exits.  A forked
application child starts a writer of its own on its first batch.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import Any, BinaryIO

import orjson

from .errors import ConfigError, EventsRejectedError, StorageError, StorageUnavailableError

log = logging.getLogger("vibekit_telemetry.writer")

#: a frame: payload length, then its kind
_FRAME = struct.Struct("!IB")
_JSON, _PICKLE, _REPLY = 1, 2, 3
#: errors the child reports that the parent raises as the same class (the kernel's retry and dead-letter
#: decisions depend on the class)
_ERRORS: dict[str, type[Exception]] = {
    "StorageUnavailableError": StorageUnavailableError, "EventsRejectedError": EventsRejectedError,
    "StorageError": StorageError, "ConfigError": ConfigError,
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
    stream.write(_FRAME.pack(len(payload), kind) + payload)
    stream.flush()


class WriterProcess:
    """The parent's side: starts the child, sends it batches, turns its answers into results or exceptions.

    ``opener`` is ``"module:function"`` (see the module's docs), ``options`` what it gets, ``name`` how
    messages call the child (``"the SQLite writer process for /path/telemetry.db"``).
    """

    def __init__(self, opener: str, options: dict[str, Any], name: str) -> None:
        self.opener = opener
        self.options = options
        self.name = name
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
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      close_fds=True)
        assert self._proc.stdin is not None
        hello = orjson.dumps({"opener": self.opener, "options": self.options})
        self._proc.stdin.write(orjson.dumps([p for p in sys.path if p]) + b"\n")
        _write_frame(self._proc.stdin, _JSON, hello)
        self._ready = False
        self.started += 1

    def _await_reply(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        frame = _read_frame(proc.stdout)
        if frame is None:
            code = proc.wait()
            self._proc = None
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
                payload, kind = orjson.dumps(rows), _JSON
            except (TypeError, orjson.JSONEncodeError):
                payload, kind = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), _PICKLE
            try:
                _write_frame(proc.stdin, kind, payload)
            except (BrokenPipeError, OSError) as exc:
                proc.kill()
                proc.wait()
                self._proc = None
                raise StorageUnavailableError(f"{self.name} is gone ({exc}); the batch is retried with a new "
                                              "one") from None
            self._raise_if_error(self._await_reply(proc))

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
        _write_frame(stdout, _REPLY, orjson.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    _write_frame(stdout, _REPLY, b'{"ready":true}')
    try:
        while (frame := _read_frame(stdin)) is not None:
            kind, payload = frame
            try:
                rows = pickle.loads(payload) if kind == _PICKLE else orjson.loads(payload)
                store.store_rows(rows)
                answer = {"ok": True}
            except Exception as exc:
                answer = {"error": type(exc).__name__, "message": str(exc)}
            _write_frame(stdout, _REPLY, orjson.dumps(answer))
    finally:
        store.close()
