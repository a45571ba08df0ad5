"""``telemetry audit [--since] [--action]`` and ``telemetry audit verify``.

Both only read the trail and start no service (a service start records its configuration in the trail, and
verifying must not add to what it verifies).  The trail is where the service keeps it: in PostgreSQL when the
primary store is the postgres plugin's (its ``dsn``, or ``TELEMETRY_POSTGRES_DSN``, and ``schema``) and
``[security.audit] path`` is not set, else in the SQLite file, which is opened read-only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import click

from vibekit_telemetry import TelemetryError, format_ms, load_config, to_ms
from vibekit_telemetry.config import redact_url

#: the variable the postgres store reads when its ``dsn`` option is not set
DSN_ENV = "TELEMETRY_POSTGRES_DSN"


@attrs.frozen
class Location:
    """Where the trail is: a file, or a PostgreSQL database (``dsn``) and schema."""

    path: Path | None = None
    dsn: str | None = None
    schema: str = "public"

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"PostgreSQL {redact_url(self.dsn or '')} (schema {self.schema})"


def _trail(ctx: click.Context, explicit: str | None) -> Location:
    """``--path``; or where the configuration puts it (PostgreSQL, ``[security.audit] path``, the data dir)."""
    from . import trail_path

    if explicit:
        return Location(path=Path(explicit))
    state = ctx.find_root().obj
    try:
        loaded = load_config(getattr(state, "config_path", None))
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from None
    options = dict(loaded.config.security.get("audit") or {})
    for spec in loaded.config.plugins:  # `plugins = [{name = "audit", options = {...}}]` works as well
        if spec.name == "audit":
            options.update(spec.options)
    primary = next((entry for entry in loaded.config.storage if entry.enabled), None)
    if primary is not None and primary.type == "postgres" and not options.get("path"):
        dsn = primary.options.get("dsn") or os.environ.get(DSN_ENV)
        if not dsn:
            raise click.ClickException(f"the storage is postgres, but neither its dsn option nor {DSN_ENV} is set: "
                                       "the audit trail's database is not known")
        return Location(dsn=dsn, schema=primary.options.get("schema", "public"))
    return Location(path=trail_path(options.get("path"), loaded.config.data_dir))


@contextmanager
def _postgres(location: Location) -> Iterator[Any]:
    """A read-only connection to the trail's schema."""
    from .postgres import connect, has_trail

    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise click.ClickException(f"the audit trail is in {location}: install the postgres plugin "
                                   "(pip install vibekit-telemetry-postgres) to read it") from None
    try:
        conn = connect(location.dsn or "", location.schema)
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if not has_trail(conn):
            raise click.ClickException(f"no audit trail in {location}: it is created when the service starts "
                                       "with [security.audit] enabled = true")
        yield conn
    finally:
        conn.close()


def _path_option() -> click.Option:
    return click.option("--path", "path", type=click.Path(dir_okay=False), default=None,
                        help="The trail's SQLite file (default: from the configuration: PostgreSQL when the "
                             "store is, else <data_dir>/audit.db).")


def _read(location: Location, *, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
    if location.dsn is not None:
        from .postgres import read_entries as read_rows

        with _postgres(location) as conn:
            import psycopg

            try:
                return read_rows(conn, action=action, since=since, limit=limit)
            except psycopg.Error as exc:
                raise click.ClickException(f"audit trail in {location}: {exc}") from None
    from . import read_entries

    trail = location.path
    assert trail is not None
    if not trail.is_file():
        raise click.ClickException(f"no audit trail at {trail}: it is created when the service starts with "
                                   "[security.audit] enabled = true")
    try:
        conn = sqlite3.connect(f"{trail.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return read_entries(conn, action=action, since=since, limit=limit)
        finally:
            conn.close()
    except (sqlite3.Error, ValueError) as exc:
        raise click.ClickException(f"audit trail {trail}: {exc}") from None


def register(cli: click.Group) -> None:
    """Add ``audit`` to the ``telemetry`` group."""

    @cli.group(name="audit", invoke_without_command=True)
    @click.option("--since", default="24h", show_default=True, help="Entries from this time on.")
    @click.option("--action", default=None, help="Only this action (clean, export, rotate, config, create, delete, update, access).")
    @click.option("--limit", default=1000, show_default=True)
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @_path_option()
    @click.pass_context
    def audit(ctx: click.Context, since: str, action: str | None, limit: int, fmt: str, path: str | None) -> None:
        """Who did what and when, newest first."""
        if ctx.invoked_subcommand is not None:
            return
        try:
            since_ms = to_ms(since)
        except ValueError as exc:
            raise click.ClickException(f"--since: {exc}") from None
        entries = _read(_trail(ctx, path), action=action, since=since_ms, limit=limit)
        if fmt == "json":
            click.echo(json.dumps(entries, indent=2))
            return
        for entry in entries:
            details = ", ".join(f"{k}={v}" for k, v in entry["details"].items() if k != "config")
            click.echo(f"{entry['seq']:>6}  {format_ms(entry['timestamp'])}  {entry['actor']:<12} {entry['action']:<8} "
                       f"{entry['target']}  {details}")

    @audit.command()
    @_path_option()
    @click.pass_context
    def verify(ctx: click.Context, path: str | None) -> None:
        """Check the trail without writing to it; exit 1 naming what was changed, removed or unprotected.

        Walks the hash chain from entry 1, compares its end with the head record (which only moves forward,
        so deleted entries show even when none is left) and checks the triggers that refuse UPDATE and DELETE.
        """
        location = _trail(ctx, path)
        try:
            if location.dsn is not None:
                from .postgres import verify as check_postgres

                with _postgres(location) as conn:
                    import psycopg

                    try:
                        report = check_postgres(conn)
                    except psycopg.Error as exc:
                        raise click.ClickException(f"audit trail in {location}: {exc}") from None
            else:
                from . import verify as check

                assert location.path is not None
                report = check(location.path)
        except TelemetryError as exc:
            raise click.ClickException(str(exc)) from None
        where = report.where
        count = f"{report.entries} {'entry' if report.entries == 1 else 'entries'}"
        if not report.ok:
            for problem in report.problems:
                click.echo(f"audit trail {where}: {problem}", err=True)
            click.echo(f"audit trail {where}: NOT intact ({count} intact from the first one on)", err=True)
            sys.exit(1)
        click.echo(f"audit trail {where}: {count}, chain intact, none missing, append-only triggers in place")
