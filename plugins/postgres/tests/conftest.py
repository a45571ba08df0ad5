"""A real PostgreSQL for the tests (see ``vibekit_telemetry_postgres.testing``)."""

from vibekit_telemetry_postgres.testing import pg_options, pg_schema, postgres_cluster, postgres_dsn  # noqa: F401
