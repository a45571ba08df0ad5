"""Finding plugins by name (stevedore) and calling their hooks in order (pluggy).

A plugin is an object registered with pluggy.  Installed plugins are found
through the ``vibekit_telemetry.plugins`` entry-point group: the entry point
names a class (instantiated with its ``Config``, structured from the options in
the configuration) or a module of hook functions.  The kernel keeps the
configuration order and calls hook implementations itself, one plugin at a
time, so it decides the order, isolates failures and knows which plugin did what.
"""

from __future__ import annotations

import importlib.metadata
import logging
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy
from stevedore import NamedExtensionManager

from . import hookspecs
from .config import structure
from .errors import ConfigError, PluginError

log = logging.getLogger("vibekit_telemetry.plugins")

ENTRY_POINT_GROUP = "vibekit_telemetry.plugins"
#: export/import formats by name (``jsonl``, ``csv`` ...): installing the package makes the format available
FORMAT_GROUP = "vibekit_telemetry.formats"
#: export destinations by URL scheme (``s3``)
DESTINATION_GROUP = "vibekit_telemetry.destinations"


def named_entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of ``group`` by name (formats or URL schemes that installed plugins provide)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


@attrs.frozen
class InstalledPlugin:
    """An entry point in the plugin group, described without importing it."""

    name: str
    target: str
    distribution: str | None
    version: str | None


def installed_plugins() -> list[InstalledPlugin]:
    """Every plugin installed in this environment, sorted by name."""
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.append(
            InstalledPlugin(
                name=ep.name,
                target=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
        )
    return sorted(found, key=lambda p: p.name)


def package_hint(name: str) -> str:
    """The distribution that conventionally provides plugin ``name``."""
    return f"vibekit-telemetry-{name}"


def resolve_entry_points(names: list[str]) -> dict[str, Any]:
    """Import the named plugins' entry-point targets, in order, through stevedore.

    Raises :class:`PluginError` for a duplicate name, for names no installed
    package provides (listing what is installed and what to install), and for a
    plugin that fails to import (with its distribution, version and the cause).
    """
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PluginError(f"plugin {', '.join(duplicates)} is named more than once in the configuration")
    if not names:
        return {}
    failures: list[str] = []
    missing: set[str] = set()

    def on_failure(_manager: Any, ep: importlib.metadata.EntryPoint, exc: BaseException) -> None:
        # stevedore's cached entry points carry no distribution: look it up by name.
        info = next((p for p in installed_plugins() if p.name == ep.name and p.target == ep.value), None)
        who = f"{info.distribution} {info.version}" if info and info.distribution else "unknown distribution"
        failures.append(f"plugin {ep.name!r} ({who}, entry point {ep.value}) failed to load: {type(exc).__name__}: {exc}")

    manager = NamedExtensionManager(
        ENTRY_POINT_GROUP,
        names=names,
        name_order=True,
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=missing.update,
    )
    if failures:
        raise PluginError("\n".join(failures))
    missing -= {n for n in names if any(e.name == n for e in manager.extensions)}
    if missing:
        installed = ", ".join(p.name for p in installed_plugins()) or "none"
        hints = " ".join(package_hint(n) for n in sorted(missing))
        raise PluginError(
            f"unknown plugin {', '.join(repr(n) for n in sorted(missing))}: no installed package provides it "
            f"(installed plugins: {installed}). Install it with: pip install {hints}"
        )
    return {ext.name: ext.plugin for ext in manager.extensions}


def instantiate(name: str, target: Any, options: Mapping[str, Any], *, where: str, path: str = "") -> Any:
    """Make the plugin object pluggy will register.

    A class is called with its ``Config`` (structured from ``options``, unknown
    keys rejected) or with no argument when it has no ``Config``; a module or an
    object is used as it is and must not be given options.
    """
    if isinstance(target, type):
        config_cls = getattr(target, "Config", None)
        if config_cls is not None:
            config = structure(options, config_cls, where=where, path=path)
            try:
                return _construct(name, target, config)
            except ConfigError as exc:  # the plugin found its options inconsistent: say where they came from
                raise ConfigError(f"invalid configuration in {where}: {path}: {exc}") from None
        if options:
            raise PluginError(f"plugin {name!r} takes no options, but {where} gives {path}: {sorted(options)}")
        return _construct(name, target)
    if options:
        raise PluginError(f"plugin {name!r} is not configurable, but {where} gives {path}: {sorted(options)}")
    return target


def _construct(name: str, cls: type, *args: Any) -> Any:
    try:
        return cls(*args)
    except ConfigError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}") from exc


def plugin_name_of(obj: Any) -> str:
    """A name for a plugin object passed directly: its ``name`` attribute, module or class name."""
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return type(obj).__name__


@attrs.frozen
class Impl:
    """One plugin's implementation of one hook, ready to call with keyword values."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(*[kwargs[name] for name in self.argnames])


class PluginHost:
    """The service's pluggy manager plus the configuration order of its plugins."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.order: list[str] = []
        self.meta: dict[str, dict[str, Any]] = {}
        self._impl_cache: dict[str, list[Impl]] = {}

    def register(self, name: str, obj: Any, **meta: Any) -> None:
        """Register a plugin object under ``name``; names must be unique and hook names must exist."""
        if name in self.meta:
            raise PluginError(f"plugin {name!r} is registered twice")
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from None
        self.order.append(name)
        self.meta[name] = {"object": obj, **meta}
        self._impl_cache.clear()

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests register a plugin, yield, then unregister it)."""
        obj = self.meta.pop(name)["object"]
        self.pm.unregister(obj)
        self.order.remove(name)
        self._impl_cache.clear()

    def impls(self, hook: str) -> list[Impl]:
        """The implementations of ``hook`` in configuration order."""
        cached = self._impl_cache.get(hook)
        if cached is None:
            rank = {name: i for i, name in enumerate(self.order)}
            found = getattr(self.pm.hook, hook).get_hookimpls()
            cached = [
                Impl(impl.plugin_name, impl.function, tuple(impl.argnames))
                for impl in sorted(found, key=lambda impl: rank.get(impl.plugin_name, len(rank)))
            ]
            self._impl_cache[hook] = cached
        return cached

    def hooks_of(self, name: str) -> list[str]:
        """The hook names a registered plugin implements."""
        obj = self.meta[name]["object"]
        return sorted(caller.name for caller in self.pm.get_hookcallers(obj) or ())

    def first(self, hook: str, **kwargs: Any) -> tuple[str | None, Any]:
        """Call implementations in order until one returns something other than ``None``."""
        for impl in self.impls(hook):
            result = impl(**kwargs)
            if result is not None:
                return impl.plugin, result
        return None, None

    def each(self, hook: str, on_error: Callable[[str, BaseException], None], **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation in order; an exception is passed to ``on_error`` and the rest still run."""
        results = []
        for impl in self.impls(hook):
            try:
                results.append((impl.plugin, impl(**kwargs)))
            except Exception as exc:
                on_error(impl.plugin, exc)
        return results


def command_plugins(targets: Iterable[tuple[str, Any]]) -> pluggy.PluginManager:
    """A pluggy manager holding entry-point targets, used only to call ``register_commands``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, target in targets:
        try:
            pm.register(target, name=name)
        except ValueError as exc:
            log.warning("plugin %s: cannot add commands: %s", name, exc)
    return pm
