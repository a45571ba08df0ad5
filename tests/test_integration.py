"""Plugins working together through the service, as a user would combine them."""

from __future__ import annotations

import secrets

from vibekit_telemetry import TelemetryService


def _service(key):
    return TelemetryService(security={"pii": {"enabled": True}, "encryption": {"enabled": True, "key": key}},
                            analytics={"enabled": True}, plugins=["cache"])


def test_redaction_encryption_analytics_and_cache_together(in_tmp):
    key = secrets.token_hex(32)
    with _service(key) as t:
        for i in range(5):
            sid = t.track_start("claude", "chat", f"mail bob{i}@example.org about invoice",
                                metadata={"model": "gpt-4o"})
            t.track_end(sid, metadata={"input_tokens": 100, "output_tokens": 10})
        metrics = t.get_metrics("1h")
        first = t.query(event_type="start", limit=1)[0]
        assert t.query(event_type="start", limit=1)[0] == first  # a cache hit, decrypted the same
    assert list(metrics.by_model) == ["gpt-4o"] and metrics.tokens.input == 500
    assert metrics.redactions == {"EMAIL": 5}  # counted in metrics, never the values
    assert first.prompt.startswith("mail [REDACTED_EMAIL]")
    raw = b"".join(p.read_bytes() for p in (in_tmp / ".vibekit").rglob("*.db*"))
    assert b"example.org" not in raw and b"invoice" not in raw
    # analytics recounting an encrypted database reads it through the service, in the clear
    (in_tmp / ".vibekit" / "analytics.db").unlink()
    with _service(key) as t:
        assert list(t.get_metrics("1h").by_model) == ["gpt-4o"]
