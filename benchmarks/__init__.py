"""vibekit-telemetry benchmarks: `uv run python -m benchmarks [--quick]`.

Every figure is measured in the same run as what it is compared with (the raw
limit, plain sqlite3, or a peer such as the OpenTelemetry SDK), because the
machines this runs on are shared and noisy: ratios are what travel.
"""
