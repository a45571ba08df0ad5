"""Fixtures of the analytics tests: a real PostgreSQL for the shared rollups, where the postgres plugin is there."""

try:
    from vibekit_telemetry_postgres.testing import pg_options, pg_schema, postgres_cluster, postgres_dsn  # noqa: F401
except ImportError:
    pass
