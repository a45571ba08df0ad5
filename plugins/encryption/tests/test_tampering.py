"""A database edited behind the service's back: every change to what encryption protects fails loudly.

Each test writes a real SQLite file through a real service with the sqlite plugin, closes it, edits the
file with plain ``sqlite3`` as someone with access to the file would, and reads it back through a new
service.  The v1 fixture (``data/v1-format.sql``) is a dump of a file written by the plugin before values
were bound to their session (key ``V1_KEY``), so old databases are tested as they really are.
"""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry_encryption import DecryptionError, looks_encrypted

V1_KEY = "5e" * 32
V1_DUMP = Path(__file__).parent / "data" / "v1-format.sql"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TELEMETRY_ENCRYPTION_KEY", raising=False)
    return tmp_path


@pytest.fixture
def db(in_tmp):
    return in_tmp / "telemetry.db"


@pytest.fixture
def key():
    return secrets.token_hex(32)


def _service(db: Path, key: str | None, **options):
    security = {"encryption": {"enabled": True, "key": key, **options}} if key else {}
    return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db)}}], security=security)


def _record(t, prompt: str, secret: str) -> dict[str, str]:
    """A session with a start (prompt, metadata), a stream chunk, an error and an end; the ids of each."""
    sid = t.track_start("claude", "code", prompt, metadata={"model": "gpt-4o", "note": f"note of {secret}"})
    t.track_stream(sid, f"streamed {secret}")
    t.track_error(sid, f"error of {secret}")
    t.track_end(sid, "failed")
    t.flush()
    ids = {e.event_type: e.id for e in t.query(session_id=sid)}
    return {"session": sid, **ids}


def _sql(db: Path, sql: str, *params) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def _cell(db: Path, table: str, column: str, row_id: str):
    return _sql(db, f"SELECT {column} FROM {table} WHERE id = ?", row_id)[0][0]


def _set(db: Path, table: str, column: str, row_id: str, value) -> None:
    _sql(db, f"UPDATE {table} SET {column} = ? WHERE id = ?", value, row_id)


def _file_bytes(in_tmp: Path) -> bytes:
    return b"".join(p.read_bytes() for p in in_tmp.rglob("*.db*") if p.is_file())


def test_a_value_whose_prefix_was_changed_is_refused_never_returned_as_ciphertext(db, key):
    with _service(db, key) as t:
        ids = _record(t, "the first prompt", "alpha")
    sid = ids["session"]
    prompt = _cell(db, "events", "prompt", ids["start"])
    _set(db, "events", "prompt", ids["start"], "enX" + prompt[3:])
    _set(db, "events", "stream_data", ids["stream"], "enc:v9" + _cell(db, "events", "stream_data", ids["stream"])[6:])
    _set(db, "sessions", "prompt", sid, "xnc:v2" + _cell(db, "sessions", "prompt", sid)[6:])
    for options in ({}, {"allow_plaintext": True}):  # reading legacy clear rows must not turn this into plaintext
        with _service(db, key, **options) as t:
            with pytest.raises(DecryptionError, match=rf"event {ids['start']} field prompt: .*prefix was changed"):
                t.query(session_id=sid, event_type="start")
            with pytest.raises(DecryptionError,
                               match=rf"event {ids['stream']} field stream_data: .*does not read \('enc:v9:'"):
                t.query(session_id=sid, event_type="stream")
            with pytest.raises(DecryptionError, match=rf"session {sid} field prompt: .*prefix was changed"):
                t.get_session(sid)
            with pytest.raises(DecryptionError, match=rf"session {sid} field prompt"):
                t.get_sessions()
    assert not looks_encrypted("https://example.com:8080/" + "a" * 60)  # ordinary clear text is not mistaken


