"""``python -m vibekit_telemetry`` runs the ``telemetry`` command line."""

from .cli import main

main()
