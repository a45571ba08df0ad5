"""The SQLite store against the shared storage contract."""

from __future__ import annotations

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import StorageContract


class TestSQLiteContract(StorageContract):
    @pytest.fixture
    def make_service(self, tmp_path):
        def make(**overrides):
            return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db")}}],
                                    data_dir=str(tmp_path), **overrides)

        return make


class TestSQLiteProcessWriterContract(StorageContract):
    """The same contract with ``writer = "process"``: a child process owns the write connection."""

    @pytest.fixture
    def make_service(self, tmp_path):
        def make(**overrides):
            return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db"),
                                                                            "writer": "process"}}],
                                    data_dir=str(tmp_path), **overrides)

        return make
