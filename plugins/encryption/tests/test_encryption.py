"""Encryption at rest through the service into a real SQLite file."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vibekit_telemetry import ConfigError, TelemetryService
from vibekit_telemetry_encryption import DecryptionError, key_id

SECRET_PROMPT = "the launch code is tangerine-42"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TELEMETRY_ENCRYPTION_KEY", raising=False)
    return tmp_path


def _service(key: str | None = None, **extra):
    options = {"enabled": True, **extra}
    if key is not None:
        options["key"] = key
    return TelemetryService(security={"encryption": options})


def _record(t):
    sid = t.track_start("claude", "code", SECRET_PROMPT, metadata={"model": "gpt-4o", "note": "private note",
                                                                     "input_tokens": 1200, "nested": ["deep secret"]})
    t.track_stream(sid, "streamed secret words")
    t.track_error(sid, "database password rejected")
    t.track_end(sid, "failed")
    return sid


def test_sensitive_fields_are_ciphertext_on_disk_and_plaintext_through_the_service(in_tmp):
    key = secrets.token_hex(32)
    with _service(key) as t:
        sid = _record(t)
        events = t.query(session_id=sid, order="asc")
        session = t.get_session(sid)
        assert events[0].prompt == SECRET_PROMPT and events[1].stream_data == "streamed secret words"
        assert events[0].metadata == {"model": "gpt-4o", "note": "private note", "input_tokens": 1200,
                                      "nested": ["deep secret"]}
        assert session.prompt == SECRET_PROMPT and session.last_error == "database password rejected"
        assert session.tokens.input == 1200 and session.status == "failed"  # numbers and status stay usable
        assert len(t.query(category="claude", event_type="stream")) == 1  # clear fields stay queryable
        assert t.get_health_status().components["encryption"]["key_id"] == key_id(bytes.fromhex(key))
    raw = b"".join(p.read_bytes() for p in (in_tmp / ".vibekit").rglob("*") if p.is_file())
    for plaintext in (SECRET_PROMPT, "streamed secret words", "private note", "deep secret", "password rejected"):
        assert plaintext.encode() not in raw, plaintext
    # the session labels (kind, model, conversation, user) stay clear, like agent and mode, to filter sessions by
    assert b"enc:v2:" in raw and b"gpt-4o" in raw
    with _service(key) as t:
        [found] = t.get_sessions(model="gpt-4o")
        assert found.id == sid and found.prompt == SECRET_PROMPT


def test_missing_wrong_and_old_keys(in_tmp, monkeypatch):
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    with pytest.raises(ConfigError, match="there is no key"):
        _service()
    with pytest.raises(ConfigError, match="64 hex characters"):
        _service("not-a-key")
    with _service(first) as t:
        sid = _record(t)
    with _service(second) as t, pytest.raises(DecryptionError, match=rf"encrypted with key {key_id(bytes.fromhex(first))}"):
        t.query(session_id=sid)
    with _service(second, old_keys=[first]) as t:  # rotation: new rows with the new key, old rows still read
        t.track({"category": "after-rotation", "prompt": "new secret"})
        assert t.query(session_id=sid, event_type="start")[0].prompt == SECRET_PROMPT
        assert t.query(category="after-rotation")[0].prompt == "new secret"
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", second)
    with _service(old_keys=[first]) as t:
        assert t.get_session(sid).prompt == SECRET_PROMPT


def test_a_tampered_or_moved_value_is_an_error_naming_the_row(in_tmp):
    key = secrets.token_hex(32)
    with _service(key) as t:
        sid = _record(t)
        start = t.query(session_id=sid, event_type="start")[0]
        stream = t.query(session_id=sid, event_type="stream")[0]
    conn = sqlite3.connect(in_tmp / ".vibekit" / "telemetry.db")
    stored = conn.execute("SELECT prompt FROM events WHERE id = ?", [start.id]).fetchone()[0]
    flipped = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    conn.execute("UPDATE events SET prompt = ? WHERE id = ?", [flipped, start.id])
    moved = conn.execute("SELECT stream_data FROM events WHERE id = ?", [stream.id]).fetchone()[0]
    conn.execute("UPDATE events SET label = ? WHERE id = ?", [moved, start.id])
    conn.commit()
    conn.close()
    with _service(key) as t:
        with pytest.raises(DecryptionError, match=rf"event {start.id} field prompt: .*does not authenticate"):
            t.query(session_id=sid, event_type="start")
    conn = sqlite3.connect(in_tmp / ".vibekit" / "telemetry.db")
    conn.execute("UPDATE events SET prompt = ? WHERE id = ?", [stored, start.id])
    conn.commit()
    conn.close()
    with _service(key) as t, pytest.raises(DecryptionError, match=rf"event {start.id} field label: .*encrypted for event"):
        t.query(session_id=sid, event_type="start")


def test_a_passphrase_derives_the_key_with_a_salt_kept_next_to_the_database(in_tmp):
    with _service(passphrase="correct horse battery staple") as t:
        sid = _record(t)
    salt = (in_tmp / ".vibekit" / "encryption.salt").read_text()
    assert len(salt.strip()) == 32
    with _service(passphrase="correct horse battery staple", key_derivation="scrypt") as t:
        assert t.get_session(sid).prompt == SECRET_PROMPT
    with _service(passphrase="wrong") as t, pytest.raises(DecryptionError):
        t.get_session(sid)


def test_keys_generate_prints_a_usable_key(in_tmp):
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "keys", "generate"],
                            capture_output=True, text=True, check=True)
    key = result.stdout.strip()
    assert len(bytes.fromhex(key)) == 32 and key_id(bytes.fromhex(key)) in result.stderr
    with _service(key) as t:
        t.track({"category": "c", "prompt": "x"})
        assert t.query()[0].prompt == "x"


def test_encryption_never_spills_plaintext_to_disk(in_tmp):
    with _service(secrets.token_hex(32)) as t:
        assert t._pipeline._on_full == "block"
    assert Path(in_tmp / ".vibekit").exists()


def test_rotation_re_encrypts_old_and_plaintext_rows_resumably(in_tmp):
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    with TelemetryService() as t:  # rows stored before encryption was turned on
        t.track({"category": "legacy", "prompt": "plain old secret", "metadata": {"note": "plain note"}})
    with _service(first) as t:
        sids = [_record(t) for _ in range(6)]
    with _service(second, old_keys=[first], allow_plaintext=True) as t:  # the legacy row is in clear
        plugin = t.host.meta["encryption"]["object"]
        partial = plugin.rotate(t, batch=5, max_batches=2)
        assert partial["finished"] is False and (in_tmp / ".vibekit" / "encryption.rotation").exists()
        done = plugin.rotate(t, batch=5)
        assert done["finished"] is True and partial["rewritten"] + done["rewritten"] == 19  # end events carry no text
        assert not (in_tmp / ".vibekit" / "encryption.rotation").exists()
    with _service(second) as t:  # the old key is gone from the configuration: everything still reads
        assert t.query(category="legacy")[0].prompt == "plain old secret"
        assert all(t.get_session(sid).prompt == SECRET_PROMPT for sid in sids)
        assert t.query(session_id=sids[0], event_type="start")[0].metadata["note"] == "private note"
    raw = b"".join(p.read_bytes() for p in (in_tmp / ".vibekit").rglob("*.db*"))
    assert b"plain old secret" not in raw and b"plain note" not in raw
    assert f"enc:v1:{key_id(bytes.fromhex(first))}".encode() not in raw


def test_keys_rotate_command(in_tmp):
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    with _service(first) as t:
        sid = _record(t)
    (in_tmp / "telemetry.toml").write_text(
        f'[security.encryption]\nenabled = true\nkey = "{second}"\nold_keys = ["{first}"]\n')
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "keys", "rotate"], capture_output=True,
                            text=True, cwd=in_tmp)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 3 " in result.stdout  # start, stream and error; the end event has no text
    with _service(second) as t:
        assert t.get_session(sid).prompt == SECRET_PROMPT
