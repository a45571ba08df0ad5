"""Pytest fixtures for a real PostgreSQL, for this plugin's tests and any other package's (import them into a
``conftest.py``: ``from vibekit_telemetry_postgres.testing import *``).

``VIBEKIT_TEST_POSTGRES_DSN`` (CI sets it) names a server to use; without it a throwaway cluster is started with
``initdb`` (Debian's ``postgresql`` package).  Without either the tests skip, unless ``VIBEKIT_REQUIRE_POSTGRES=1``
(CI), where a missing server is a failure.  Each test gets a schema of its own.
"""

from __future__ import annotations

import os
import uuid

import pytest

from .cluster import Cluster, find_bindir


def _unavailable(reason: str) -> None:
    if os.environ.get("VIBEKIT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"VIBEKIT_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_cluster():
    """The throwaway cluster when the tests started one (``None`` when the DSN came from the environment)."""
    if os.environ.get("VIBEKIT_TEST_POSTGRES_DSN"):
        yield None
        return
    if find_bindir() is None:
        _unavailable("no PostgreSQL: set VIBEKIT_TEST_POSTGRES_DSN or install postgresql (initdb)")
    cluster = Cluster()
    try:
        cluster.start()
    except (OSError, RuntimeError, KeyError) as exc:
        _unavailable(f"could not start a throwaway PostgreSQL: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster):
    return os.environ.get("VIBEKIT_TEST_POSTGRES_DSN") or postgres_cluster.dsn


@pytest.fixture
def pg_schema(postgres_dsn):
    """A fresh schema name, dropped (with everything in it) after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def pg_options(postgres_dsn, pg_schema):
    """``storage.options`` of a postgres store in this test's schema."""
    return {"dsn": postgres_dsn, "schema": pg_schema}


__all__ = ["pg_options", "pg_schema", "postgres_cluster", "postgres_dsn"]
