"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` in a temporary directory, started on a
free loopback port, removed when stopped.

``initdb`` refuses to run as root, so as root the cluster is created and run as the ``postgres`` user (Debian's
``postgresql`` package creates it).  Used by the test fixtures when ``VIBEKIT_TEST_POSTGRES_DSN`` is not set, and
by ``python -m vibekit_telemetry_postgres.cluster`` (which prints the DSN and keeps the server up until killed).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, or Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One throwaway cluster; ``dsn`` connects as the superuser ``postgres`` to the ``postgres`` database."""

    def __init__(self, bindir: Path | None = None) -> None:
        bindir = bindir or find_bindir()
        if bindir is None:
            raise FileNotFoundError("initdb not found: install PostgreSQL (Debian: apt-get install postgresql)")
        self.bindir = bindir
        self.port = 0
        self.root: Path | None = None
        self._as: list[str] = []

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> str:
        self.root = Path(tempfile.mkdtemp(prefix="vibekit-pg-"))
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")  # KeyError: no postgres user to run the server as
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        done = self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        for attempt in range(5):
            self.port = _free_port()
            if self.start_server():
                return self.dsn
            time.sleep(0.2 * (attempt + 1))  # the port was taken between choosing and binding it
        log = (self.root / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{log}")

    def start_server(self) -> bool:
        """Start the server of the cluster on its port; whether it started."""
        assert self.root is not None
        # fsync off: the cluster is thrown away and only the server process is ever crashed (``immediate``),
        # never the machine, so the operating system keeps every WAL write. Commits stay synchronous: a commit
        # the client was told of survives a crash of the server, as on a real one.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB")
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
                         "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return done.returncode == 0

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as a crash would: no checkpoint, every connection cut), keep the data."""
        assert self.root is not None
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def stop(self, mode: str = "fast") -> None:
        if self.root is None:
            return
        self.stop_server(mode)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (by default as a crash would) and start it again on the same port."""
        self.stop_server(mode)
        if not self.start_server():
            raise RuntimeError("PostgreSQL did not restart")


def main() -> None:
    """Start a cluster, print its DSN, and keep it until SIGTERM or SIGINT."""
    cluster = Cluster()
    print(cluster.start(), flush=True)
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        cluster.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