def test_a_ciphertext_replaced_by_plaintext_is_refused_unless_plaintext_is_allowed(db, key):
    with _service(db, key) as t:
        ids = _record(t, "the first prompt", "alpha")
    sid = ids["session"]
    _set(db, "events", "stream_data", ids["stream"], "forged words")
    # a short label is what v1 rows hold in clear, but not next to this event's v2 message
    _set(db, "events", "error_type", ids["error"], "Timeout")
    _sql(db, "UPDATE events SET metadata = json_set(metadata, '$.note', 'forged note') WHERE id = ?", ids["start"])
    _set(db, "sessions", "last_error", sid, "forged error message")
    with _service(db, key) as t:
        with pytest.raises(DecryptionError, match=rf"event {ids['stream']} field stream_data: .*stored in clear"):
            t.query(session_id=sid, event_type="stream")
        with pytest.raises(DecryptionError, match=rf"event {ids['error']} field error_type: .*stored in clear"):
            t.query(session_id=sid, event_type="error")
        with pytest.raises(DecryptionError, match=rf"event {ids['start']} field metadata.note: .*allow_plaintext"):
            t.query(session_id=sid, event_type="start")
        with pytest.raises(DecryptionError, match=rf"session {sid} field last_error: .*stored in clear"):
            t.get_session(sid)
    with _service(db, key, allow_plaintext=True) as t:  # the user's explicit choice: clear values are read
        assert t.query(session_id=sid, event_type="stream")[0].stream_data == "forged words"
        assert t.query(session_id=sid, event_type="start")[0].metadata["note"] == "forged note"
        assert t.get_session(sid).last_error == "forged error message"
        assert t.get_health_status().components["encryption"]["plaintext_read"] >= 3


def test_a_session_value_copied_onto_another_session_is_refused(db, key):
    with _service(db, key) as t:
        first = _record(t, "the first prompt", "alpha")
        second = _record(t, "the second prompt", "beta")
    a, b = first["session"], second["session"]
    for column in ("prompt", "metadata", "last_error"):
        original = _cell(db, "sessions", column, b)
        _set(db, "sessions", column, b, _cell(db, "sessions", column, a))
        with _service(db, key) as t:
            field = "metadata.note" if column == "metadata" else column  # (the model is a clear label)
            with pytest.raises(DecryptionError,
                               match=rf"session {b} field {field}: .*does not authenticate.*another session"):
                t.get_session(b)
            with pytest.raises(DecryptionError, match=rf"session {b} field {field}"):
                t.get_sessions()
            assert t.get_session(a).prompt == "the first prompt"  # the session it came from is untouched
        _set(db, "sessions", column, b, original)
    # a start event's value copied into the summary of another session fails the same way
    _set(db, "sessions", "prompt", b, _cell(db, "events", "prompt", first["start"]))
    with _service(db, key) as t, pytest.raises(DecryptionError, match=rf"session {b} field prompt"):
        t.get_session(b)


def test_an_event_value_copied_onto_another_event_or_an_event_moved_to_another_session_is_refused(db, key):
    with _service(db, key) as t:
        first = _record(t, "the first prompt", "alpha")
        second = _record(t, "the second prompt", "beta")
    a, b = first["session"], second["session"]
    copied = _cell(db, "events", "prompt", first["start"])
    original = _cell(db, "events", "prompt", second["start"])
    _set(db, "events", "prompt", second["start"], copied)
    with _service(db, key) as t, pytest.raises(
            DecryptionError, match=rf"event {second['start']} field prompt: .*encrypted for event {first['start']}"):
        t.query(session_id=b, event_type="start")
    # the same ciphertext with the event id it names rewritten to the target's
    _set(db, "events", "prompt", second["start"], copied.replace(first["start"], second["start"]))
    with _service(db, key) as t, pytest.raises(
            DecryptionError, match=rf"event {second['start']} field prompt: .*does not authenticate"):
        t.query(session_id=b, event_type="start")
    _set(db, "events", "prompt", second["start"], original)
    # a whole event moved into another session: its values are bound to the session it was tracked in
    _set(db, "events", "session_id", first["stream"], b)
    with _service(db, key) as t:
        with pytest.raises(DecryptionError,
                           match=rf"event {first['stream']} field stream_data: .*moved to another session"):
            t.query(session_id=b)
        assert t.query(session_id=b, event_type="start")[0].prompt == "the second prompt"


