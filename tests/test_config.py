"""Configuration sources, precedence, and the errors a user sees."""

from __future__ import annotations

import json
import textwrap

import pytest

from vibekit_telemetry import ConfigError, TelemetryService, load_config
from vibekit_telemetry.config import redact_secrets, redact_url


def test_defaults_without_any_file(in_tmp):
    loaded = load_config()
    assert loaded.path is None and loaded.sources == ()
    assert loaded.config.storage[0].type == "sqlite"
    assert loaded.config.data_dir == ".vibekit"


def test_telemetry_toml_then_env_then_kwargs(in_tmp, monkeypatch):
    (in_tmp / "telemetry.toml").write_text('service_name = "from-file"\nstream_batch_size = 10\n[api]\nport = 4000\n')
    assert load_config().config.service_name == "from-file"
    monkeypatch.setenv("TELEMETRY_SERVICE_NAME", "from-env")
    monkeypatch.setenv("TELEMETRY_API__PORT", "5000")
    monkeypatch.setenv("TELEMETRY_API_KEYS", "not-a-config-key")
    loaded = load_config()
    assert (loaded.config.service_name, loaded.config.api["port"], loaded.config.stream_batch_size) == ("from-env", 5000, 10)
    assert load_config(overrides={"service_name": "from-kwargs"}).config.service_name == "from-kwargs"


def test_pyproject_table(in_tmp):
    (in_tmp / "pyproject.toml").write_text('[project]\nname = "app"\n[tool.vibekit-telemetry]\nservice_name = "py"\n')
    loaded = load_config()
    assert loaded.config.service_name == "py" and loaded.path.name == "pyproject.toml"


def test_explicit_and_env_config_paths(in_tmp, monkeypatch):
    (in_tmp / "other.toml").write_text('service_name = "other"\n')
    assert load_config("other.toml").config.service_name == "other"
    monkeypatch.setenv("TELEMETRY_CONFIG", "other.toml")
    assert load_config().config.service_name == "other"
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config("missing.toml")


def test_unknown_key_names_file_key_path(in_tmp):
    (in_tmp / "telemetry.toml").write_text("servce_name = 'typo'\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "telemetry.toml" in str(info.value) and "servce_name: unknown key" in str(info.value)


def test_wrong_type_names_expected_type(in_tmp):
    (in_tmp / "telemetry.toml").write_text('stream_batch_size = "lots"\n[[storage]]\ntype = "sqlite"\nenabled = "yes"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    text = str(info.value)
    assert "telemetry.toml" in text
    assert "stream_batch_size: expected an integer" in text
    assert "storage[0].enabled: expected true or false" in text


def test_plugin_option_typo_names_the_path(in_tmp):
    (in_tmp / "telemetry.toml").write_text('[[storage]]\ntype = "sqlite"\n[storage.options]\npaht = "x.db"\n')
    with pytest.raises(ConfigError) as info:
        TelemetryService()
    assert "telemetry.toml" in str(info.value) and "storage[0].options.paht: unknown key" in str(info.value)


def test_invalid_toml(in_tmp):
    (in_tmp / "telemetry.toml").write_text("service_name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config()


def test_env_references_and_redaction(in_tmp, monkeypatch):
    (in_tmp / "telemetry.toml").write_text(textwrap.dedent("""
        [api]
        port = 3000
        api_keys = ["plain-secret-key"]
        [api.auth]
        token = {"$env" = "MY_TOKEN"}
    """))
    with pytest.raises(ConfigError, match="MY_TOKEN is not set"):
        load_config()
    monkeypatch.setenv("MY_TOKEN", "s3cr3t")
    loaded = load_config()
    assert loaded.config.api["auth"]["token"] == "s3cr3t"
    shown = json.dumps(redact_secrets(loaded.raw))
    assert "s3cr3t" not in shown and "plain-secret-key" not in shown
    assert '"$env": "MY_TOKEN"' in shown and '"port": 3000' in shown


def test_seed_style_config_works_unchanged(in_tmp):
    seed = {
        "serviceName": "my-ai-app",
        "serviceVersion": "1.0.0",
        "storage": [{"type": "sqlite", "enabled": True,
                     "options": {"path": str(in_tmp / "seed.db"), "streamBatchSize": 25, "streamFlushInterval": 500}}],
        "analytics": {"enabled": False, "metrics": {"enabled": True}},
        "api": {"enabled": False, "port": 3000},
    }
    with TelemetryService(**seed) as telemetry:
        assert telemetry.config.service_name == "my-ai-app"
        health = telemetry.get_health_status()
        assert (health.pipeline["batch_size"], health.pipeline["flush_interval_ms"]) == (25, 500)
        telemetry.track({"category": "c"})
    assert (in_tmp / "seed.db").is_file()


def test_section_enabling_a_missing_plugin_fails_early(in_tmp, monkeypatch):
    from vibekit_telemetry import config

    # every section's plugin is installed in the workspace: point one at a plugin that is not
    monkeypatch.setitem(config.SECTION_PLUGINS, ("security", "pii"), "pii-pro")
    with pytest.raises(Exception, match=r"unknown plugin 'pii-pro'.*pip install vibekit-telemetry-pii-pro"):
        TelemetryService(security={"pii": {"enabled": True}})


def test_out_of_range_values_name_the_key(in_tmp):
    (in_tmp / "telemetry.toml").write_text("stream_batch_size = 0\n")
    with pytest.raises(ConfigError, match="stream_batch_size: out of range"):
        load_config()
    (in_tmp / "telemetry.toml").unlink()
    with pytest.raises(ConfigError, match="on_full: expected one of 'spill', 'block', 'drop_newest', 'drop_oldest', got 'explode'"):
        load_config(overrides={"on_full": "explode"})


def test_config_object_with_keyword_overrides(in_tmp):
    from vibekit_telemetry import TelemetryConfig

    base = TelemetryConfig(service_name="obj")
    with TelemetryService(base, storage=[{"type": "memory"}], stream_batch_size=7) as t:
        assert (t.config.service_name, t.config.storage[0].type, t.config.stream_batch_size) == ("obj", "memory", 7)


def test_uri_passwords_are_redacted_under_any_key():
    assert redact_url("redis://:p@ss/w@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://app:secret@db/telemetry") == "postgresql://app:***@db/telemetry"
    assert redact_url("redis+unix:///run/redis.sock?db=0&password=secret") == "redis+unix:///run/redis.sock?db=0&password=***"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    shown = redact_secrets({"api": {"rate_limit": {"storage": "rediss://user:secret@cache"}}, "urls": ["http://a:b@c"]})
    assert shown == {"api": {"rate_limit": {"storage": "rediss://user:***@cache"}}, "urls": ["http://a:***@c"]}


def test_a_uri_password_is_hidden_inside_a_message_and_whole_when_it_holds_url_characters():
    from vibekit_telemetry.config import redact_url

    assert redact_url("error connecting to redis://:secret@h:6379 now") == "error connecting to redis://:***@h:6379 now"
    assert redact_url("postgresql://u:p#ss?w@rd@db/t") == "postgresql://u:***@db/t"
    assert redact_url("host=db user=t password='s3 cret' dbname=t") == "host=db user=t password=*** dbname=t"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
