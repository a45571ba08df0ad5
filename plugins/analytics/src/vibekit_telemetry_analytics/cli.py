"""``telemetry metrics`` and ``telemetry analytics performance|anomalies|insights|dashboard|rebuild|evaluate``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from vibekit_telemetry import TelemetryError, format_ms, time_range


def _service(ctx: click.Context, *, caught_up: bool = False) -> Any:
    """The configured service, with analytics enabled even when the configuration leaves it off.

    ``caught_up`` waits until the rollups count every stored event: a command that answers once and exits
    would otherwise print what the first start over an existing store had counted so far.
    """
    from vibekit_telemetry import TelemetryService

    state = ctx.find_root().obj
    config_path = getattr(state, "config_path", None)
    service = TelemetryService(config_path, analytics={"enabled": True})
    ctx.call_on_close(service.shutdown)
    plugin = service.host.meta["analytics"]["object"]
    if caught_up and not plugin.wait_for_catch_up(0):
        click.echo("counting the stored events into the analytics rollups (once per store) ...", err=True)
        while not plugin.wait_for_catch_up(0.5):
            progress = plugin._progress()
            if progress is not None and not progress["running"]:  # waiting for storage to open: answer now
                click.echo("storage is not open yet: these figures are short of what it holds", err=True)
                break
    return service


def _window(since: str, until: str | None) -> tuple[int, int]:
    try:
        # a span ("24h") counts back from now; no end means now; both ends range-checked by the kernel
        return time_range((since, until), names=("--since", "--until"))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}{unit}"
    return f"{value:,}{unit}"


def _print_metrics(metrics: Any) -> None:
    p = metrics.performance
    click.echo(f"window: {format_ms(metrics.start)} .. {format_ms(metrics.end)}")
    click.echo(f"events: {metrics.events.total:,} ({metrics.events.per_minute:,.2f}/min)  "
               + ", ".join(f"{k} {v:,}" for k, v in sorted(metrics.events.by_type.items())))
    s = metrics.sessions
    click.echo(f"sessions: started {s.started:,}, completed {s.completed:,}, failed {s.failed:,}, active {s.active:,}")
    click.echo(f"errors: {metrics.errors.total:,} ({metrics.errors.rate}% of events; "
               f"{metrics.errors.session_failure_rate}% of sessions failed)")
    click.echo(f"latency ms: avg {_fmt(p.avg_latency)}, p50 {_fmt(p.p50_latency)}, p95 {_fmt(p.p95_latency)}, "
               f"p99 {_fmt(p.p99_latency)}; time to first chunk: avg {_fmt(p.avg_ttft)}, p95 {_fmt(p.p95_ttft)}")
    t = metrics.tokens
    click.echo(f"tokens: input {t.input:,}, output {t.output:,}, cache read {t.cache_read:,}; "
               f"estimated cost ${_fmt(metrics.cost)}")
    if metrics.by_model:
        click.echo("by model:")
        for model, b in metrics.by_model.items():
            click.echo(f"  {model}: {b.sessions.ended:,} sessions, p95 {_fmt(b.performance.p95_latency)} ms, "
                       f"{b.tokens.total:,} tokens, ${_fmt(b.tokens.cost)}")
    if metrics.by_category:
        click.echo("by agent:")
        for name, b in metrics.by_category.items():
            click.echo(f"  {name}: {b.events:,} events, {b.sessions.started:,} sessions, "
                       f"{b.errors.rate}% errors, p95 {_fmt(b.performance.p95_latency)} ms")
    folded = {kind: n for kind, n in (metrics.folded_events or {}).items() if n}
    if folded:
        click.echo("folded into 'other' (more names than analytics.max_categories / max_models keep): "
                   + ", ".join(f"{n:,} events by {kind}" for kind, n in folded.items()))
    for name, metric in metrics.custom.items():
        click.echo(f"custom {name} ({metric.type}{', ' + metric.unit if metric.unit else ''}): {_fmt(metric.value)}")


def register(cli: click.Group) -> None:
    """Add the analytics commands to the ``telemetry`` group."""

    @cli.command(name="metrics")
    @click.option("--since", default="24h", show_default=True, help="Window start (a span like 1h, or a time).")
    @click.option("--until", default=None, help="Window end (default now).")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.pass_context
    def metrics_command(ctx: click.Context, since: str, until: str | None, fmt: str) -> None:
        """Headline metrics of a window: events, sessions, errors, latency, tokens and cost."""
        try:
            result = _service(ctx, caught_up=True).get_metrics(_window(since, until))
        except TelemetryError as exc:
            _fail(exc)
        if fmt == "json":
            click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            _print_metrics(result)

    @cli.group(name="analytics")
    def analytics() -> None:
        """Performance, anomalies, insights and a live dashboard from the analytics plugin."""

    @analytics.command()
    @click.option("--since", default="24h", show_default=True)
    @click.option("--until", default=None)
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.pass_context
    def performance(ctx: click.Context, since: str, until: str | None, fmt: str) -> None:
        """Latency and time to first chunk, overall and per agent and model."""
        result = _service(ctx, caught_up=True).get_metrics(_window(since, until))
        if fmt == "json":
            data = {"performance": result.to_dict()["performance"],
                    "by_category": {k: v["performance"] for k, v in result.to_dict()["by_category"].items()},
                    "by_model": {k: v["performance"] for k, v in result.to_dict()["by_model"].items()}}
            click.echo(json.dumps(data, indent=2))
            return
        rows = [("all", result.performance)] + [(f"agent {k}", v.performance) for k, v in result.by_category.items()] \
            + [(f"model {k}", v.performance) for k, v in result.by_model.items()]
        click.echo(f"{'':28} {'avg':>10} {'p50':>10} {'p95':>10} {'p99':>10} {'ttft avg':>10} {'ttft p95':>10}")
        for name, p in rows:
            click.echo(f"{name[:28]:28} {_fmt(p.avg_latency):>10} {_fmt(p.p50_latency):>10} {_fmt(p.p95_latency):>10} "
                       f"{_fmt(p.p99_latency):>10} {_fmt(p.avg_ttft):>10} {_fmt(p.p95_ttft):>10}")

    @analytics.command()
    @click.option("--since", default="24h", show_default=True)
    @click.option("--until", default=None)
    @click.option("--sensitivity", type=click.Choice(["low", "medium", "high"]), default="medium", show_default=True)
    @click.option("--metric", "metric_names", multiple=True,
                  default=("response_time", "error_rate", "throughput"), show_default=True)
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.pass_context
    def anomalies(ctx: click.Context, since: str, until: str | None, sensitivity: str, metric_names: tuple[str, ...],
                  fmt: str) -> None:
        """Run the anomaly detectors over the stored per-minute history (alerts come from continuous detection)."""
        service = _service(ctx, caught_up=True)
        found = service.detect_anomalies(list(metric_names), _window(since, until), sensitivity)
        if fmt == "json":
            import attrs

            click.echo(json.dumps([attrs.asdict(a) for a in found], indent=2))
            return
        if not found:
            click.echo("no anomalies")
        for anomaly in found:
            click.echo(f"{format_ms(anomaly.timestamp)}  {anomaly.severity:6}  {anomaly.description}")

    @analytics.command()
    @click.option("--since", default="24h", show_default=True)
    @click.option("--until", default=None)
    @click.option("--category", "categories", multiple=True, help="Only these agents (repeatable).")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.pass_context
    def insights(ctx: click.Context, since: str, until: str | None, categories: tuple[str, ...], fmt: str) -> None:
        """What stands out: busiest and slowest agents and models, error hot spots, unfinished sessions, changes."""
        result = _service(ctx, caught_up=True).get_insights(_window(since, until), list(categories) or None)
        if fmt == "json":
            click.echo(json.dumps(result.to_dict(), indent=2, default=str))
            return
        for line in result.summary:
            click.echo(line)
        for title, findings in (("busiest agents", result.busiest_agents), ("busiest models", result.busiest_models),
                                ("slowest agents", result.slowest_agents), ("slowest models", result.slowest_models),
                                ("error hot spots", result.error_hot_spots),
                                ("sessions that never ended", result.unfinished_sessions)):
            if findings:
                click.echo(f"{title}:")
                for finding in findings:
                    click.echo(f"  {finding.message}")
        click.echo("against the previous window:")
        for name, change in result.changes.items():
            pct = change["change_pct"]
            click.echo(f"  {name}: {_fmt(change['previous'])} -> {_fmt(change['current'])}"
                       + (f" ({pct:+.1f}%)" if pct is not None else ""))

    @analytics.command()
    @click.option("--since", default=None, help="Recount from this time (default: the hour retention).")
    @click.pass_context
    def rebuild(ctx: click.Context, since: str | None) -> None:
        """Recount the rollups from storage (after restoring a backup, or importing events)."""
        service = _service(ctx)
        plugin = service.host.meta["analytics"]["object"]
        from vibekit_telemetry import to_ms

        counted = plugin.rebuild(to_ms(since) if since else None)
        click.echo(f"counted {counted:,} events into the rollups")

    @analytics.command()
    @click.option("--refresh", default=2.0, show_default=True, help="Seconds between refreshes.")
    @click.option("--once", is_flag=True, help="Draw one frame and exit (for scripts and tests).")
    @click.pass_context
    def dashboard(ctx: click.Context, refresh: float, once: bool) -> None:
        """A live terminal dashboard: headline metrics, events per minute, active sessions, anomalies."""
        from .tui import render_dashboard

        service = _service(ctx)
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if once:
            console.print(render_dashboard(service))
            return
        with Live(render_dashboard(service), console=console, refresh_per_second=4, screen=False) as live:
            try:
                while True:
                    time.sleep(refresh)
                    live.update(render_dashboard(service))
            except KeyboardInterrupt:
                pass

    @analytics.command()
    @click.option("--nab", "nab_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                  help="The NAB directory (with data/ and labels/).")
    @click.option("--category", "categories", multiple=True,
                  help="NAB categories (default realKnownCause, artificialWithAnomaly, realAWSCloudwatch).")
    @click.option("--sensitivity", type=click.Choice(["low", "medium", "high"]), default="medium", show_default=True)
    @click.option("--noise", "noise_category", default="artificialNoAnomaly", show_default=True,
                  help="A category without anomalies, for false positives per 1,000 rows ('' to skip).")
    def evaluate(nab_dir: Path, categories: tuple[str, ...], sensitivity: str, noise_category: str) -> None:
        """Score the anomaly detector on the Numenta Anomaly Benchmark; the last line is the NAB standard score."""
        from .nab import DEFAULT_CATEGORIES, evaluate as run

        chosen = categories or DEFAULT_CATEGORIES
        result = run(nab_dir, tuple(chosen), sensitivity=sensitivity)
        click.echo(f"detector: likelihood, sensitivity {sensitivity} (threshold {result['threshold']}, "
                   f"cooldown {result['cooldown']} points)")
        for name, summary in result["categories"].items():
            click.echo(_summary_line(name, summary))
        if noise_category:
            try:
                noise = run(nab_dir, (noise_category,), sensitivity=sensitivity)["all"]
            except FileNotFoundError:
                click.echo(f"{noise_category}: not found, skipped")
            else:
                click.echo(f"{noise_category}: {noise['rows']:,} rows, "
                           f"{noise['fp_events_per_1000_rows']:.2f} false-positive events per 1,000 rows")
        total = result["all"]
        click.echo(_summary_line("all", total))
        click.echo(f"NAB standard score: {total['score']:.1f}")


def _summary_line(name: str, s: dict[str, Any]) -> str:
    precision = "-" if s["precision"] is None else f"{s['precision']:.2f}"
    recall = "-" if s["recall"] is None else f"{s['recall']:.2f}"
    score = "-" if s["score"] is None else f"{s['score']:.1f}"
    return (f"{name}: {s['series']} series, {s['rows']:,} rows, {s['windows']} windows; standard score {score}, "
            f"window recall {recall}, precision {precision}, FP events per 1,000 rows {s['fp_events_per_1000_rows']:.2f}")