def test_legacy_clear_rows_need_allow_plaintext_and_keys_rotate_encrypts_them(in_tmp, db, key):
    with _service(db, None) as t:  # stored before encryption was turned on
        legacy = _record(t, "a legacy prompt in clear about zanzibar", "legacy-secret")
        for i in range(4):  # more events than one rotation batch (--batch 2 below)
            t.track({"category": "legacy", "prompt": f"old prompt {i}"})
        assert len(t.query(text="zanzibar")) == 1  # the text index now holds the clear words
    sid = legacy["session"]
    with _service(db, key) as t:
        with pytest.raises(DecryptionError, match=rf"event {legacy['start']} field prompt: .*allow_plaintext = true"):
            t.query(session_id=sid, event_type="start")
        with pytest.raises(DecryptionError, match=rf"session {sid} field prompt: .*telemetry keys rotate"):
            t.get_session(sid)
    config = in_tmp / "telemetry.toml"
    base = (f'[[storage]]\ntype = "sqlite"\noptions = {{ path = "{db}" }}\n\n'
            f'[security.encryption]\nenabled = true\nkey = "{key}"\n')
    config.write_text(base)
    refused = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "keys", "rotate"], capture_output=True,
                             text=True, cwd=in_tmp)
    assert refused.returncode != 0 and "stored in clear" in refused.stderr and "allow_plaintext" in refused.stderr
    assert b"a legacy prompt in clear" in _file_bytes(in_tmp)  # nothing was sealed as if it were genuine

    with _service(db, key, allow_plaintext=True) as t:
        assert t.get_session(sid).prompt == "a legacy prompt in clear about zanzibar"
        assert t.query(session_id=sid, event_type="stream")[0].stream_data == "streamed legacy-secret"
    config.write_text(base + "allow_plaintext = true\n")
    # in batches of 2: the progress marker goes to data_dir, which a database kept elsewhere never created
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "keys", "rotate", "--batch", "2"],
                            capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 7 " in result.stdout  # start, stream, error and 4 others; the end event has no text
    raw = _file_bytes(in_tmp)
    for plaintext in ("a legacy prompt in clear", "streamed legacy-secret", "error of legacy-secret",
                      "note of legacy-secret", "old prompt", "zanzibar"):  # a single word: the text index too
        assert plaintext.encode() not in raw, plaintext
    with _service(db, key) as t:  # strict again: everything is encrypted and bound now
        session = t.get_session(sid)
        assert session.prompt == "a legacy prompt in clear about zanzibar"
        assert session.last_error == "error of legacy-secret"
        assert t.query(session_id=sid, event_type="start")[0].metadata["note"] == "note of legacy-secret"


def test_rows_in_the_v1_format_still_read_and_rotation_binds_them_to_their_session(in_tmp, db):
    conn = sqlite3.connect(db)
    conn.executescript(V1_DUMP.read_text())
    conn.close()
    with _service(db, V1_KEY) as t:
        one, two = t.get_session("s-v1-one"), t.get_session("s-v1-two")
        assert one.prompt == "the launch code is tangerine-42" and one.last_error == "database password rejected"
        assert one.metadata["note"] == "private note" and one.metadata["nested"] == ["deep secret"]
        assert two.prompt == "second secret prompt" and two.last_error == "Timeout"  # v1 kept error types clear
        streamed = t.query(session_id="s-v1-one", event_type="stream")[0]
        assert streamed.stream_data == "streamed secret words"
        assert t.query(session_id="s-v1-two", event_type="error")[0].error_type == "Timeout"
        assert t.get_health_status().components["encryption"]["legacy_read"] > 0
        done = t.host.meta["encryption"]["object"].rotate(t)
        assert done["finished"] and done["rewritten"] == 5  # three starts/streams/errors of one, start/error of two
    raw = _file_bytes(in_tmp)
    assert b"enc:v1:" not in raw and b"enc:v2:" in raw
    with _service(db, V1_KEY) as t:
        assert t.get_session("s-v1-one").prompt == "the launch code is tangerine-42"
        assert t.get_session("s-v1-two").last_error == "Timeout"
        assert t.get_health_status().components["encryption"]["legacy_read"] == 0
    _set(db, "sessions", "prompt", "s-v1-two", _cell(db, "sessions", "prompt", "s-v1-one"))
    with _service(db, V1_KEY) as t, pytest.raises(DecryptionError, match="session s-v1-two field prompt"):
        t.get_session("s-v1-two")


def test_error_types_are_encrypted_and_agent_and_mode_stay_clear_for_filters(in_tmp, db, key):
    with _service(db, key) as t:
        sid = t.track_start("claude", "code", "a prompt")
        t.track_error(sid, error_type="QuotaExceededError")  # no message: the summary's last error is the type
        t.track_end(sid, "failed")
        t.flush()
        assert t.get_session(sid).last_error == "QuotaExceededError"
        assert t.query(session_id=sid, event_type="error")[0].error_type == "QuotaExceededError"
        assert [s.id for s in t.get_sessions(agent="claude", mode="code")] == [sid]
    assert b"QuotaExceededError" not in _file_bytes(in_tmp)
    assert _sql(db, "SELECT agent, mode FROM sessions WHERE id = ?", sid) == [("claude", "code")]
