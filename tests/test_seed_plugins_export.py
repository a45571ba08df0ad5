"""Issue 16, plugins and export: the TypeScript seed's PII, compliance, cache, S3 and export examples work here.

Everything runs against real SQLite files in a temporary directory, the real CLI (click's runner), and a real
API server on 127.0.0.1 with httpx.
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import io
import json
import re
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vibekit_telemetry import ConfigError, InvalidQueryError, TelemetryService, now_ms
from vibekit_telemetry.cli import cli

DAY = 86_400_000
OPENAI_KEY = "sk-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3"  # the seed's shape: sk- and 48 characters


def _raw(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def _gzip_name(data: bytes) -> str | None:
    """The FNAME field of a gzip header (RFC 1952), or None when the header has none."""
    assert data[:2] == b"\x1f\x8b"
    if not data[3] & 0x08:
        return None
    start = 10 + (2 + int.from_bytes(data[10:12], "little") if data[3] & 0x04 else 0)
    return data[start:data.index(b"\x00", start)].decode("latin-1")


# -- 1. PII ---------------------------------------------------------------------------------------------------

def test_the_seed_pii_example_redacts_with_its_names_labels_and_compiled_custom_detector(in_tmp):
    security = {"pii": {"enabled": True, "patterns": ["email", "phone", "ssn", "credit_card"],
                        "customDetectors": [{"name": "api_key", "pattern": re.compile(r"sk-[a-zA-Z0-9]{48}"),
                                             "replacement": "[REDACTED_API_KEY]"}]}}
    with TelemetryService(security=security) as t:
        t.track({"category": "user", "action": "update",
                 "metadata": {"email": "user@example.com", "apiKey": OPENAI_KEY, "note": f"use {OPENAI_KEY} now"}})
        t.track({"category": "user", "prompt": f"call 415-555-0143 with {OPENAI_KEY}", "label": "219-09-9998"})
        update, prompt = sorted(t.query(category="user"), key=lambda e: e.prompt is not None)
    assert update.metadata["email"] == "[REDACTED_EMAIL]"
    assert update.metadata["apiKey"] == "[REDACTED_API_KEY]"  # the custom label under a secret-looking key too
    assert update.metadata["note"] == "use [REDACTED_API_KEY] now"
    assert prompt.prompt == "call [REDACTED_PHONE] with [REDACTED_API_KEY]" and prompt.label == "[REDACTED_SSN]"
    assert update.metadata["pii_redacted"] == {"EMAIL": 1, "API_KEY": 2}
    raw = _raw(in_tmp / ".vibekit")
    assert OPENAI_KEY.encode() not in raw and b"user@example.com" not in raw


def test_pattern_names_are_case_insensitive_and_a_wrong_one_lists_the_names(in_tmp):
    with TelemetryService(security={"pii": {"enabled": True, "patterns": ["Email", "CREDIT-CARD", "ip"]}}) as t:
        t.track({"category": "c", "prompt": "a@b.co, card 4111 1111 1111 1111, host 203.0.113.77, tel 415-555-0143"})
        [event] = t.query()
    assert event.prompt == "[REDACTED_EMAIL], card [REDACTED_CREDIT_CARD], host [REDACTED_IP_ADDRESS], tel 415-555-0143"
    with pytest.raises(ConfigError, match=r"unknown PII patterns \['dna'\].*email, .*credit_card"):
        TelemetryService(security={"pii": {"enabled": True, "patterns": ["email", "dna"]}})


def test_a_seed_regex_literal_in_a_config_file_is_read_as_the_seed_means_it(in_tmp):
    (in_tmp / "telemetry.toml").write_text(
        '[security.pii]\nenabled = true\npatterns = ["email"]\n'
        '[[security.pii.customDetectors]]\nname = "ticket"\npattern = "/tkt-[a-z]{4}/gi"\n')
    with TelemetryService() as t:
        t.track({"category": "c", "prompt": "see TKT-abcd and tkt-wxyz", "metadata": {"ref": "Tkt-QQQQ"}})
        [event] = t.query()
    assert event.prompt == "see [REDACTED_TICKET] and [REDACTED_TICKET]"  # the i flag kept, no slashes looked for
    assert event.metadata["ref"] == "[REDACTED_TICKET]"


def test_redact_fields_replace_whole_values_by_dotted_path_and_by_key(in_tmp):
    fields = ["prompt", "metadata.customer_note", "billing.card", "metadata.messages.content", "Password"]
    with TelemetryService(security={"pii": {"enabled": True, "patterns": [], "redact_fields": fields}}) as t:
        sid = t.track_start("claude", "chat", "the whole prompt is private",
                            metadata={"customer_note": {"text": "VIP, call after 5"}, "billing": {"card": 4242, "plan": "pro"},
                                      "messages": [{"role": "user", "content": "hello"}, {"role": "bot"}],
                                      "nested": {"PASSWORD": "hunter2"}, "kept": "visible"})
        t.track_end(sid)
        [start] = t.query(session_id=sid, event_type="start")
    assert start.prompt == "[REDACTED_FIELD]"
    assert start.metadata["customer_note"] == "[REDACTED_FIELD]" and start.metadata["billing"] == {
        "card": "[REDACTED_FIELD]", "plan": "pro"}
    assert start.metadata["messages"] == [{"role": "user", "content": "[REDACTED_FIELD]"}, {"role": "bot"}]
    assert start.metadata["nested"] == {"PASSWORD": "[REDACTED_FIELD]"} and start.metadata["kept"] == "visible"
    assert start.metadata["pii_redacted"] == {"FIELD": 5}
    raw = _raw(in_tmp / ".vibekit")
    for secret in (b"the whole prompt", b"VIP, call", b"hunter2", b"4242"):
        assert secret not in raw
    for bad, message in (("category", "needed to store"), ("metadata", "metadata.<key>"), ("prompt.x", "is text")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            TelemetryService(security={"pii": {"enabled": True, "redact_fields": [bad]}})


def test_the_seed_redaction_section_reaches_the_plugin(in_tmp):
    with TelemetryService(security={"redaction": {"enabled": True, "fields": ["customer_note"]}}) as t:
        t.track({"category": "c", "metadata": {"customer_note": "private", "other": "a@b.co"}})
        [event] = t.query()
    assert event.metadata["customer_note"] == "[REDACTED_FIELD]" and event.metadata["other"] == "a@b.co"


# -- 2. Compliance ---------------------------------------------------------------------------------------------

def _sessions(t, ages_days):
    ids = []
    for age in ages_days:
        ts = now_ms() - int(age * DAY)
        sid = t.track_start("claude", "chat", f"prompt of {age} days", metadata={"user_id": f"u{age}"}, timestamp=ts)
        t.track_end(sid, timestamp=ts + 10)
        ids.append(sid)
    return ids


def test_the_seed_gdpr_section_is_enforced_on_schedule_in_days(in_tmp):
    with TelemetryService() as t:
        old, middle, recent = _sessions(t, [100, 40, 1])
    gdpr = {"gdpr": {"enabled": True, "anonymizeAfter": 30, "deleteAfter": 90}}
    with TelemetryService(compliance=gdpr) as t:  # no "enabled" of its own, as in the seed
        plugin = t.host.meta["compliance"]["object"]
        assert (plugin.retention_days, plugin.anonymize_after, plugin.regulations) == (90, 30, ("gdpr",))
        deadline = time.monotonic() + 20
        while t.get_session(old) is not None or t.query(session_id=middle, event_type="start")[0].prompt:
            assert time.monotonic() < deadline, "the schedule did not apply the gdpr periods"
            time.sleep(0.2)
        stripped = t.query(session_id=middle, event_type="start")[0]
        assert "user_id" not in stripped.metadata
        assert t.query(session_id=recent, event_type="start")[0].prompt == "prompt of 1 days"


def test_ccpa_and_gdpr_together_enforce_the_shorter_period(in_tmp):
    from vibekit_telemetry_compliance import CompliancePlugin

    plugin = CompliancePlugin(gdpr={"deleteAfter": 90}, ccpa={"enabled": True, "deleteAfter": 45}, retentionDays=120)
    assert plugin.retention_days == 45 and plugin.regulations == ("gdpr", "ccpa")
    with TelemetryService(plugins=[plugin]) as t:
        gone, kept = _sessions(t, [50, 10])
        assert plugin.run_schedule()["deleted"] == 2
        assert t.get_session(gone) is None and t.get_session(kept) is not None
    with pytest.raises(ConfigError, match="anonymize_after"):
        CompliancePlugin(ccpa={"anonymizeAfter": 60, "deleteAfter": 30})
    with pytest.raises(ConfigError, match="delete_after"):
        CompliancePlugin(gdpr={"deleteAfter": -1})


def test_seed_data_minimization_uses_the_plugin_options(in_tmp):
    minimization = {"enabled": True, "excludeFields": ["password", "token"], "includeOnly": ["necessary", "password"]}
    with TelemetryService(security={"dataMinimization": minimization}) as t:
        t.track({"category": "c", "metadata": {"password": "x", "token": "y", "necessary": 1, "other": 2}})
        [event] = t.query()
    assert event.metadata == {"necessary": 1}


# -- 3. Seed-style constructors and one import ------------------------------------------------------------------

def test_the_seed_built_in_plugins_import_from_one_place_and_work_with_seed_keywords(in_tmp):
    from vibekit_telemetry.plugins import CachePlugin, CompliancePlugin, EncryptionPlugin, S3ExportPlugin

    assert EncryptionPlugin.__module__ == "vibekit_telemetry_encryption"
    cache = CachePlugin(ttl=300000, maxSize=1000)
    compliance = CompliancePlugin(regulations=["gdpr", "ccpa"], retentionDays=90)
    s3 = S3ExportPlugin(bucket="telemetry-exports", region="us-east-1")
    with TelemetryService(plugins=[cache, s3, compliance]) as t:
        _sessions(t, [120, 1])
        assert compliance.run_schedule()["deleted"] == 2
        t.query(category="claude")
        t.query(category="claude")
        health = t.get_health_status().components
    assert health["cache"]["ttl_ms"] == 300_000 and health["cache"]["max_size"] == 1000 and health["cache"]["hits"] == 1
    assert health["compliance"]["regulations"] == ["gdpr", "ccpa"] and health["compliance"]["retention_days"] == 90
    assert s3.config.bucket == "telemetry-exports" and s3.config.region == "us-east-1"
    assert s3.client.meta.region_name == "us-east-1"


def test_cache_ttl_is_in_milliseconds_and_options_are_checked(in_tmp):
    from vibekit_telemetry.plugins import CachePlugin

    cache = CachePlugin({"ttl": 150, "maxSize": 10})  # one dict, as the seed passes its options
    with TelemetryService(plugins=[cache]) as t:
        t.track({"category": "a"})
        t.query(category="a")
        t.query(category="a")
        time.sleep(0.3)
        t.query(category="a")
        stats = t.get_health_status().components["cache"]
    assert (stats["hits"], stats["misses"]) == (1, 2)
    with pytest.raises(ConfigError, match="max_szie: unknown key"):
        CachePlugin(ttl=1000, maxSzie=10)
    with pytest.raises(ConfigError, match="ttl"):
        CachePlugin(ttl="soon")
    with TelemetryService(plugins=[{"name": "cache", "options": {"ttl": 300000, "maxSize": 5}}]) as t:
        assert t.get_health_status().components["cache"]["ttl_ms"] == 300_000


def test_a_plugin_class_whose_package_is_missing_names_the_package(monkeypatch):
    import vibekit_telemetry.plugins as plugins

    # The shared environment cannot lose a package for one test: hide the cache plugin's entry point instead.
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep for ep in real(**kw) if not ep.value.startswith("vibekit_telemetry_cache")])
    monkeypatch.delitem(plugins.__dict__, "CachePlugin", raising=False)
    with pytest.raises(ImportError, match="pip install vibekit-telemetry-cache"):
        from vibekit_telemetry.plugins import CachePlugin  # noqa: F401
    with pytest.raises(ImportError, match="cannot import name"):
        from vibekit_telemetry.plugins import NoSuchPlugin  # noqa: F401


# -- 4. Every seed export() example, one vocabulary --------------------------------------------------------------

@pytest.fixture
def recorded(in_tmp):
    with TelemetryService() as t:
        a = t.track_start("claude", "code", "Fix this bug")
        t.track_stream(a, "Here's the fix")
        t.track_end(a)
        b = t.track_start("claude", "chat", "hi")
        t.track_end(b)
        c = t.track_start("gpt-4", "chat", "hello")
        t.track_end(c)
    service = TelemetryService()
    yield service, (a, b, c)
    service.shutdown()


def test_the_seed_export_examples(recorded):
    t, (a, b, c) = recorded
    data = t.export("json", {"sessionId": a, "compress": True})
    assert [e["session_id"] for e in json.loads(gzip.decompress(data))] == [a, a, a]
    rows = list(csv.reader(io.StringIO(t.export("csv", {"category": "claude", "delimiter": ";", "headers": True})
                                       .decode()), delimiter=";"))
    assert rows[0][:3] == ["id", "timestamp", "event_type"] and len(rows) == 6
    no_header = t.export("csv", {"category": "claude", "headers": False}).decode().splitlines()
    assert len(no_header) == 5
    requests = [json.loads(line) for line in t.export("otlp", {"sessions": [a, b]}).splitlines()]
    spans = [s for r in requests for rs in r.get("resourceSpans", []) for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 2
    parquet = t.export("parquet", {"schema": "events", "compression": "snappy"})
    meta = pq.ParquetFile(io.BytesIO(parquet)).metadata
    assert meta.num_rows == 7 and meta.row_group(0).column(0).compression == "SNAPPY"
    zstd = pq.ParquetFile(io.BytesIO(t.export("parquet", compression="zstd"))).metadata  # Parquet's own codec
    assert zstd.row_group(0).column(0).compression == "ZSTD"


def test_filter_keys_and_options_in_one_dict_and_unknown_keys_list_the_valid_ones(recorded):
    t, (a, _, _) = recorded
    with pytest.raises(InvalidQueryError, match="delimter: unknown export key") as err:
        t.export("csv", {"category": "claude", "delimter": ";"})
    assert "session_id" in str(err.value) and "options of csv: delimiter, header, metadata" in str(err.value)
    with pytest.raises(InvalidQueryError, match="compression: json is compressed with gzip or zstd"):
        t.export("json", {"compression": "snappy"})
    with pytest.raises(InvalidQueryError, match="given twice"):
        t.export("json", {"compress": "gzip", "compression": "zstd"})
    with pytest.raises(ValueError, match="parquet schema"):
        t.export("parquet", {"schema": "sessions"})
    assert t.export("json", {"compression": "gzip"}) == t.export("json", compress="gzip")
    assert len(json.loads(t.export("json", {"timeRange": {"start": now_ms() - 3_600_000}, "eventType": "end"}))) == 3


def test_a_gzip_export_names_the_final_file_not_the_partial_one(recorded, in_tmp):
    t, _ = recorded
    t.export("jsonl", output="events.jsonl.gz")
    assert _gzip_name((in_tmp / "events.jsonl.gz").read_bytes()) == "events.jsonl"
    assert not list(in_tmp.glob("*.partial"))
    assert _gzip_name(t.export("json", compression="gzip")) is None  # bytes have no file name


def test_the_seed_cli_export_lines(recorded, in_tmp):
    t, (a, b, _) = recorded
    t.shutdown()
    runner = CliRunner()
    done = runner.invoke(cli, ["export", "--format", "otlp", "--sessions", f"{a},{b}"])
    assert done.exit_code == 0, done.output
    [written] = in_tmp.glob("telemetry-export-*.otlp.json")
    assert f"exported 5 events to {written.name}" in done.stdout  # printed where a script can read it
    done = runner.invoke(cli, ["export", "--format", "csv", "--output", "events.csv", "--delimiter", ","])
    assert done.exit_code == 0, done.output
    assert (in_tmp / "events.csv").read_text().startswith("id,timestamp")
    done = runner.invoke(cli, ["export", "--format", "json", "--compress", "gzip", "--output", "events.json.gz"])
    assert done.exit_code == 0, done.output
    data = (in_tmp / "events.json.gz").read_bytes()
    assert _gzip_name(data) == "events.json" and len(json.loads(gzip.decompress(data))) == 7
    done = runner.invoke(cli, ["export", "--format", "parquet", "--compression", "zstd", "-o", "e.parquet"])
    assert done.exit_code == 0 and pq.ParquetFile(in_tmp / "e.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    done = runner.invoke(cli, ["export", "--format", "csv", "--no-headers", "-O", "category=gpt-4", "-o", "g.csv"])
    assert done.exit_code == 0 and len((in_tmp / "g.csv").read_text().splitlines()) == 2
    done = runner.invoke(cli, ["export", "--format", "csv", "-O", "delimter=;", "-o", "bad.csv"])
    assert done.exit_code == 2 and "delimter: unknown export key" in done.output and not (in_tmp / "bad.csv").exists()
    done = runner.invoke(cli, ["export", "--sessions", a])
    assert done.exit_code == 2 and "--format" in done.output
    done = runner.invoke(cli, ["import", written.name])  # the default name says the format
    assert done.exit_code == 0 and "imported 5 of 5 events" in done.output


def test_the_http_export_takes_the_same_vocabulary_and_refuses_before_streaming(recorded):
    t, (a, _, _) = recorded
    server = t.start_api_server(port=0, rate_limit={"enabled": False})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/api/export", params={"format": "csv", "category": "claude", "delimiter": ";",
                                                     "headers": "false"})
        assert response.status_code == 200 and response.text.count("\n") == 5 and ";" in response.text
        response = client.get("/api/export", params={"format": "json", "sessionId": a, "compress": "true"})
        assert response.status_code == 200 and len(json.loads(gzip.decompress(response.content))) == 3
        assert response.headers["content-disposition"].endswith('events.json.gz"')
        response = client.get("/api/export", params={"format": "parquet", "compression": "snappy", "row_group_size": "2"})
        assert pq.ParquetFile(io.BytesIO(response.content)).metadata.num_row_groups == 4
        bad = client.get("/api/export", params={"format": "csv", "delimiter": ";;"})
        assert bad.status_code == 400 and "one character" in bad.json()["details"][0]["message"]
        unknown = client.get("/api/export", params={"format": "csv", "colour": "red"})
        assert unknown.status_code == 400 and unknown.json()["details"][0]["field"] == "colour"
        assert "delimiter" in unknown.json()["details"][0]["message"]
        written = client.get("/api/export", params={"format": "jsonl", "compress": "gzip", "path": "e.jsonl.gz"})
        assert written.status_code == 201
    path = t.data_dir / "exports" / "e.jsonl.gz"
    assert _gzip_name(path.read_bytes()) == "e.jsonl" and len(gzip.decompress(path.read_bytes()).splitlines()) == 7
