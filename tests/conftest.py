"""Shared fixtures: a service on a real SQLite file in a temporary directory."""

from __future__ import annotations

import pytest

from vibekit_telemetry import TelemetryService


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test from an empty directory, with no TELEMETRY_* variables leaking in."""
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("TELEMETRY_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def telemetry(in_tmp):
    """A service with the default configuration (SQLite at .vibekit/telemetry.db)."""
    service = TelemetryService(service_name="test-app")
    yield service
    service.shutdown()


@pytest.fixture
def memory_telemetry(in_tmp):
    """A service on the memory store."""
    service = TelemetryService(storage=[{"type": "memory"}])
    yield service
    service.shutdown()


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a one-module distribution with an entry point in the plugin group, on sys.path.

    ``install_plugin(name, source, target="Plugin", dist="some-dist", version="1.2.3")``
    writes the module and its ``.dist-info``, so discovery goes through real
    ``importlib.metadata`` entry points exactly as for a pip-installed package.
    """
    from stevedore import ExtensionManager

    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})

    def install(name: str, source: str, *, target: str = "Plugin", dist: str = "acme-telemetry-plugin",
                version: str = "1.2.3") -> None:
        module = f"acme_{name}"
        (site / f"{module}.py").write_text(source)
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[vibekit_telemetry.plugins]\n{name} = {module}:{target}\n")
        import importlib

        importlib.invalidate_caches()
        monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})

    return install
