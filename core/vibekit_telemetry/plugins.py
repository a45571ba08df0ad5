"""Finding plugins by name (stevedore) and calling their hooks in order (pluggy).

A plugin is an object registered with pluggy.  Installed plugins are found
through the ``vibekit_telemetry.plugins`` entry-point group: the entry point
names a class (instantiated with its ``Config``, structured from the options in
the configuration) or a module of hook functions.  The kernel keeps the
configuration order and calls hook implementations itself, one plugin at a
time, so it decides the order, isolates failures and knows which plugin did what.

Plugin objects written like the TypeScript seed's (no ``@hookimpl``, methods
named ``initialize``, ``before_track``/``beforeTrack``, ``after_track``,
``shutdown`` ...) get their methods registered as the hooks of those names, and
``async def`` implementations are run to completion on a helper event loop: a
plugin is never accepted and then not called.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
import logging
import os
import re
import threading
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy
from stevedore import NamedExtensionManager

from . import hookspecs
from .config import structure
from .errors import ConfigError, PluginError
from .model import TelemetryEvent

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


#: the seed's names for hooks that are called differently here (``initialize(context)`` is ``startup(service)``)
SEED_HOOK_NAMES = {"initialize": "startup"}

#: longest wait for an ``async def`` hook; past it the call fails like a hook that raised (and is counted so)
ASYNC_HOOK_TIMEOUT_S = 30.0


def hook_names() -> list[str]:
    """Every hook a plugin can implement, sorted."""
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker))


class _AsyncHooks:
    """One event loop on a daemon thread, running ``async def`` hook implementations to completion.

    Hooks are called on the caller's thread (``before_track``) or the flusher's; neither may have
    a loop, and the caller's loop (an asyncio application's) is busy running the caller, so the
    kernel waits for the coroutine on a loop of its own.  A hook that tracks events from inside
    this loop gets a short-lived loop on another thread instead of waiting for itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # after os.fork() the child has the loop object but not the thread that ran it
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="vibekit-telemetry-async-hooks", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def run(self, awaitable: Awaitable[Any], timeout: float = ASYNC_HOOK_TIMEOUT_S) -> Any:
        """Wait for ``awaitable`` on the helper loop and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return _run_apart(awaitable, timeout)
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._running_loop())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"an async hook did not finish within {timeout} s") from None


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _run_apart(awaitable: Awaitable[Any], timeout: float) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = asyncio.run(_awaited(awaitable))
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="vibekit-telemetry-async-hook", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"an async hook did not finish within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


ASYNC_HOOKS = _AsyncHooks()


def _blocking(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (an ``async def``) as a plain call that returns once the coroutine has finished."""

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        return ASYNC_HOOKS.run(function(*args))

    return call


class _KernelPluginManager(pluggy.PluginManager):
    """pluggy's manager that also takes ``@hookimpl def initialize`` (the seed's name) as ``startup``."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """The options of a marked implementation; the seed's hook names are aliases of ours."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None and name in SEED_HOOK_NAMES and not opts.get("specname"):
            opts = {**opts, "specname": SEED_HOOK_NAMES[name]}
        return opts


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _public_methods(obj: Any) -> dict[str, Callable[..., Any]]:
    """The public methods ``obj``'s class defines, bound, found without running properties or other descriptors.

    Values kept on the instance (``self.log = logger.info``) are data, not methods the plugin declares.
    """
    methods = {}
    own = getattr(obj, "__dict__", {})
    for attr in dir(type(obj)):
        if attr.startswith("_") or attr in own:
            continue
        static = inspect.getattr_static(type(obj), attr, None)
        if isinstance(static, (types.FunctionType, staticmethod, classmethod)):
            methods[attr] = getattr(obj, attr)
    return methods


