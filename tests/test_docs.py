"""Every hook is documented in docs/hooks.md with its exact signature and each argument."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from vibekit_telemetry import hookspecs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text(encoding="utf-8")
HOOKS = [
    (name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, f"{hookspecs.PROJECT}_spec")
]


def _section(name: str) -> str:
    match = re.search(rf"^### {name}\((.*?)\)\n(.*?)(?=^### |\Z)", DOC, re.S | re.M)
    assert match, f"docs/hooks.md has no '### {name}(...)' section"
    return match.group(0)


def test_hooks_were_found():
    assert {name for name, _ in HOOKS} >= {"before_track", "after_track", "store", "export", "detect", "query",
                                           "get_session", "get_sessions", "register_commands"}


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[name for name, _ in HOOKS])
def test_hook_is_documented(name, fn):
    section = _section(name)
    params = list(inspect.signature(fn).parameters)
    assert section.startswith(f"### {name}({', '.join(params)})"), f"signature of {name} differs from hookspecs.py"
    if len(params) > 1 or (params and "Takes no arguments" not in section):
        for param in params:
            assert f"- `{param}`:" in section, f"argument {param} of {name} is not described"
    assert "Contract:" in section, f"{name} has no contract"
    assert "```python" in section and "@hookimpl" in section, f"{name} has no example"


def test_no_documented_hook_is_missing_from_the_specs():
    documented = set(re.findall(r"^### (\w+)\(", DOC, re.M))
    assert documented == {name for name, _ in HOOKS}
