"""Configuration: one attrs tree, read from a TOML file, the environment and keyword arguments.

Sources, later ones winning: built-in defaults, the file (``--config``,
``TELEMETRY_CONFIG``, ``./telemetry.toml`` or ``[tool.vibekit-telemetry]`` in
``./pyproject.toml``), ``TELEMETRY_*`` environment variables, keyword
arguments.  Keys may be written in snake_case or the seed's camelCase.  A value
``{"$env": "NAME"}`` is read from the environment when the config is used and
never shown by ``telemetry config show``.

One cattrs converter structures the tree and every plugin's options, with
unknown keys forbidden, so a typo fails with the source, the key path and the
expected type instead of being ignored.
"""

from __future__ import annotations

import collections.abc
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import cattrs.cols
from cattrs.v import format_exception

from .errors import ConfigError
from .reliability import ReliabilityConfig, SamplingConfig

ENV_PREFIX = "TELEMETRY_"

#: Seed-style config sections that load the plugin of the given name when ``enabled`` is true.
SECTION_PLUGINS: dict[tuple[str, ...], str] = {
    ("security", "pii"): "pii",
    ("security", "encryption"): "encryption",
    ("security", "audit"): "audit",
    ("security", "compliance"): "compliance",
    ("analytics",): "analytics",
    ("api",): "api",
    ("compliance",): "compliance",
}

#: ``streaming.provider`` to the plugin that serves it (``{enabled, provider, options}``, as in the seed).
STREAMING_PROVIDERS = {"grpc": "grpc", "websocket": "api", "sse": "api"}

#: Keys a seed-style storage entry may carry for the pipeline rather than for its plugin.
PIPELINE_STORAGE_KEYS = ("stream_batch_size", "stream_flush_interval")

_SECRET_KEY = re.compile(r"(key|token|secret|password|passphrase|authorization|credential)", re.IGNORECASE)
_VERBATIM_KEYS = frozenset({"headers", "resource_attributes", "metadata", "labels", "tags", "options_verbatim"})


@attrs.frozen
class StorageConfig:
    """One storage entry: the plugin name in ``type``, whether it is on, and its options."""

    type: str
    enabled: bool = True
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PluginSpec:
    """A plugin named in ``plugins = [...]``, with options for its ``Config`` class."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class TelemetryConfig:
    """Everything the kernel reads from configuration.

    Plugin sections (``security.*``, ``analytics``, ``api``, ``compliance``) are
    kept as plain tables here and structured by the plugin they enable.
    ``reliability`` holds retries, circuit breaking, the error journal, the
    memory limit and the rate limit (see ``docs/reliability.md``); ``sampling``
    keeps a fraction of sessions.
    """

    service_name: str = "unknown_service"
    service_version: str = "0.0.0"
    environment: str = "development"
    data_dir: str = ".vibekit"
    storage: tuple[StorageConfig, ...] = (StorageConfig(type="sqlite"),)
    plugins: tuple[PluginSpec, ...] = ()
    security: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    analytics: dict[str, Any] = attrs.field(factory=dict)
    api: dict[str, Any] = attrs.field(factory=dict)
    compliance: dict[str, Any] = attrs.field(factory=dict)
    streaming: dict[str, Any] = attrs.field(factory=dict)
    reliability: ReliabilityConfig = ReliabilityConfig()
    sampling: SamplingConfig | None = None
    stream_batch_size: int = 100
    stream_flush_interval: int = 1000
    max_batch_size: int = 5000
    max_queue_size: int = 100_000
    on_full: Literal["spill", "block", "drop_newest", "drop_oldest"] = "spill"
    enqueue_timeout_ms: int = 100
    max_field_bytes: int = 65_536
    capture_content: bool = True
    debug: bool = False
    log_level: str = "WARNING"

    def __attrs_post_init__(self) -> None:
        checks = {
            "stream_batch_size": self.stream_batch_size >= 1,
            "stream_flush_interval": self.stream_flush_interval >= 1,
            "max_batch_size": self.max_batch_size >= 1,
            "max_queue_size": self.max_queue_size >= 1,
            "enqueue_timeout_ms": self.enqueue_timeout_ms >= 0,
            "max_field_bytes": self.max_field_bytes >= 64,
        }
        for key, ok in checks.items():
            if not ok:
                minimum = 64 if key == "max_field_bytes" else 0 if key == "enqueue_timeout_ms" else 1
                raise ConfigError(f"{key}: out of range ({getattr(self, key)!r}); expected at least {minimum}")


def _structure_plugin_spec(value: Any, _type: type) -> PluginSpec:
    if isinstance(value, str):
        return PluginSpec(name=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"name", "options"}
        if unknown or "name" not in value:
            raise ValueError(f"a plugin entry is a name or {{name, options}}, got keys {sorted(value)}")
        return PluginSpec(name=value["name"], options=dict(value.get("options") or {}))
    raise ValueError(f"a plugin entry is a name or {{name, options}}, got {value!r}")


def make_converter() -> cattrs.Converter:
    """The converter for config and request bodies: unknown keys are errors, detailed validation on."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(PluginSpec, _structure_plugin_spec)

    def structure_int(value: Any, _type: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def structure_float(value: Any, _type: type) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)

    def structure_bool(value: Any, _type: type) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def structure_str(value: Any, _type: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(float, structure_float)
    converter.register_structure_hook(bool, structure_bool)
    converter.register_structure_hook(str, structure_str)
    converter.register_structure_hook_factory(_is_list_like, lambda t: _strict_sequence(t, converter))
    return converter


def _is_list_like(type_: Any) -> bool:
    origin = typing.get_origin(type_)
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence):
        return True
    return origin is tuple and len(typing.get_args(type_)) == 2 and typing.get_args(type_)[1] is Ellipsis


