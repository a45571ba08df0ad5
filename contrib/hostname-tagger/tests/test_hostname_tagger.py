"""The example plugin, installed through its entry point and used end to end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from vibekit_hostname_tagger import HostnameTagger, git_commit

from vibekit_telemetry import TelemetryService


def test_tags_events_when_named_in_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "telemetry.toml").write_text(
        '[[plugins]]\nname = "hostname"\noptions = { host_key = "machine", include_git_commit = false }\n'
    )
    with TelemetryService() as telemetry:
        assert telemetry.plugin_names() == ["sqlite", "hostname"]
        telemetry.track({"category": "c", "metadata": {"app": "x"}})
        telemetry.track({"category": "c", "metadata": {"machine": "set-by-app"}})
        events = telemetry.query(order="asc")
    assert events[0].metadata == {"machine": socket.gethostname(), "app": "x"}
    assert events[1].metadata["machine"] == "set-by-app"


def test_git_commit_is_read_once(tmp_path):
    if shutil.which("git") is None:
        import pytest

        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env)
    commit = git_commit(repo)
    assert commit and len(commit) == 40
    tagger = HostnameTagger(HostnameTagger.Config(repository=str(repo)))
    assert tagger.tags["git_commit"] == commit
    assert git_commit(tmp_path / "not-a-repo-dir-that-does-not-exist") is None


def test_adds_a_cli_command(tmp_path):
    telemetry = shutil.which("telemetry", path=str(Path(sys.executable).parent))
    result = subprocess.run([telemetry, "hostname"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert f"host: {socket.gethostname()}" in result.stdout
