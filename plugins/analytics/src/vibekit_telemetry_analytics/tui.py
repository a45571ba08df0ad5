"""The terminal dashboard of ``telemetry analytics dashboard`` (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vibekit_telemetry import format_ms, now_ms

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """Values as a line of block characters, scaled to their maximum."""
    top = max(values, default=0) or 1
    return "".join(_BARS[min(len(_BARS) - 1, round(v / top * (len(_BARS) - 1)))] for v in values)


def render_dashboard(service: Any) -> Group:
    """One frame: headline metrics of the last hour, events per minute, active sessions, recent anomalies."""
    now = now_ms()
    metrics = service.get_metrics((now - 3_600_000, now))
    p = metrics.performance
    headline = Table.grid(padding=(0, 3))
    for _ in range(4):
        headline.add_column()
    headline.add_row("events/min", f"{metrics.events.per_minute:,.1f}", "active sessions", f"{metrics.sessions.active:,}")
    headline.add_row("error rate", f"{metrics.errors.rate:.2f}%", "sessions failed", f"{metrics.sessions.failed:,}")
    headline.add_row("latency p50/p95/p99", "/".join("-" if v is None else f"{v:,.0f}" for v in
                                                     (p.p50_latency, p.p95_latency, p.p99_latency)) + " ms",
                     "ttft avg", "-" if p.avg_ttft is None else f"{p.avg_ttft:,.0f} ms")
    headline.add_row("tokens", f"{metrics.tokens.total:,}", "estimated cost",
                     "-" if metrics.cost is None else f"${metrics.cost:,.4f}")
    series = service.metric_series("throughput", (now - 3_600_000, now))
    spark = Text(sparkline([v for _, v in series]), style="cyan")
    models = Table("model", "sessions", "p95 ms", "tokens", "cost", box=None)
    for model, b in list(metrics.by_model.items())[:8]:
        models.add_row(model, f"{b.sessions.ended:,}", "-" if b.performance.p95_latency is None
                       else f"{b.performance.p95_latency:,.0f}", f"{b.tokens.total:,}",
                       "-" if b.tokens.cost is None else f"${b.tokens.cost:,.4f}")
    anomalies = service.detect_anomalies(["response_time", "error_rate", "throughput"], (now - 3_600_000, now))
    recent = Text("\n".join(f"{format_ms(a.timestamp)[11:19]} {a.severity:6} {a.description}" for a in anomalies[-5:])
                  or "none in the last hour")
    title = f"vibekit-telemetry · {service.service_name} · last hour"
    if metrics.catching_up:  # the first start over an existing store: its events are still being counted in
        title += f" · counting stored events in ({metrics.catch_up['counted']:,} so far)"
    return Group(
        Panel(headline, title=title),
        Panel(spark, title="events per minute (60 min)"),
        Panel(models, title="models"),
        Panel(recent, title="recent anomalies"),
    )
