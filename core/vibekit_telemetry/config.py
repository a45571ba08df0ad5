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

A configuration written like the TypeScript seed's works as the seed says: its
environment switches (``TELEMETRY_ENCRYPTION_ENABLED``, ``TELEMETRY_AUTH_ENABLED``)
set the keys they name, and its ``security.redaction`` / ``security.data_minimization``
sections become options of the pii and compliance plugins
(:func:`translate_seed_sections`).  ``docs/configuration.md`` lists every seed key.
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

from .errors import ConfigError, TelemetryError
from .model import TelemetryEvent
from .reliability import SINK_OPTION_KEYS, ReliabilityConfig, SamplingConfig

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

#: ``security.*`` sections with no plugin of their own: the kernel maps them onto a plugin's options
#: (see :func:`translate_seed_sections`).
SEED_SECURITY_SECTIONS = ("redaction", "data_minimization")

#: The switches of the seed's environment table and the config key each sets.  They sit beside the nested
#: form (``TELEMETRY_SECURITY__ENCRYPTION__ENABLED``), which means the same.  The rest of that table
#: (``TELEMETRY_ENCRYPTION_KEY``, ``TELEMETRY_API_KEYS``, ``TELEMETRY_BEARER_TOKENS``,
#: ``TELEMETRY_ALLOWED_ORIGINS``) holds secrets and lists the plugin using them reads when it starts, so they
#: never enter the configuration tree (nor ``config show``, nor the audit trail's fingerprint).
SEED_ENV_SWITCHES: dict[str, tuple[str, ...]] = {
    "TELEMETRY_ENCRYPTION_ENABLED": ("security", "encryption", "enabled"),
    "TELEMETRY_AUTH_ENABLED": ("api", "auth", "enabled"),
}

_SECRET_KEY = re.compile(r"(key|token|secret|password|passphrase|authorization|credential)", re.IGNORECASE)
#: the password of ``scheme://user:password@host`` (a Redis URI, a database DSN), wherever the URI is written
#: (up to the last ``@``: a password with an unescaped ``@`` or ``/`` is hidden whole, at worst with more)
#: ``scheme://user:password@host`` anywhere in a text (an error message quoting a URI); the password runs to
#: the last ``@`` of the URI, so one holding ``#``, ``?`` or ``@`` is hidden whole
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@?#\s]*:)(\S*)(@[^@\s]*)", re.IGNORECASE)
_URL_PASSWORD_QUERY = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
#: libpq's keyword/value form: ``host=db user=t password='s3 cret'``
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
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
    #: SDKs to auto-instrument at start (``telemetry.instrument(*names)``): "openai", "anthropic"
    instrument: list[str] = attrs.Factory(list)
    debug: bool = False
    log_level: str = "WARNING"

    def __attrs_post_init__(self) -> None:
        _check_switches(self)
        security, compliance = translate_seed_sections(self.security, self.compliance)
        # frozen: the seed-only sections are replaced by the plugin options they mean, once, here, so every way
        # of building a config (file, environment, keywords, a TelemetryConfig object) gets the same plugins
        object.__setattr__(self, "security", security)
        object.__setattr__(self, "compliance", compliance)
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


def _check_switches(cfg: TelemetryConfig) -> None:
    """``enabled`` of a plugin section is a boolean (a string such as ``"false"`` would load the plugin)."""
    for path in (*SECTION_PLUGINS, ("streaming",)):
        section: Any = cfg
        for part in path:
            section = section.get(part) if isinstance(section, Mapping) else getattr(section, part, None)
        if isinstance(section, Mapping) and "enabled" in section and not isinstance(section["enabled"], bool):
            raise ConfigError(f"{'.'.join(path)}.enabled: expected true or false, got {section['enabled']!r}")
    metrics = cfg.analytics.get("metrics")
    if cfg.analytics.get("enabled") and isinstance(metrics, Mapping) and metrics.get("enabled") is False:
        raise ConfigError("analytics.metrics.enabled: false would leave the analytics plugin without the metrics it "
                          "is made of (its rollups); to turn analytics off write analytics.enabled = false")
    known = {path[1] for path in SECTION_PLUGINS if path[0] == "security"} | set(SEED_SECURITY_SECTIONS)
    for name, section in cfg.security.items():
        if name not in known:
            raise ConfigError(f"security.{name}: unknown section (known: {', '.join(sorted(known))})")
        if "enabled" in section and not isinstance(section["enabled"], bool):
            raise ConfigError(f"security.{name}.enabled: expected true or false, got {section['enabled']!r}")


