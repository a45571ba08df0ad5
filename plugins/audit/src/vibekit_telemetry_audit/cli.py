"""``telemetry audit [--since] [--action]`` and ``telemetry audit verify``.

Both only read the trail: they open its file read-only and start no service (a
service start records its configuration in the trail, and verifying must not
add to what it verifies).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

from vibekit_telemetry import TelemetryError, format_ms, load_config, to_ms


def _trail(ctx: click.Context, explicit: str | None) -> Path:
    """The trail's file: ``--path``, or where the configuration puts it (``[security.audit] path``, the data dir)."""
    from . import trail_path

    if explicit:
        return Path(explicit)
    state = ctx.find_root().obj
    try:
        loaded = load_config(getattr(state, "config_path", None))
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from None
    options = dict(loaded.config.security.get("audit") or {})
    for spec in loaded.config.plugins:  # `plugins = [{name = "audit", options = {...}}]` works as well
        if spec.name == "audit":
            options.update(spec.options)
    return trail_path(options.get("path"), loaded.config.data_dir)


def _path_option() -> click.Option:
    return click.option("--path", "path", type=click.Path(dir_okay=False), default=None,
                        help="The trail's file (default: from the configuration, <data_dir>/audit.db).")


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
        from . import read_entries

        trail = _trail(ctx, path)
        if not trail.is_file():
            raise click.ClickException(f"no audit trail at {trail}: it is created when the service starts with "
                                       "[security.audit] enabled = true")
        try:
            conn = sqlite3.connect(f"{trail.resolve().as_uri()}?mode=ro", uri=True)
            try:
                entries = read_entries(conn, action=action, since=to_ms(since), limit=limit)
            finally:
                conn.close()
        except (sqlite3.Error, ValueError) as exc:
            raise click.ClickException(f"audit trail {trail}: {exc}") from None
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
        from . import verify as check

        trail = _trail(ctx, path)
        try:
            report = check(trail)
        except TelemetryError as exc:
            raise click.ClickException(str(exc)) from None
        count = f"{report.entries} {'entry' if report.entries == 1 else 'entries'}"
        if not report.ok:
            for problem in report.problems:
                click.echo(f"audit trail {trail}: {problem}", err=True)
            click.echo(f"audit trail {trail}: NOT intact ({count} intact from the first one on)", err=True)
            sys.exit(1)
        click.echo(f"audit trail {trail}: {count}, chain intact, none missing, append-only triggers in place")
