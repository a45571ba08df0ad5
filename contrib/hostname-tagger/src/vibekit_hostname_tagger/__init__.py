"""Tag every event with the machine it came from and the git commit of the code that produced it.

A complete third-party plugin in one file, as a template: an attrs ``Config``
class for its options, a ``before_track`` hook, a ``health`` report, and a CLI
command.  It imports only ``vibekit_telemetry``'s public API.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import attrs
import click

from vibekit_telemetry import TelemetryEvent, hookimpl

__version__ = "0.1.0"


def git_commit(directory: str | Path = ".") -> str | None:
    """The commit checked out in ``directory``, or ``None`` outside a git work tree."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


class HostnameTagger:
    """Adds ``host`` (and ``git_commit``) to each event's metadata, without overwriting keys the app set."""

    name = "hostname"

    @attrs.frozen
    class Config:
        """``[[plugins]] name = "hostname"`` options."""

        host_key: str = "host"
        include_git_commit: bool = True
        commit_key: str = "git_commit"
        repository: str = "."

    def __init__(self, config: HostnameTagger.Config | None = None) -> None:
        self.config = config or HostnameTagger.Config()
        # Looked up once: before_track runs inside track(), which must stay cheap.
        tags = {self.config.host_key: socket.gethostname()}
        if self.config.include_git_commit:
            commit = git_commit(self.config.repository)
            if commit:
                tags[self.config.commit_key] = commit
        self.tags = tags

    @hookimpl
    def before_track(self, event: TelemetryEvent) -> TelemetryEvent:
        """Return the event with the tags merged under its own metadata."""
        if all(key in event.metadata for key in self.tags):
            return event
        return attrs.evolve(event, metadata={**self.tags, **event.metadata})

    @hookimpl
    def health(self) -> dict[str, Any]:
        """What this plugin adds."""
        return {"healthy": True, "issues": [], "tags": self.tags}

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry hostname``: print the tags this plugin would add."""

        @cli.command(name="hostname")
        def show_tags() -> None:
            """Show the host and git commit the hostname plugin adds to events."""
            for key, value in HostnameTagger().tags.items():
                click.echo(f"{key}: {value}")
