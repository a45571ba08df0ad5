"""``telemetry audit [--since] [--action]`` and ``telemetry audit verify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from vibekit_telemetry import TelemetryError, format_ms, to_ms


def _service(ctx: click.Context) -> Any:
    from vibekit_telemetry import TelemetryService

    state = ctx.find_root().obj
    service = TelemetryService(getattr(state, "config_path", None), security={"audit": {"enabled": True}})
    ctx.call_on_close(service.shutdown)
    return service


def register(cli: click.Group) -> None:
    """Add ``audit`` to the ``telemetry`` group."""

    @cli.group(name="audit", invoke_without_command=True)
    @click.option("--since", default="24h", show_default=True, help="Entries from this time on.")
    @click.option("--action", default=None, help="Only this action (clean, export, rotate, config, create, delete, update, access).")
    @click.option("--limit", default=1000, show_default=True)
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.pass_context
    def audit(ctx: click.Context, since: str, action: str | None, limit: int, fmt: str) -> None:
        """Who did what and when, newest first."""
        if ctx.invoked_subcommand is not None:
            return
        try:
            entries = _service(ctx).get_audit_logs(action=action, since=to_ms(since), limit=limit)
        except (TelemetryError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        if fmt == "json":
            click.echo(json.dumps(entries, indent=2))
            return
        for entry in entries:
            details = ", ".join(f"{k}={v}" for k, v in entry["details"].items() if k != "config")
            click.echo(f"{entry['seq']:>6}  {format_ms(entry['timestamp'])}  {entry['actor']:<12} {entry['action']:<8} "
                       f"{entry['target']}  {details}")

    @audit.command()
    @click.pass_context
    def verify(ctx: click.Context) -> None:
        """Check the hash chain; exit 1 naming the first entry that was changed, removed or reordered."""
        from . import verify as check

        service = _service(ctx)
        path = Path(service.host.meta["audit"]["object"].path)
        checked, problem = check(path)
        if problem is not None:
            click.echo(f"audit trail {path}: {problem} ({checked} entries before it are intact)", err=True)
            sys.exit(1)
        click.echo(f"audit trail {path}: {checked} entries, chain intact")
