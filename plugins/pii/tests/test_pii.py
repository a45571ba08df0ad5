"""PII and secret redaction end to end: through the service into a real SQLite file, and on public corpora."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vibekit_telemetry import ConfigError, TelemetryService
from vibekit_telemetry_pii import PIIRedactor
from vibekit_telemetry_pii.detectors import Scanner

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data"

ANTHROPIC = "sk-ant-api03-" + ("Q7v2Lm9Xk3Rt8Wp1Zs4Nb6Hc0Jd5Fg2Ke7Ty9Uq3Ia1Ob8Pr4Sw6Vx0Yz2Ac5Be7Cd9Df1Eg3Fh5Gi7Hj9" * 2)[:93] + "AA"
PLANTED = {
    "EMAIL": "jane.roe@example-mail.org",
    "PHONE": "+1 415-555-0143",
    "SSN": "219-09-9998",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IP_ADDRESS": "203.0.113.77",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "API_KEY": "AKIAZ7Q2M4N6P8R0T3V5",
    "JWT": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_every_field_is_redacted_and_nothing_planted_reaches_the_database_file(in_tmp):
    with TelemetryService(security={"pii": {"enabled": True}}) as t:
        sid = t.track_start("claude", "chat", f"My email is {PLANTED['EMAIL']} and my card {PLANTED['CREDIT_CARD']}",
                            metadata={"user": {"contact": [PLANTED["PHONE"], "ok"], "ssn": PLANTED["SSN"]},
                                      "api_key": "anything-at-all", "client_ip": PLANTED["IP_ADDRESS"]})
        t.track_stream(sid, f"Transfer to {PLANTED['IBAN']} please ")
        t.track_error(sid, RuntimeError(f"auth failed for {PLANTED['API_KEY']}"))
        t.track({"category": "audit", "label": f"token {PLANTED['JWT']}", "metadata": {"password": "hunter2"}})
        t.track_end(sid)
        session = t.get_session(sid)
        start = t.query(session_id=sid, event_type="start")[0]
        label_event = t.query(category="audit")[0]
        health = t.get_health_status().components["pii"]
    assert start.prompt == "My email is [REDACTED_EMAIL] and my card [REDACTED_CREDIT_CARD]"
    assert start.metadata["user"] == {"contact": ["[REDACTED_PHONE]", "ok"], "ssn": "[REDACTED_SSN]"}
    assert start.metadata["api_key"] == "[REDACTED_SECRET]" and start.metadata["client_ip"] == "[REDACTED_IP_ADDRESS]"
    assert label_event.label == "token [REDACTED_JWT]" and label_event.metadata["password"] == "[REDACTED_SECRET]"
    counts = session.metadata["pii_redactions"]
    assert counts == {"EMAIL": 1, "CREDIT_CARD": 1, "PHONE": 1, "SSN": 1, "SECRET": 1, "IP_ADDRESS": 1, "IBAN": 1,
                      "API_KEY": 2}  # the error's message and its stack
    assert health["redactions"]["SECRET"] == 2 and health["redactions"]["JWT"] == 1
    raw = _raw_bytes(in_tmp / ".vibekit")
    for value in [*PLANTED.values(), "hunter2", "anything-at-all", "4111111111111111"]:
        assert value.encode() not in raw, value


def test_a_secret_or_address_split_across_stream_chunks_never_reaches_storage(in_tmp):
    first, second = ANTHROPIC[:30], ANTHROPIC[30:]
    with TelemetryService(security={"pii": {"enabled": True}}) as t:
        sid = t.track_start("claude", "code", "p")
        for chunk in ["Your key is ", first, second, " and mail me at jane.r", "oe@example-mail.org", " thanks"]:
            t.track_stream(sid, chunk)
        t.track_end(sid)
        events = t.query(session_id=sid, order="asc")
    text = "".join(e.stream_data or "" for e in events)
    assert text == "Your key is [REDACTED_API_KEY] and mail me at [REDACTED_EMAIL] thanks"
    assert [e.event_type for e in events].count("stream") == 6  # every chunk is still an event
    raw = _raw_bytes(in_tmp / ".vibekit")
    assert first.encode() not in raw and second.encode() not in raw and b"oe@example-mail.org" not in raw


def test_patterns_choose_detectors_and_custom_detectors_come_from_config(in_tmp):
    (in_tmp / "telemetry.toml").write_text(
        '[security.pii]\nenabled = true\npatterns = ["EMAIL"]\n'
        '[[security.pii.custom_detectors]]\nname = "EMPLOYEE_ID"\npattern = "EMP-\\\\d{6}"\n'
        '[[security.pii.custom_detectors]]\nname = "PROJECT"\npattern = "Project Falcon"\nreplacement = "[CODENAME]"\n'
    )
    with TelemetryService() as t:
        t.track({"category": "c", "prompt": "EMP-123456 on Project Falcon, a@b.co, call 415-555-0143"})
        [event] = t.query()
    assert event.prompt == "[REDACTED_EMPLOYEE_ID] on [CODENAME], [REDACTED_EMAIL], call 415-555-0143"
    with pytest.raises(ConfigError, match="unknown PII patterns"):
        TelemetryService(security={"pii": {"enabled": True, "patterns": ["EMAIL", "DNA"]}})
    with pytest.raises(ConfigError, match="invalid pattern"):
        TelemetryService(security={"pii": {"enabled": True, "custom_detectors": [{"name": "X", "pattern": "("}]}})


@pytest.mark.parametrize(("text", "expected"), [
    ("SSN 078-05-1120 is the famous invalid one, 666-12-3456 and 900-12-3456 are invalid", []),
    ("not a card: 4111 1111 1111 1112", []),
    ("versions 1.2.3.4.5 and 999.1.1.1 are not addresses", []),
    ("loopback 127.0.0.1 and ::1 say nothing about a person", []),
    ("IBAN GB82 WEST 1234 5698 7654 33 has a wrong checksum", []),
    ("placeholders sk_live_xxxxxxxxxxxxxxxxxxxx and hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", []),
    ("the meeting is on 2024-05-17 10 and costs 1234", []),
    ("IPv6 2001:db8:85a3::8a2e:370:7334 is one", ["IP_ADDRESS"]),
    ("ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5" + " leaked", ["API_KEY"]),
    ("hook https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/abcdefghijklmnopqrstuvwxyz012345678901234", ["API_KEY"]),
    ("-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEowIBAAKCAQEAq7BFUAeu" * 5 + "\n-----END RSA PRIVATE KEY-----", ["PRIVATE_KEY"]),
])
def test_validators_reject_look_alikes_and_accept_real_shapes(text, expected):
    assert [name for _, _, name in Scanner().find(text)] == expected


@pytest.mark.skipif(not (DATA / "pii").is_dir() or not (DATA / "secrets").is_dir(),
                    reason="the corpora are not at ../shared/data/pii and ../shared/data/secrets (see its README)")
def test_corpus_floors():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.pii_eval import gitleaks, synthetic
    finally:
        sys.path.remove(str(ROOT))
    scanner = PIIRedactor().scanner
    figures = synthetic(scanner)
    for name in ("EMAIL", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE"):
        assert figures[name]["recall"] >= 0.95 and figures[name]["precision"] >= 0.90, (name, figures[name])
    secrets = gitleaks(scanner)
    assert secrets["recall"] >= 0.90 and secrets["flagged_share"] <= 0.10, secrets


@pytest.mark.skipif(not (DATA / "pii" / "presidio" / "recognizer_test_cases.jsonl").exists(),
                    reason="presidio's recognizer test cases are not at ../shared/data/pii/presidio")
def test_presidio_negative_cases_are_mostly_left_alone():
    wanted = {"US_SSN": "SSN", "IP_ADDRESS": "IP_ADDRESS", "CREDIT_CARD": "CREDIT_CARD", "EMAIL_ADDRESS": "EMAIL"}
    scanner = Scanner()
    negatives = flagged = 0
    for line in (DATA / "pii" / "presidio" / "recognizer_test_cases.jsonl").open():
        case = json.loads(line)
        types = [wanted[t] for t in case["entity_types"] or () if t in wanted]
        if not types or case["expected_count"] != 0:
            continue
        negatives += 1
        flagged += any(name in types for _, _, name in scanner.find(case["text"]))
    assert negatives > 20 and flagged / negatives <= 0.15, (flagged, negatives)


def test_custom_detectors_win_over_built_in_ones_and_keep_their_flags():
    import re

    scanner = Scanner(["EMAIL", "API_KEY"], [("staff", re.compile(r"[a-z]+@corp\.example", re.IGNORECASE), "[STAFF]"),
                                             ("path", "/srv/data/", None)])
    text = "mail Jane@CORP.example or bob@home.example, files in /srv/data/x"
    assert [name for _, _, name in scanner.find(text)] == ["STAFF", "EMAIL", "PATH"]
    redacted, counts = scanner.redact(text)
    assert redacted == "mail [STAFF] or [REDACTED_EMAIL], files in [REDACTED_PATH]x"  # no flags: slashes are literal
    assert counts == {"STAFF": 1, "EMAIL": 1, "PATH": 1}
    with pytest.raises(ConfigError, match="must match text"):
        Scanner([], [("b", re.compile(rb"x"), None)])


def test_a_card_followed_by_more_digits_is_still_found():
    # the greedy pattern takes "4111 1111 1111 1111 203" (19 digits, not Luhn-valid): the card is its prefix
    scanner = Scanner()
    text = "card 4111 1111 1111 1111 203 expires"
    found = [(text[a:b], name) for a, b, name in scanner.find(text)]
    assert ("4111 1111 1111 1111", "CREDIT_CARD") in found
    # no prefix of a run that is no card becomes one
    assert all(name != "CREDIT_CARD" for *_, name in scanner.find("ref 1234 5678 9012 3456 7"))
