"""The ``telemetry`` command line.

Built-in commands cover reading, maintenance and configuration; installed
plugins add more through the ``register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import DEFAULT_CONFIG_TOML, check_sections, load_config, redact_secrets
from .errors import TelemetryError
from .model import QueryFilter, encode_cursor
from .output import EVENT_COLUMNS, FORMATS, SESSION_COLUMNS, render
from .assembly import assemble
from .plugins import ENTRY_POINT_GROUP, PluginHost, command_plugins, installed_plugins
from .service import install_signal_handlers
from .times import query_time


class _Group(click.Group):
    """Turns :class:`TelemetryError` into a one-line error and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TelemetryError as exc:
            raise click.ClickException(str(exc)) from None


class _State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._service = None

    def service(self) -> Any:
        if self._service is None:
            from .service import TelemetryService

            self._service = TelemetryService(self.config_path)
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.shutdown()


def _time_option(value: str | None, option: str | None = None) -> int | None:
    """A time option's value as epoch ms: the kernel's parser and range check, a usage error (exit 2) otherwise."""
    if value is None:
        return None
    try:
        return query_time(value, option or "time")
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 2)[-1], param_hint=option) from None


def _format_option(default: str = "table") -> Any:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="Output format.")


@click.group(cls=_Group)
@click.option("--config", "config_path", envvar="TELEMETRY_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default: ./telemetry.toml or [tool.vibekit-telemetry] in ./pyproject.toml).")
@click.version_option(__version__, prog_name="telemetry")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Record, inspect and manage telemetry of AI applications."""
    state = _State(config_path)
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(state: _State, as_json: bool) -> None:
    """List installed plugins, which ones the configuration loads, and the hooks each implements."""
    loaded_names: list[str] = []
    hooks: dict[str, list[str]] = {}
    load_error = None
    try:
        host = _planned_host(state.config_path)
        loaded_names = list(host.order)
        hooks = {name: host.hooks_of(name) for name in loaded_names}
    except TelemetryError as exc:
        load_error = str(exc)
    rows = []
    for plugin in installed_plugins():
        rows.append({"name": plugin.name, "distribution": plugin.distribution, "version": plugin.version,
                     "loaded": plugin.name in loaded_names, "hooks": hooks.get(plugin.name, []),
                     "entry_point": plugin.target})
    for name in loaded_names:
        if not any(r["name"] == name for r in rows):
            rows.append({"name": name, "distribution": None, "version": None, "loaded": True,
                         "hooks": hooks.get(name, []), "entry_point": "(object)"})
    if as_json:
        click.echo(json.dumps({"group": ENTRY_POINT_GROUP, "plugins": rows, "error": load_error}, indent=2))
    else:
        render([{**r, "hooks": ", ".join(r["hooks"]), "loaded": "yes" if r["loaded"] else "no"} for r in rows],
               ("name", "distribution", "version", "loaded", "hooks"), "table", title="Plugins")
        if load_error:
            click.echo(f"configuration error: {load_error}", err=True)
    if load_error:
        sys.exit(1)


@cli.group()
def config() -> None:
    """Show, validate or create the configuration."""


@config.command("show")
@click.pass_obj
def config_show(state: _State) -> None:
    """Print the merged configuration (secrets redacted) and where it came from."""
    loaded = load_config(state.config_path)
    click.echo(f"# sources: {', '.join(loaded.sources) or 'defaults only'}")
    import attrs

    from .config import deep_merge

    shown = deep_merge(attrs.asdict(loaded.config), loaded.raw)
    click.echo(json.dumps(redact_secrets(shown), indent=2, default=str))


@config.command("validate")
@click.pass_obj
def config_validate(state: _State) -> None:
    """Check the configuration and that every plugin it names is installed and accepts its options.

    Sections that are present but not enabled are checked against their plugin's options too (a typo
    there would only show once the section is turned on); one whose plugin is not installed is reported.
    Exits 1 when anything is wrong.
    """
    loaded = load_config(state.config_path)
    problems, notes = check_sections(loaded)
    host = None
    try:
        host = _planned_host(state.config_path)
    except TelemetryError as exc:
        problems.insert(0, str(exc))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if problems:
        click.echo("configuration has problems:\n" + "\n".join(f"- {p}" for p in problems), err=True)
        sys.exit(1)
    assert host is not None
    click.echo(f"configuration OK ({', '.join(loaded.sources) or 'defaults only'}); "
               f"plugins: {', '.join(host.order) or 'none'}"
               + (f"; {len(notes)} section(s) not checked (see the notes)" if notes else ""))


@config.command("init")
@click.option("--path", type=click.Path(dir_okay=False), default="telemetry.toml", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(path: str, force: bool) -> None:
    """Write a commented default configuration file."""
    target = Path(path)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; use --force to overwrite it")
    target.write_text(DEFAULT_CONFIG_TOML, encoding="utf-8")
    click.echo(f"wrote {target}")


def _planned_host(config_path: str | None) -> PluginHost:
    """The configured plugins registered (so hook names are checked) but not started: no storage is opened."""
    host = PluginHost()
    for planned in assemble(load_config(config_path)).plugins:
        host.register(planned.name, planned.obj)
    return host


def _meta_pairs(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@cli.command()
@click.option("--category", help="Only this category (agent).")
@click.option("--type", "event_type", type=click.Choice(["start", "stream", "end", "error", "custom"]))
@click.option("--session", "session_id", help="Only this session.")
@click.option("--action")
@click.option("--label")
@click.option("--since", help="Start time: 30m, 1h, 2d, an ISO date, or now.")
@click.option("--until", help="End time, same forms as --since.")
@click.option("--meta", multiple=True, help="Metadata equality filter KEY=VALUE (repeatable).")
@click.option("-q", "--text", help="Full-text search over prompts and streamed text.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--order", type=click.Choice(["asc", "desc"]), default="desc", show_default=True)
@_format_option()
@click.pass_obj
def query(state: _State, fmt: str, meta: tuple[str, ...], since: str | None, until: str | None, **kwargs: Any) -> None:
    """Query events."""
    events = state.service().query(since=_time_option(since, "--since"), until=_time_option(until, "--until"),
                                   metadata=_meta_pairs(meta), **kwargs)
    render([e.to_dict() for e in events], EVENT_COLUMNS, fmt, title=f"{len(events)} events")


@cli.command()
@click.option("--status", help="active, completed, failed ...")
@click.option("--agent")
@click.option("--mode")
@click.option("--kind", help="llm, agent, tool, chain, embedding ...")
@click.option("--model")
@click.option("--conversation", "conversation_id", help="Only sessions of this conversation.")
@click.option("--user", "user_id", help="Only sessions of this user.")
@click.option("--since")
@click.option("--until")
@click.option("--roots", is_flag=True, help="Only top-level sessions (no tool calls or sub-agents).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@_format_option()
@click.pass_obj
def sessions(state: _State, fmt: str, since: str | None, until: str | None, roots: bool, **kwargs: Any) -> None:
    """List sessions, newest first."""
    found = state.service().get_sessions(since=_time_option(since), until=_time_option(until), root_only=roots, **kwargs)
    render([s.to_dict() for s in found], SESSION_COLUMNS, fmt, title=f"{len(found)} sessions")


@cli.command()
@click.argument("session_id")
@click.option("--with-events", is_flag=True, help="Also list the session's events in time order.")
@click.option("--tree", is_flag=True, help="Include child sessions (tool calls, sub-agents).")
@_format_option()
@click.pass_obj
def session(state: _State, session_id: str, with_events: bool, tree: bool, fmt: str) -> None:
    """Show one session."""
    service = state.service()
    found = service.get_session(session_id, tree=tree)
    if found is None:
        raise click.ClickException(f"no session {session_id!r}")
    record = found.to_dict()
    events = service.query(session_id=session_id, order="asc") if with_events else []
    if fmt in ("json", "jsonl"):
        if with_events:
            record["events"] = [e.to_dict() for e in events]
        render([record], SESSION_COLUMNS, fmt)
        return
    render([record], SESSION_COLUMNS, fmt, title=f"session {session_id}")
    if tree and found.children:
        render([c.to_dict() for c in _flatten(found.children)], SESSION_COLUMNS, fmt, title="child sessions")
    if with_events:
        render([e.to_dict() for e in events], EVENT_COLUMNS, fmt, title=f"{len(events)} events")


def _flatten(children: Any) -> list[Any]:
    out = []
    for child in children:
        out.append(child)
        out.extend(_flatten(child.children))
    return out


@cli.command()
@click.option("--category")
@click.option("--type", "event_type", type=click.Choice(["start", "stream", "end", "error", "custom"]))
@click.option("--session", "session_id")
@click.option("--since", default="now", show_default=True, help="Also print events since this time first.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@_format_option("jsonl")
@click.pass_obj
def tail(state: _State, since: str, interval: float, count: int | None, timeout: float | None, fmt: str,
         **kwargs: Any) -> None:
    """Follow new events as any process stores them (Ctrl-C stops)."""
    service = state.service()
    flt = QueryFilter(since=_time_option(since), order="asc", limit=500, **kwargs)
    deadline = time.monotonic() + timeout if timeout else None
    shown = 0
    cursor = None
    try:
        while True:
            page = service.query_page(flt if cursor is None else QueryFilter.build(flt, cursor=cursor))
            events = page.events
            if count is not None:
                events = events[: count - shown]
            if events:
                render([e.to_dict() for e in events], EVENT_COLUMNS, fmt)
                sys.stdout.flush()
                shown += len(events)
                cursor = encode_cursor(events[-1])
            if count is not None and shown >= count:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if len(page.events) < (flt.limit or 0):
                time.sleep(interval)
    except KeyboardInterrupt:
        return


@cli.command()
@click.option("--days", type=click.FloatRange(min=0), required=True, help="Keep this many days of data.")
@click.pass_obj
def clean(state: _State, days: float) -> None:
    """Delete events older than --days."""
    deleted = state.service().clean(days)
    click.echo(f"deleted {deleted} events older than {days:g} days")


@cli.command()
@click.pass_obj
def optimize(state: _State) -> None:
    """Compact indexes and storage files."""
    state.service().optimize()
    click.echo("optimized")


@cli.command()
@click.option("--detailed", is_flag=True, help="Show every component's report.")
@_format_option()
@click.pass_obj
def health(state: _State, detailed: bool, fmt: str) -> None:
    """Report component health, queue, counters and resource use; exit 1 when unhealthy."""
    status = state.service().get_health_status()
    data = status.to_dict()
    if fmt != "table":
        if not detailed:
            data = {k: data[k] for k in ("healthy", "issues", "counters", "pipeline")}
        render([data], (), fmt)
    else:
        click.echo(f"healthy: {'yes' if status.healthy else 'no'}")
        for issue in status.issues:
            click.echo(f"  issue: {issue}")
        c = status.counters
        click.echo(f"events: accepted {c['accepted']}, stored {c['stored']}, dropped {c['dropped']}, "
                   f"filtered {c['filtered']}, rejected {c['rejected']}")
        click.echo(f"queue: {status.pipeline['queue_depth']}/{status.pipeline['max_queue_size']}, "
                   f"spilled to disk {status.pipeline['spilled']}")
        for name, report in status.components.items():
            if "circuit" in report:
                click.echo(f"storage {name}: circuit {report['circuit']}, {report['buffered']} events in its journal, "
                           f"{report['retried']} retries, {report['lost']} lost")
        click.echo(f"memory: {status.memory['used']} MB; storage: {status.storage['used_bytes']} bytes")
        if detailed:
            for name, report in status.components.items():
                click.echo(f"[{name}] " + json.dumps(report, default=str))
    if not status.healthy:
        sys.exit(1)


@cli.command()
@click.option("--sessions", "count", type=click.IntRange(min=1), default=24, show_default=True,
              help="How many agent sessions to record.")
@click.option("--seed", type=int, default=None, help="Random seed for a repeatable workload.")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="End by serving the web dashboard on the demo data (until Ctrl-C).")
@click.option("--port", type=click.IntRange(0, 65535), default=3000, show_default=True,
              help="Port for the dashboard (a free one is picked when it is busy).")
@click.option("--live/--no-live", default=True, show_default=True,
              help="While serving, keep recording new sessions in real time.")
@click.pass_obj
def demo(state: _State, count: int, seed: int | None, serve: bool, port: int, live: bool) -> None:
    """Record a realistic multi-agent workload into the configured storage, show it, and serve the dashboard."""
    from .demo import describe, run_demo

    service = state.service()
    if serve:
        # the dashboard's metrics, charts and anomalies; the detectors watch the live sessions as they come
        _load_installed(service, "analytics", options={"anomaly": {"enabled": True, "interval": 15_000}})
    summary = run_demo(service, sessions=count, seed=seed)
    for line in describe(summary):
        click.echo(line)
    for name, report in service.get_health_status().components.items():
        if report.get("path"):
            click.echo(f"  stored in: {report['path']} ({name})")
    latest = service.get_sessions(limit=8, root_only=True)
    render([s.to_dict() for s in latest], SESSION_COLUMNS, "table", title="latest sessions")
    click.echo("Next: telemetry sessions | telemetry session <id> --with-events | "
               "telemetry query --category claude --since 1h")
    if serve:
        _serve_dashboard(service, port, live, seed)


def _load_installed(service: Any, name: str, options: dict[str, Any] | None = None) -> bool:
    """Load plugin ``name`` (with ``options``) when it is installed and not configured; ``False`` when it is not installed."""
    if name not in {plugin.name for plugin in installed_plugins()}:
        return False
    service.require_plugin(name, where="telemetry demo", options=options)
    return True


def _serve_dashboard(service: Any, port: int, live: bool, seed: int | None) -> None:
    """Serve the dashboard in the background and wait for Ctrl-C or SIGTERM (recording live sessions meanwhile)."""
    import threading

    from .demo import run_live

    if not _load_installed(service, "dashboard"):
        click.echo("The web dashboard is not installed (pip install 'vibekit-telemetry[api,dashboard]'); not serving.")
        return
    options: dict[str, Any] = {"dashboard": True, "rate_limit": {"enabled": False}}
    try:
        server = service.start_api_server(port=port, **options)
    except OSError:
        server = service.start_api_server(port=0, **options)
    except TelemetryError as exc:
        click.echo(f"The dashboard could not start: {exc}", err=True)
        return
    click.echo(f"Dashboard: {getattr(server, 'dashboard_url', None) or server.url}  "
               f"({'recording live sessions; ' if live else ''}Ctrl-C to stop, --no-serve to skip)")
    stop = threading.Event()
    recorder = threading.Thread(target=run_live, args=(service, stop), kwargs={"seed": seed}, daemon=True,
                                name="vibekit-demo-live") if live else None
    if recorder is not None:
        recorder.start()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if recorder is not None:
            recorder.join(5)
        click.echo("stopped")


@cli.group("dead-letter")
def dead_letter() -> None:
    """Events a storage plugin refused for what they hold: list, replay or purge them."""


def _dead_letters(config_path: str | None) -> Any:
    """The dead-letter files of a configuration, read without opening any storage."""
    from .deadletter import DeadLetters

    config = load_config(config_path).config
    buffer_dir = Path(config.reliability.buffer_path) if config.reliability.buffer_path else Path(config.data_dir) / "buffer"
    return DeadLetters(buffer_dir / "dead-letter")


@dead_letter.command("list")
@click.option("--plugin", help="Only what this storage plugin refused.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@_format_option()
@click.pass_obj
def dead_letter_list(state: _State, plugin: str | None, limit: int, fmt: str) -> None:
    """Show refused events, oldest first: when, which plugin, why, and the event."""
    letters = _dead_letters(state.config_path)
    records = letters.records(plugin)
    if fmt != "table":
        render([r.to_dict() for r in records[:limit]], (), fmt)
        return
    rows = [{"timestamp": r.at, "plugin": r.plugin, "id": (r.raw.get("event") or {}).get("id"),
             "category": (r.raw.get("event") or {}).get("category"), "error": r.error} for r in records[:limit]]
    render(rows, ("timestamp", "plugin", "id", "category", "error"), "table",
           title=f"Dead letters ({len(records)}) in {letters.directory}")


@dead_letter.command("replay")
@click.option("--plugin", help="Only what this storage plugin refused.")
@click.pass_obj
def dead_letter_replay(state: _State, plugin: str | None) -> None:
    """Offer refused events to their plugin again; those it stores now leave the file."""
    results = state.service().replay_dead_letters(plugin)
    if not results:
        click.echo("no dead letters")
        return
    failed = False
    for name, result in results.items():
        click.echo(f"{name}: stored {result['stored']}, {result['left']} left")
        for error in result["errors"]:
            click.echo(f"  {error}")
        failed = failed or bool(result["left"])
    if failed:
        sys.exit(1)


@dead_letter.command("purge")
@click.option("--plugin", help="Only what this storage plugin refused.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dead_letter_purge(state: _State, plugin: str | None, yes: bool) -> None:
    """Delete refused events for good."""
    letters = _dead_letters(state.config_path)
    count = letters.count(plugin)
    if not count:
        click.echo("no dead letters")
        return
    if not yes:
        click.confirm(f"delete {count} dead letters for good?", abort=True)
    click.echo(f"purged {letters.purge(plugin)} dead letters")


@cli.command("export")
@click.option("--format", "fmt", help="json, jsonl, csv, parquet, otlp ... (default: from the output file name).")
@click.option("-o", "--output", help="A file, '-' for standard output, or a URL such as s3://bucket/key "
                                     "(default: telemetry-export-<time>.<format> here, printed).")
@click.option("--since", help="Start time: 30m, 1h, 2d, an ISO date.")
@click.option("--until", help="End time, same forms as --since.")
@click.option("--category", help="Only this category (agent).")
@click.option("--type", "event_type", type=click.Choice(["start", "stream", "end", "error", "custom"]))
@click.option("--sessions", help="Only these sessions (comma-separated ids).")
@click.option("--compress", "--compression", "compress",
              help="gzip, zstd or none (default: from the file name); for Parquet its codec: snappy, zstd, gzip, "
                   "lz4, none. The compression= of export() and GET /api/export.")
@click.option("--compression-level", type=int, help="The gzip/zstd level.")
@click.option("--delimiter", help="CSV field delimiter (default ',').")
@click.option("--header/--no-header", "--headers/--no-headers", "header", default=None,
              help="CSV: write the header row (default) or leave it out.")
@click.option("--metadata", "metadata_mode", type=click.Choice(["json", "flatten", "struct"]),
              help="How metadata is written: a JSON column (default), flattened columns (CSV), a struct (Parquet).")
@click.option("--schema", help="Parquet: the schema ('events', the only one).")
@click.option("-O", "--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other export option or filter key, as export() takes it (VALUE is read as JSON if it parses).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def export_command(state: _State, fmt: str | None, output: str | None, since: str | None, until: str | None,
                   category: str | None, event_type: str | None, sessions: str | None, compress: str | None,
                   compression_level: int | None, delimiter: str | None, header: bool | None,
                   metadata_mode: str | None, schema: str | None, extra: tuple[str, ...], force: bool) -> None:
    """Export events, oldest first, streaming (memory stays bounded however many there are).

    Options mean what they mean in ``export()``: ``--compress`` is its ``compression``, ``-O key=value``
    passes any other key, and an unknown one is an error listing the valid ones.
    """
    arguments: dict[str, Any] = {k: v for k, v in (
        ("since", _time_option(since)), ("until", _time_option(until)), ("category", category),
        ("event_type", event_type), ("session_ids", sessions), ("compression", compress),
        ("compression_level", compression_level), ("delimiter", delimiter), ("header", header),
        ("metadata", metadata_mode), ("schema", schema)) if v is not None}
    for item in extra:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            arguments[key.strip()] = json.loads(text)
        except ValueError:
            arguments[key.strip()] = text
    from .transfer import default_export_name, stream_compression

    target: Any = output
    service = None
    named_here = output is None
    if output is None:
        if fmt is None:
            raise click.UsageError("name the export: --format (the file is then named after it) or --output FILE")
        service = state.service()
        # the name says the compression the kernel applies; a format that compresses itself (Parquet) keeps its own
        native = "compression" in (service.export_options(fmt) or ())
        try:
            suffix = None if native or compress is None else stream_compression(compress, fmt)
        except TelemetryError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        output = target = default_export_name(fmt, suffix)
    elif output == "-":
        target = click.get_binary_stream("stdout")
        if fmt is None:
            raise click.UsageError("--format is needed when writing to standard output")
    elif "://" not in output and os.path.exists(output) and not force:
        if not (sys.stdin.isatty() and click.confirm(f"{output} exists; overwrite it?", err=True)):
            click.echo(f"error: {output} exists; pass --force to overwrite it", err=True)
            sys.exit(2)
    service = service or state.service()
    try:
        if output != "-" and sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn

            with Progress(SpinnerColumn(), TextColumn("exported {task.completed:,} events"), transient=True) as bar:
                task = bar.add_task("export", total=None)
                count = service.export(fmt, arguments, output=target,
                                       progress=lambda n: bar.update(task, completed=n))
        else:
            count = service.export(fmt, arguments, output=target)
    except (TelemetryError, ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if output != "-":
        # a name the command chose goes to standard output: it is the result the caller needs to find the file
        click.echo(f"exported {count:,} events to {output}", err=not named_here)


@cli.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", help="json, jsonl, csv, parquet, otlp (default: from the file name).")
@click.pass_obj
def import_command(state: _State, source: str, fmt: str | None) -> None:
    """Read events back from an export file (gzip and zstd are detected) into the configured storage."""
    try:
        result = state.service().import_events(source, fmt)
    except (TelemetryError, ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"imported {result.imported:,} of {result.read:,} events from {source}"
               + (f"; {result.rejected:,} rejected" if result.rejected else ""))
    for error in result.errors:
        click.echo(f"  {error}", err=True)
    if result.rejected:
        sys.exit(1)


def _add_plugin_commands() -> None:
    targets = []
    from .plugins import resolve_entry_points

    for plugin in installed_plugins():
        try:
            targets.extend(resolve_entry_points([plugin.name]).items())
        except TelemetryError as exc:
            click.echo(f"warning: {exc}", err=True)
    pm = command_plugins(targets)
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            click.echo(f"warning: plugin {impl.plugin_name} could not add its commands: {exc}", err=True)


def main() -> None:
    """Entry point of the ``telemetry`` script."""
    install_signal_handlers()  # SIGTERM drains pending events like Ctrl-C does
    _add_plugin_commands()
    cli(prog_name="telemetry")


if __name__ == "__main__":
    main()