#: Event fields a seed field name may mean (``streamData`` is ``stream_data``); any other bare name is a
#: metadata key, which is where the seed's examples keep ``password``, ``token`` or ``customer_note``.
_EVENT_FIELDS = frozenset(f.name for f in attrs.fields(TelemetryEvent))


def _field_path(name: Any, where: str) -> str:
    """A seed field name as a dotted event path: ``prompt``, ``stream_data`` or ``metadata.<key>``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: expected a field name such as 'prompt' or 'metadata.customer_note', got {name!r}")
    name = name.strip()
    if name.startswith("metadata."):
        return name
    if _camel_to_snake(name) in _EVENT_FIELDS:
        return _camel_to_snake(name)
    if "." in name:
        raise ConfigError(f"{where}: {name!r} is neither an event field nor under metadata; write 'metadata.{name}' "
                          f"for a metadata key, or one of {', '.join(sorted(_EVENT_FIELDS - {'metadata'}))}")
    return f"metadata.{name}"


def _names(section: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = section.get(key, [])
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}.{key}: expected a list of field names, got {value!r}")
    return list(value)


def translate_seed_sections(security: Mapping[str, Any], compliance: Mapping[str, Any]
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``security`` and ``compliance`` with the seed's ``security.redaction`` and ``security.data_minimization``
    replaced by the plugin options they mean.

    * ``redaction = {enabled, fields}`` enables the ``pii`` plugin with ``redact_fields``: each named field
      (``prompt``, a metadata path such as ``metadata.customer_note``, or a bare metadata key, matched at
      any depth) has its value replaced whole before the event is queued.  When ``security.pii`` itself is
      not enabled, only those fields are redacted (no pattern detection, which was not asked for).
    * ``data_minimization = {enabled, exclude_fields, include_only}`` enables the ``compliance`` plugin with
      ``exclude_fields`` (event fields, or metadata keys: a bare name is one, as in the seed's
      ``['password', 'token']``) dropped before queueing and ``include_only`` (the only metadata keys kept).
    * ``compliance.gdpr`` / ``compliance.ccpa`` with ``enabled = true`` enable the ``compliance`` plugin
      unless ``compliance.enabled`` says otherwise (the seed has no switch of its own there).

    ``enabled`` defaults to true when fields are listed; ``enabled = false`` turns the section off.  Any other
    key is a :class:`ConfigError` naming it: nothing in these sections is ignored.
    """
    security = {name: dict(section) for name, section in security.items()}
    compliance = dict(compliance)
    regulations = [name for name in ("gdpr", "ccpa")
                   if isinstance(compliance.get(name), Mapping) and compliance[name].get("enabled")]
    if regulations and "enabled" not in compliance:
        # the seed writes `compliance = {gdpr = {enabled = true, ...}}` with no switch of its own: a regulation
        # that is on needs the plugin that enforces it (an explicit `enabled = false` still turns it off)
        compliance["enabled"] = True
    redaction = security.pop("redaction", None)
    if redaction is not None:
        unknown = sorted(set(redaction) - {"enabled", "fields"})
        if unknown:
            raise ConfigError(f"security.redaction.{unknown[0]}: unknown key; the section has enabled and fields "
                              "(dotted paths such as 'metadata.customer_note')")
        fields = _names(redaction, "fields", "security.redaction")
        for i, name in enumerate(fields):
            # the pii plugin reads the names (event fields, metadata paths, bare keys at any depth) and says
            # which it cannot redact; a non-name is caught here, where the message can point at the seed key
            if not isinstance(name, str) or not name.strip(". "):
                raise ConfigError(f"security.redaction.fields[{i}]: expected a field name such as 'prompt', "
                                  f"'metadata.customer_note' or 'customer_note', got {name!r}")
        if redaction.get("enabled", True) and fields:
            pii = security.get("pii", {})
            if not pii.get("enabled"):
                pii.setdefault("patterns", [])
                pii.setdefault("secret_keys", [])
                pii["enabled"] = True
            existing = list(pii.get("redact_fields", []))
            pii["redact_fields"] = existing + [f for f in fields if f not in existing]
            security["pii"] = pii
    minimization = security.pop("data_minimization", None)
    if minimization is not None:
        where = "security.data_minimization"
        unknown = sorted(set(minimization) - {"enabled", "exclude_fields", "include_only"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; the section has enabled, exclude_fields "
                              "and include_only")
        exclude = [_field_path(f, f"{where}.exclude_fields[{i}]")
                   for i, f in enumerate(_names(minimization, "exclude_fields", where))]
        include = None
        if minimization.get("include_only") is not None:
            include = []
            for i, name in enumerate(_names(minimization, "include_only", where)):
                path = _field_path(name, f"{where}.include_only[{i}]")
                if not path.startswith("metadata."):
                    raise ConfigError(f"{where}.include_only[{i}]: {name!r} is an event field; include_only lists "
                                      "the metadata keys to keep (event fields are dropped with exclude_fields)")
                include.append(path.removeprefix("metadata."))
        if minimization.get("enabled", True) and (exclude or include is not None):
            # the plugin may already be configured under either name; add to that section, not a second one
            own = security.get("compliance")
            target = own if own is not None and own.get("enabled") else compliance
            target["enabled"] = True
            existing = list(target.get("exclude_fields", []))
            target["exclude_fields"] = existing + [f for f in exclude if f not in existing]
            if include is not None:
                kept = target.get("include_only")
                target["include_only"] = include if kept is None else [*kept, *(k for k in include if k not in kept)]
    return security, compliance


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


def plugin_options(cls: type, config: Any, options: Mapping[str, Any], *, where: str) -> Any:
    """A plugin's ``Config`` from what its constructor got, the seed's ways included.

    ``config`` is a ``Config`` instance, one mapping of options (as the seed passes them) or ``None``;
    ``options`` are keywords.  Keys may be snake_case or camelCase; they are checked like a
    configuration file (an unknown or mistyped one is a :class:`ConfigError` naming ``where``).
    Returns ``None`` when neither gave anything (the plugin's defaults).
    """
    if isinstance(config, Mapping):
        config, options = None, {**config, **options}
    if not options:
        return config
    base = converter.unstructure(config) if config is not None else {}
    return structure({**base, **normalise_keys(dict(options))}, cls, where=where)


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


def redact_url(value: str) -> str:
    """``value`` with the password of a ``scheme://user:password@host/...`` URI (or ``?password=``), or of a
    libpq keyword/value connection string (``host=db password=...``), as ``***``."""
    if "://" not in value:
        return _KEYWORD_PASSWORD.sub(r"\1***", value)
    return _URL_PASSWORD_QUERY.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", value))


def redact_secrets(data: Any) -> Any:
    """A copy of a config tree safe to print: values under secret-looking keys become ``"***"``.

    The password in a URI (``redis://:password@host``, ``postgresql://user:password@db``) becomes ``***``
    under any key.  ``{"$env": NAME}`` references are kept, since they show where a secret
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
    if isinstance(data, str) and ("://" in data or "password" in data.lower()):
        return redact_url(data)
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


def _parse_switch(name: str, text: str) -> bool:
    """An on/off variable: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected true or false, got {text!r}")


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config values from ``TELEMETRY_*`` variables.

    ``TELEMETRY_SERVICE_NAME=x`` sets a top-level key; a double underscore goes
    one table deeper: ``TELEMETRY_SECURITY__PII__ENABLED=true``.  Values are read
    as booleans, JSON (numbers, lists, tables) or plain strings.  The seed's
    switches (:data:`SEED_ENV_SWITCHES`: ``TELEMETRY_ENCRYPTION_ENABLED``,
    ``TELEMETRY_AUTH_ENABLED``) set the key they name; one that disagrees with
    the nested form of the same key is an error.  Variables that are not config
    keys (``TELEMETRY_API_KEYS``, ``TELEMETRY_ENCRYPTION_KEY``, ``TELEMETRY_CONFIG``
    ...) are left to whoever reads them.
    """
    out: dict[str, Any] = {}
    for name, path in SEED_ENV_SWITCHES.items():
        if name not in environ:
            continue
        value = _parse_switch(name, environ[name])
        nested = ENV_PREFIX + "__".join(path).upper()
        if nested in environ and _parse_env_value(environ[nested]) != value:
            raise ConfigError(f"{name}={environ[name]} and {nested}={environ[nested]} disagree: set only one of them")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in SEED_ENV_SWITCHES:
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


def check_sections(loaded: LoadedConfig) -> tuple[list[str], list[str]]:
    """Check the plugin sections the service will *not* load, as if they were enabled.

    ``[api] prot = 3000`` passes the service's start when ``api`` is not enabled, and fails later (at
    ``telemetry api``, or when someone turns it on).  This structures every section that is present but not
    enabled (``security.*``, ``analytics``, ``api``, ``compliance``, ``streaming``, storage entries with
    ``enabled = false``) with its plugin's ``Config``, found by entry point, without instantiating it.
    Returns ``(problems, notes)``: the errors found, and the sections that could not be checked because
    their plugin is not installed.  Enabled sections are checked by :func:`~vibekit_telemetry.assembly.assemble`.
    """
    # plugins imports this module: import it when a check runs, not at import time
    from .plugins import installed_plugins, package_hint, resolve_entry_points

    cfg = loaded.config
    where = " + ".join(loaded.sources) or "defaults"
    todo: list[tuple[str, str, dict[str, Any]]] = []
    for path, plugin in SECTION_PLUGINS.items():
        section: Any = cfg
        for part in path:
            section = section.get(part) if isinstance(section, Mapping) else getattr(section, part, None)
        if isinstance(section, Mapping) and section and not section.get("enabled"):
            todo.append((".".join(path), plugin, {k: v for k, v in section.items() if k != "enabled"}))
    problems: list[str] = []
    streaming = cfg.streaming
    if streaming and not streaming.get("enabled"):
        unknown = sorted(set(streaming) - {"enabled", "provider", "options"})
        provider = streaming.get("provider", "websocket")
        if unknown:
            problems.append(f"streaming: unknown keys {unknown}; the section has enabled, provider and options")
        elif provider not in STREAMING_PROVIDERS:
            problems.append(f"streaming.provider: expected one of {', '.join(STREAMING_PROVIDERS)}, got {provider!r}")
        else:
            todo.append(("streaming.options", STREAMING_PROVIDERS[provider], dict(streaming.get("options") or {})))
    for index, entry in enumerate(cfg.storage):
        if not entry.enabled:
            skipped = (*PIPELINE_STORAGE_KEYS, *SINK_OPTION_KEYS)
            todo.append((f"storage[{index}].options", entry.type,
                         {k: v for k, v in entry.options.items() if k not in skipped}))
    installed = {p.name for p in installed_plugins()}
    notes: list[str] = []
    for path, plugin, options in todo:
        if plugin not in installed:
            notes.append(f"{path}: not checked: its plugin {plugin!r} is not installed "
                         f"(pip install {package_hint(plugin)})")
            continue
        try:
            target = resolve_entry_points([plugin])[plugin]
        except TelemetryError as exc:
            problems.append(f"{path}: {exc}")
            continue
        config_cls = getattr(target, "Config", None) if isinstance(target, type) else None
        if config_cls is None:
            if options:
                problems.append(f"{path}: plugin {plugin!r} takes no options, got {sorted(options)}")
            continue
        try:
            structure(options, config_cls, where=where, path=path)
        except ConfigError as exc:
            problems.append(f"{exc}\n  ({path} is not enabled yet: this fails once it is)")
    return problems, notes


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
instrument = []                  # SDKs recorded with no code: "openai", "anthropic" (telemetry.instrument)
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
# [security.redaction]            # the pii plugin replaces these fields' values whole
# fields = ["metadata.customer_note"]
# [security.data_minimization]    # the compliance plugin drops (or keeps only) these before queueing
# exclude_fields = ["password", "token"]
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
