"""contrib/monitoring: the Grafana dashboard only queries metrics the server exports; the configs are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parents[3] / "contrib" / "monitoring"


def _exported_families(client) -> set[str]:
    return {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}


def test_every_dashboard_query_uses_an_exported_metric(make_server):
    service, _, client = make_server(service_options={"analytics": {"enabled": True}})
    sid = service.track_start("claude", "chat", "hi", metadata={"model": "claude-sonnet-4-5"})
    service.track_end(sid, metadata={"model": "claude-sonnet-4-5", "input_tokens": 3})
    service.flush()
    families = _exported_families(client)
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "vibekit-telemetry.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\b((?:vibekit|process)_[a-z_]+)", target["expr"]))
    assert len(used) >= 15
    missing = sorted(name for name in used if re.sub(r"_(total|bucket|count|sum)$", "", name) not in families)
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"


def test_prometheus_and_compose_configs_are_consistent():
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["static_configs"][0]["targets"] == ["telemetry:3000"]
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"telemetry", "prometheus", "grafana"}
    assert "3000:3000" in compose["services"]["telemetry"]["ports"]
    # the read-only key Prometheus presents is the one the server accepts
    assert compose["services"]["telemetry"]["environment"]["TELEMETRY_API_READ_KEYS"] == \
        job["authorization"]["credentials"]
    datasource = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
