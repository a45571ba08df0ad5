"""A real PostgreSQL for the shared-trail tests, where the postgres plugin is installed (the others need none)."""

try:
    from vibekit_telemetry_postgres.testing import pg_options, pg_schema, postgres_cluster, postgres_dsn  # noqa: F401
except ImportError:
    pass
