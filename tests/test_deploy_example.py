"""The team deployment in contrib/deploy is real configuration: every key of it is one we read."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "contrib" / "deploy"


def test_the_deploy_configuration_validates_and_its_api_section_structures(tmp_path):
    pytest.importorskip("vibekit_telemetry_postgres")
    api = pytest.importorskip("vibekit_telemetry_api")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "TELEMETRY_POSTGRES_DSN": "postgresql://telemetry:not-printed@db.internal/telemetry"}
    done = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "--config", str(DEPLOY / "telemetry.toml"),
                           "config", "validate"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0 and "configuration OK" in done.stdout, done.stdout + done.stderr
    section = tomllib.loads((DEPLOY / "telemetry.toml").read_text())["api"]
    config = api.merged_config(api.APIConfig(), section, "contrib/deploy/telemetry.toml")
    assert config.workers == 2 and config.rate_limit.storage.startswith("redis://")


def test_the_compose_file_names_the_services_the_docs_describe():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"postgres", "redis", "api-1", "api-2"} <= set(compose["services"])
    assert any("otel" in name or "collector" in name for name in compose["services"])