def _strict_sequence(type_: Any, converter: cattrs.Converter) -> Any:
    """Lists refuse a string (cattrs would take ``"abc"`` as ``["a", "b", "c"]``) and a mapping."""
    if typing.get_origin(type_) is tuple:
        base = cattrs.cols.homogenous_tuple_structure_factory(type_, converter)
    else:
        base = cattrs.cols.list_structure_factory(type_, converter)

    def structure_sequence(value: Any, _type: Any) -> Any:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, collections.abc.Iterable):
            raise ValueError(f"expected a list, got {value!r}")
        return base(value, _type)

    return structure_sequence


converter = make_converter()


def structure(data: Mapping[str, Any], cls: type, *, where: str, path: str = "") -> Any:
    """Structure ``data`` into the attrs class ``cls``; raise :class:`ConfigError` naming each bad key.

    ``where`` names the source (a file, ``environment``, ``keyword arguments``)
    and ``path`` the key path of ``data`` inside it.
    """
    try:
        return converter.structure(dict(data), cls)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {path + '.' if path else ''}{exc}") from None
    except Exception as exc:  # cattrs raises ClassValidationError and friends
        if isinstance(exc, cattrs.BaseValidationError):
            messages = cattrs.transform_error(exc, path="$", format_exception=_format_exception)
        else:
            messages = [f"{exc} @ $"]
        lines = [_readable(msg, path) for msg in messages]
        raise ConfigError(f"invalid configuration in {where}:\n  " + "\n  ".join(lines)) from None


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ConfigError) or isinstance(exc, ValueError) and str(exc).startswith(("expected", "a plugin entry")):
        return str(exc)
    if "not in literal" in str(exc):
        choices = ", ".join(repr(c) for c in getattr(type_, "__args__", ()))
        return f"expected one of {choices}, got {str(exc).split(' not in literal')[0]!r}"
    return format_exception(exc, type_)


def _readable(message: str, prefix: str) -> str:
    text, _, location = message.rpartition(" @ ")
    location = location.removeprefix("$").lstrip(".")
    if not location and not prefix and ": " in text:
        return text
    full = ".".join(p for p in (prefix, location) if p).replace(".[", "[")
    if text.startswith("extra fields found"):
        names = text[text.find("(") + 1 : text.rfind(")")]
        return f"{full + '.' if full else ''}{names}: unknown key (check the spelling; see `telemetry config init` for every key)"
    return f"{full or '(top level)'}: {text}"


def _camel_to_snake(key: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9]*([A-Z][a-z0-9]*)+", key):
        return key
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def normalise_keys(data: Any) -> Any:
    """Convert camelCase keys to snake_case throughout a config tree (not inside headers or metadata)."""
    if isinstance(data, Mapping):
        out = {}
        for key, val in data.items():
            new_key = _camel_to_snake(key) if isinstance(key, str) else key
            out[new_key] = val if new_key in _VERBATIM_KEYS else normalise_keys(val)
        return out
    if isinstance(data, list):
        return [normalise_keys(v) for v in data]
    return data


