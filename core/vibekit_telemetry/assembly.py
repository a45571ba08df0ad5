"""From a configuration to plugin objects, in configuration order, without starting anything.

The service uses this to build itself; ``telemetry config validate`` and
``telemetry plugins`` use it to check a configuration without opening storage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

from .config import PIPELINE_STORAGE_KEYS, SECTION_PLUGINS, STREAMING_PROVIDERS, LoadedConfig, converter, deep_merge, structure
from .errors import ConfigError
from .plugins import instantiate, resolve_entry_points
from .reliability import SINK_OPTION_KEYS, ReliabilityConfig


def unstructure(value: Any) -> Any:
    """A config object back to plain data (for merging overrides into it)."""
    return converter.unstructure(value)

log = logging.getLogger("vibekit_telemetry.assembly")


@attrs.frozen
class PlannedPlugin:
    """A configured plugin, instantiated but not started."""

    name: str
    obj: Any
    is_storage: bool
    reliability: ReliabilityConfig | None = None


@attrs.frozen
class Assembly:
    """The plugins a configuration asks for, and the pipeline settings it implies."""

    plugins: list[PlannedPlugin]
    batch_size: int
    flush_interval: int


def assemble(loaded: LoadedConfig) -> Assembly:
    """Resolve and configure every plugin the configuration names: storage, seed-style sections, ``plugins``.

    Raises :class:`~vibekit_telemetry.PluginError` or :class:`~vibekit_telemetry.ConfigError`
    naming the plugin, the source and the key path.
    """
    cfg = loaded.config
    wanted: list[tuple[str, dict[str, Any], str, bool]] = []
    sink_policies: dict[str, ReliabilityConfig] = {}
    batch_size, flush_interval = cfg.stream_batch_size, cfg.stream_flush_interval
    for index, entry in enumerate(cfg.storage):
        if not entry.enabled:
            continue
        opts = dict(entry.options)
        for key in PIPELINE_STORAGE_KEYS:
            if key not in opts:
                continue
            value = opts.pop(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"storage[{index}].options.{key}: expected a positive integer, got {value!r}")
            # Seed-style configs put these on the storage entry; a top-level value set as well wins if smaller.
            if key == "stream_batch_size":
                batch_size = min(batch_size, value) if key in loaded.raw else value
            else:
                flush_interval = min(flush_interval, value) if key in loaded.raw else value
        own = {key: opts.pop(key) for key in SINK_OPTION_KEYS if key in opts}
        if own:
            # A storage entry may override the reliability settings for its own plugin, as in the seed.
            merged = deep_merge(unstructure(cfg.reliability), own)
            sink_policies[entry.type] = structure(merged, ReliabilityConfig, where=" + ".join(loaded.sources) or "defaults",
                                                  path=f"storage[{index}].options")
        wanted.append((entry.type, opts, f"storage[{index}].options", True))
    for path, plugin in SECTION_PLUGINS.items():
        section: Any = cfg
        for part in path:
            section = section.get(part) if isinstance(section, Mapping) else getattr(section, part, None)
        if isinstance(section, Mapping) and section.get("enabled"):
            wanted.append((plugin, {k: v for k, v in section.items() if k != "enabled"}, ".".join(path), False))
    streaming = cfg.streaming
    if streaming.get("enabled"):
        unknown = sorted(set(streaming) - {"enabled", "provider", "options"})
        if unknown:
            raise ConfigError(f"streaming: unknown keys {unknown}; the section has enabled, provider and options")
        provider = streaming.get("provider", "websocket")
        plugin = STREAMING_PROVIDERS.get(provider)
        if plugin is None:
            raise ConfigError(f"streaming.provider: expected one of {', '.join(STREAMING_PROVIDERS)}, got {provider!r}")
        if not any(name == plugin for name, *_ in wanted):  # the api plugin already serves SSE and WebSocket
            wanted.append((plugin, dict(streaming.get("options") or {}), "streaming.options", False))
    from_sections = {name: i for i, (name, _, _, is_storage) in enumerate(wanted) if not is_storage}
    for index, spec in enumerate(cfg.plugins):
        if spec.name in from_sections:
            # `plugins = ["analytics"]` and `[analytics] enabled = true` ask for the same plugin: one instance
            i = from_sections.pop(spec.name)
            name, opts, where, _ = wanted[i]
            wanted[i] = (name, deep_merge(opts, dict(spec.options)), f"{where} + plugins[{index}].options", False)
            continue
        wanted.append((spec.name, dict(spec.options), f"plugins[{index}].options", False))
    targets = resolve_entry_points([name for name, *_ in wanted])
    source = " + ".join(loaded.sources) or "defaults"
    planned = [
        PlannedPlugin(name, instantiate(name, targets[name], opts, where=source, path=where), is_storage,
                      sink_policies.get(name) if is_storage else None)
        for name, opts, where, is_storage in wanted
    ]
    unused = sorted(set(cfg.security) - {path[1] for path in SECTION_PLUGINS if path[0] == "security"})
    if unused:
        log.warning("security sections %s are not used by any plugin", ", ".join(unused))
    return Assembly(plugins=planned, batch_size=batch_size, flush_interval=flush_interval)
