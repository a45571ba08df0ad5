"""The PostgreSQL store against the shared storage contract, unchanged."""

from __future__ import annotations

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry.testing import StorageContract


class TestPostgresContract(StorageContract):
    @pytest.fixture
    def make_service(self, tmp_path, pg_options):
        def make(**overrides):
            return TelemetryService(storage=[{"type": "postgres", "options": pg_options}], data_dir=str(tmp_path),
                                    **overrides)

        return make