def resolve_env_refs(data: Any, *, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace every ``{"$env": "NAME"}`` with the value of that environment variable."""
    if isinstance(data, Mapping):
        if set(data) == {"$env"}:
            name = data["$env"]
            if name not in environ:
                raise ConfigError(f"{path or 'config'}: environment variable {name} is not set")
            return environ[name]
        return {k: resolve_env_refs(v, environ=environ, path=f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_env_refs(v, environ=environ, path=f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def redact_secrets(data: Any) -> Any:
    """A copy of a config tree safe to print: values under secret-looking keys become ``"***"``.

    ``{"$env": NAME}`` references are kept, since they show where a secret
    comes from without showing it.
    """
    if isinstance(data, Mapping):
        if set(data) == {"$env"}:
            return dict(data)
        out = {}
        for key, val in data.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(val, (str, list)) and val:
                out[key] = "***" if isinstance(val, str) else ["***"] * len(val)
            else:
                out[key] = redact_secrets(val)
        return out
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    return data


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: tables merge, everything else is replaced."""
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), val)
        else:
            out[key] = val
    return out


def _parse_env_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return json.loads(text)
    except ValueError:
        return text


_TOP_LEVEL = frozenset(f.name for f in attrs.fields(TelemetryConfig))


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config values from ``TELEMETRY_*`` variables.

    ``TELEMETRY_SERVICE_NAME=x`` sets a top-level key; a double underscore goes
    one table deeper: ``TELEMETRY_SECURITY__PII__ENABLED=true``.  Values are read
    as booleans, JSON (numbers, lists, tables) or plain strings.  Variables that
    are not config keys (``TELEMETRY_API_KEYS``, ``TELEMETRY_CONFIG`` ...) are
    left to whoever reads them.
    """
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in _TOP_LEVEL or parts[0] in ("storage", "plugins") and len(parts) > 1:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_env_value(raw)
    return out


def find_config_file(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str], cwd: Path) -> tuple[Path | None, bool]:
    """The config file to read and whether it is a ``pyproject.toml``; ``(None, False)`` for none.

    An explicitly named file that does not exist is an error.
    """
    named = explicit if explicit is not None else environ.get("TELEMETRY_CONFIG")
    if named:
        path = Path(named)
        if not path.is_absolute():
            path = cwd / path
        if not path.is_file():
            raise ConfigError(f"config file {named} does not exist (from {'--config' if explicit else 'TELEMETRY_CONFIG'})")
        return path, path.name == "pyproject.toml"
    candidate = cwd / "telemetry.toml"
    if candidate.is_file():
        return candidate, False
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            with pyproject.open("rb") as fh:
                if "vibekit-telemetry" in tomllib.load(fh).get("tool", {}):
                    return pyproject, True
        except tomllib.TOMLDecodeError:
            return None, False
    return None, False


def read_config_file(path: Path, is_pyproject: bool) -> dict[str, Any]:
    """The raw config table of a file, with a clear error for TOML syntax mistakes."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if is_pyproject:
        data = data.get("tool", {}).get("vibekit-telemetry", {})
    return data


@attrs.frozen
class LoadedConfig:
    """A configuration with where it came from.

    ``raw`` is the merged tree before ``$env`` references were resolved (what
    ``config show`` prints); ``sources`` names each layer that contributed.
    """

    config: TelemetryConfig
    raw: dict[str, Any]
    path: Path | None
    sources: tuple[str, ...]


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> LoadedConfig:
    """Read and validate the configuration from every source.

    Raises :class:`ConfigError` naming the source and key path of the first
    problems found.
    """
    environ = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    raw: dict[str, Any] = {}
    sources = []
    where = "defaults"
    file_path, is_pyproject = find_config_file(path, environ, base)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file_path is not None:
        layers.append((str(file_path), read_config_file(file_path, is_pyproject)))
    env_layer = env_overrides(environ)
    if env_layer:
        layers.append(("environment (TELEMETRY_*)", env_layer))
    if overrides:
        layers.append(("keyword arguments", overrides))
    for name, layer in layers:
        layer = normalise_keys(dict(layer))
        # Validate each layer on its own so an error names the source it came from.
        _validate_layer(layer, where=name, environ=environ)
        raw = deep_merge(raw, layer)
        sources.append(name)
        where = name
    resolved = resolve_env_refs(raw, environ=environ)
    config = structure(resolved, TelemetryConfig, where=where if len(sources) == 1 else " + ".join(sources) or "defaults")
    return LoadedConfig(config=config, raw=raw, path=file_path, sources=tuple(sources))