class PluginHost:
    """The service's pluggy manager plus the configuration order of its plugins."""

    def __init__(self) -> None:
        self.pm = _KernelPluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.order: list[str] = []
        self.meta: dict[str, dict[str, Any]] = {}
        self._impl_cache: dict[str, list[Impl]] = {}
        #: the hooks of seed-style plugins (no ``@hookimpl``), by plugin and hook, called through adapters
        self._adapted: dict[str, dict[str, Impl]] = {}

    def register(self, name: str, obj: Any, **meta: Any) -> None:
        """Register a plugin object under ``name``; names must be unique and hook names must exist.

        An object with no ``@hookimpl`` at all is taken as written for the seed: each public
        method is the hook of its name (``initialize`` is ``startup``, camelCase is accepted),
        and a public method named like no hook is a :class:`PluginError` listing the hooks.
        An object or module that implements no hook is an error too, rather than a plugin that
        is never called.
        """
        if name in self.meta:
            raise PluginError(f"plugin {name!r} is registered twice")
        adapted = self._adapt(name, obj) if self._seed_style(obj) else None
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from None
        if not adapted and not self.pm.get_hookcallers(obj):
            self.pm.unregister(obj)
            raise PluginError(f"plugin {name!r} implements no hook, so it would never be called: mark its hook "
                              f"functions with @hookimpl (from vibekit_telemetry import hookimpl), or name its "
                              f"methods like hooks ({', '.join(hook_names())})")
        if adapted is None:
            self._warn_unmarked(name, obj)
        self.order.append(name)
        self.meta[name] = {"object": obj, **meta}
        if adapted:
            self._adapted[name] = adapted
        self._impl_cache.clear()
        log.debug("plugin %s registered (%s): hooks %s", name, meta.get("source", "object"),
                  ", ".join(self.hooks_of(name)))

    def _seed_style(self, obj: Any) -> bool:
        """Whether ``obj`` is an instance with no ``@hookimpl`` anywhere (modules and classes are pluggy's)."""
        if isinstance(obj, (types.ModuleType, type)):
            return False
        return not any(self.pm.parse_hookimpl_opts(obj, attr) is not None for attr in dir(obj))

    def _adapt(self, name: str, obj: Any) -> dict[str, Impl]:
        """An :class:`Impl` per public method of a seed-style plugin, or a :class:`PluginError` for one that is no hook."""
        adapted: dict[str, Impl] = {}
        unknown = []
        for attr, method in sorted(_public_methods(obj).items()):
            hook = SEED_HOOK_NAMES.get(_snake(attr), _snake(attr))
            caller = getattr(self.pm.hook, hook, None)
            if caller is None or caller.spec is None:
                unknown.append(attr)
                continue
            if hook in adapted:
                raise PluginError(f"plugin {name!r} implements {hook} twice ({adapted[hook].function.__name__} "
                                  f"and {attr}); keep one")
            adapted[hook] = _adapter(name, attr, method, hook, tuple(caller.spec.argnames))
        if unknown:
            raise PluginError(
                f"plugin {name!r} has no @hookimpl, so its public methods are taken as hooks, but "
                f"{', '.join(unknown)} is named like no hook. Hooks: {', '.join(hook_names())} "
                f"(and the seed's initialize, for startup). Rename it, make it private with a leading "
                f"underscore, or mark the real hooks with @hookimpl")
        return adapted

    def _warn_unmarked(self, name: str, obj: Any) -> None:
        """A method named like a hook beside marked ones is most likely a forgotten ``@hookimpl``: say so."""
        if isinstance(obj, types.ModuleType):
            return
        implemented = set(self.hooks_of_object(obj))
        for attr in _public_methods(obj):
            hook = SEED_HOOK_NAMES.get(attr, attr)
            caller = getattr(self.pm.hook, hook, None)
            if caller is not None and caller.spec is not None and hook not in implemented:
                log.warning("plugin %s: %s is named like the %s hook but has no @hookimpl, so it is never "
                            "called; mark it with @hookimpl or rename it", name, attr, hook)

    def hooks_of_object(self, obj: Any) -> list[str]:
        """The hook names pluggy found on ``obj`` (marked implementations only)."""
        return sorted(caller.name for caller in self.pm.get_hookcallers(obj) or ())

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests register a plugin, yield, then unregister it)."""
        obj = self.meta.pop(name)["object"]
        self.pm.unregister(obj)
        self._adapted.pop(name, None)
        self.order.remove(name)
        self._impl_cache.clear()

    def impls(self, hook: str) -> list[Impl]:
        """The implementations of ``hook`` in configuration order (``async def`` ones made blocking)."""
        cached = self._impl_cache.get(hook)
        if cached is None:
            rank = {name: i for i, name in enumerate(self.order)}
            found = [
                Impl(impl.plugin_name,
                     _blocking(impl.function) if inspect.iscoroutinefunction(impl.function) else impl.function,
                     tuple(impl.argnames))
                for impl in getattr(self.pm.hook, hook).get_hookimpls()
            ]
            found.extend(hooks[hook] for hooks in self._adapted.values() if hook in hooks)
            cached = sorted(found, key=lambda impl: rank.get(impl.plugin, len(rank)))
            self._impl_cache[hook] = cached
        return cached

    def hooks_of(self, name: str) -> list[str]:
        """The hook names a registered plugin implements."""
        obj = self.meta[name]["object"]
        return sorted({*self.hooks_of_object(obj), *self._adapted.get(name, {})})

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


def _adapter(plugin: str, attr: str, method: Callable[..., Any], hook: str, spec_args: tuple[str, ...]) -> Impl:
    """Call a seed-style ``method`` as ``hook``: with the hook's arguments it names, or the first ones by position.

    The seed's ``initialize(context)`` gets the service, its ``shutdown()`` nothing.  A result
    that is awaitable is waited for on the helper loop.  A ``before_track`` may return the
    event, a mapping of its fields, or ``None`` to reject it (the seed rejects it too).
    """
    signature = inspect.signature(method)
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    where = f"plugin {plugin!r}: {attr}{signature}"
    hook_call = f"{hook}({', '.join(spec_args)})"
    if [n for n in required_kw if n not in spec_args]:
        raise PluginError(f"{where} requires keyword arguments the {hook_call} hook does not give")
    by_name = bool(positional) and all(p.name in spec_args for p in positional)
    if by_name or (not positional and (var_keyword or required_kw)):
        names = [n for n in spec_args if var_keyword or n in signature.parameters]

        def call(values: dict[str, Any]) -> Any:
            return method(**{n: values[n] for n in names})
    else:
        required = sum(1 for p in positional if p.default is p.empty)
        if required > len(spec_args):
            raise PluginError(f"{where} takes {required} arguments, but the {hook_call} hook gives {len(spec_args)}")
        count = len(spec_args) if var_positional else min(len(positional), len(spec_args))

        def call(values: dict[str, Any]) -> Any:
            return method(*[values[n] for n in spec_args[:count]])

    warned: list[bool] = []

    def forward(*args: Any) -> Any:
        result = call(dict(zip(spec_args, args)))
        if inspect.isawaitable(result):
            result = ASYNC_HOOKS.run(result)
        if hook != "before_track":
            return result
        if result is None:
            if not warned:
                warned.append(True)
                log.warning("plugin %s: %s returned None, so the event is dropped (counted as filtered), as "
                            "the seed rejects it; return the event to keep it", plugin, attr)
            return None
        if isinstance(result, Mapping) and not isinstance(result, TelemetryEvent):
            return TelemetryEvent.from_dict(result)
        return result

    forward.__name__ = attr
    return Impl(plugin, forward, spec_args)


def command_plugins(targets: Iterable[tuple[str, Any]]) -> pluggy.PluginManager:
    """A pluggy manager holding entry-point targets, used only to call ``register_commands``."""
    pm = _KernelPluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, target in targets:
        try:
            pm.register(target, name=name)
        except ValueError as exc:
            log.warning("plugin %s: cannot add commands: %s", name, exc)
    return pm


#: this project's plugin classes by name, and the plugin whose package provides each, so that an
#: import of one that is not installed says what to install (installed classes are found by entry point)
KNOWN_PLUGIN_CLASSES = {
    "AnalyticsPlugin": "analytics", "APIPlugin": "api", "AuditTrail": "audit", "CachePlugin": "cache",
    "CompliancePlugin": "compliance", "CSVFormat": "csv", "DashboardPlugin": "dashboard",
    "EncryptionPlugin": "encryption", "GRPCPlugin": "grpc", "JSONFormats": "json", "MemoryStorage": "memory",
    "OpenTelemetryBridge": "otlp", "OTLPFormats": "otlp", "OTLPStorage": "otlp", "ParquetFormat": "parquet",
    "PIIRedactor": "pii", "S3ExportPlugin": "s3", "SQLiteStorage": "sqlite",
}


def plugin_classes() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plugin classes by class name: the targets of the plugin, format and destination entry points."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for group in (ENTRY_POINT_GROUP, FORMAT_GROUP, DESTINATION_GROUP):
        for ep in importlib.metadata.entry_points(group=group):
            attr = ep.value.partition(":")[2].strip()
            if attr.isidentifier():  # a module of hook functions has no attribute to import by name
                found.setdefault(attr, ep)
    return found


def __getattr__(name: str) -> Any:
    """An installed plugin class, imported on first use: ``from vibekit_telemetry.plugins import CachePlugin``.

    This is the seed's ``import { CachePlugin, S3ExportPlugin } from '@vibe-kit/telemetry/plugins'``:
    nothing is imported until a class is asked for, and one whose package is not installed is an
    ``ImportError`` naming the package to install.
    """
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    ep = plugin_classes().get(name)
    if ep is None:
        plugin = KNOWN_PLUGIN_CLASSES.get(name)
        if plugin is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r} (installed plugin classes: "
                                 f"{', '.join(sorted(plugin_classes())) or 'none'})")
        raise ImportError(f"{name} is in the {plugin!r} plugin, which is not installed: "
                          f"pip install {package_hint(plugin)}", name=name)
    try:
        value = ep.load()
    except Exception as exc:
        raise ImportError(f"{name} (entry point {ep.value}) failed to load: {type(exc).__name__}: {exc}",
                          name=name) from exc
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The module's names and the installed plugin classes (for completion in a shell or an editor)."""
    return sorted({*globals(), *plugin_classes()})