def _validate_layer(layer: Mapping[str, Any], *, where: str, environ: Mapping[str, str]) -> None:
    resolved = resolve_env_refs(layer, environ=environ)
    unknown = sorted(set(resolved) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"invalid configuration in {where}:\n  "
            + "\n  ".join(f"{key}: unknown key (known keys: {', '.join(sorted(_TOP_LEVEL))})" for key in unknown)
        )
    structure(resolved, TelemetryConfig, where=where)


DEFAULT_CONFIG_TOML = '''\
# vibekit-telemetry configuration. Every key is optional; the values shown are the defaults.
# Keys may also be set with TELEMETRY_<KEY> (TELEMETRY_SECURITY__PII__ENABLED=true for nested ones)
# or as keyword arguments to TelemetryService(...). Secrets can come from the environment: {"$env" = "NAME"}.

service_name = "unknown_service"
service_version = "0.0.0"
environment = "development"
# Where the default SQLite database and other local files live (relative to the current directory).
data_dir = ".vibekit"

# Events are written in batches by a background thread.
stream_batch_size = 100          # a write starts when this many events wait...
stream_flush_interval = 1000     # ...or after this many milliseconds
max_batch_size = 5000            # under a backlog, up to this many events are written per transaction
max_queue_size = 100000          # events waiting in memory at most
on_full = "spill"                # "spill" (to a journal on disk), "block" (up to enqueue_timeout_ms, then drop),
                                 # "drop_newest" or "drop_oldest"
enqueue_timeout_ms = 100
max_field_bytes = 65536          # longer text fields are cut and listed in the event's `truncated`
capture_content = true           # false keeps prompts and streamed text out of storage
debug = false
log_level = "WARNING"

# Storage plugins, in order; the first answers queries. Every one receives every batch.
[[storage]]
type = "sqlite"
enabled = true
[storage.options]
# path = ".vibekit/telemetry.db"
# busy_timeout_ms = 5000

# More plugins by name (installed packages with a `vibekit_telemetry.plugins` entry point):
# plugins = ["hostname"]
# or with options:
# [[plugins]]
# name = "hostname"
# options = { include_git_commit = true }

# What happens when a storage plugin fails (see docs/reliability.md):
# [reliability]
# buffer_on_error = true         # failed batches wait in an on-disk journal and are replayed in order
# buffer_size = 100000           # events the journal holds at most (then they are counted as lost)
# persist_buffer = false         # true: journal every batch before storing it (durable within one flush interval)
# buffer_path = ".vibekit/buffer"
# memory_limit = 536870912       # bytes of RSS; above it events spill to disk and "memory:high" fires
# startup = "degrade"            # a store locked at start-up: start anyway, journal, keep opening; or "fail"
# startup_timeout_ms = 1000
# dead_letter_after = 3          # a batch failing the same way this often is searched for the events at fault
# [reliability.retry]
# enabled = true
# max_attempts = 3
# backoff = "exponential"        # or "linear"; with jitter, capped at max_delay_ms
# [reliability.circuit_breaker]
# enabled = true
# threshold = 5                  # consecutive failures that open the circuit
# timeout = 30000                # ms before a half-open probe
# [reliability.rate_limit]
# max_requests = 1000            # events per window; errors, session starts and ends are exempt
# window_ms = 1000
# [sampling]
# rate = 0.1                     # keep 10% of sessions; failed, erroring and slow ones are always kept

# Seed-style sections load their plugin when enabled:
# [security.pii]
# enabled = true
# [analytics]
# enabled = true
# [api]
# enabled = true
# port = 3000
# [streaming]                     # live events for other processes: "websocket"/"sse" (the api plugin) or "grpc"
# enabled = true
# provider = "grpc"
# options = { port = 4317 }
'''
