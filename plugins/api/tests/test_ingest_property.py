"""A property of ``POST /api/events``: whatever JSON a client sends, what was acknowledged is stored exactly once.

Hypothesis throws arbitrary JSON-like events (out-of-range numbers, lone surrogates in escapes, wrong types,
unknown keys) at a real server; after each example the service's books must balance
(``accepted = stored + queued + spilled + buffered + held + sampled_out + dropped``) and every id the
server acknowledged with 202 must be stored once.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibekit_telemetry import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, TelemetryService

_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_json = st.recursive(
    _scalar,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_hostile = st.sampled_from([10**20, 2**63, 2**64, -(2**63) - 1, 1e20, 1.7e12, 1e300, "1h", "", "x\nevent: anomaly",
                            "\ud800", {"n": 2**64}, {"deep": [{"x": 2**70}]}])
# mostly well-formed events, so that many reach the pipeline, each with a field or two made hostile
_valid = st.fixed_dictionaries(
    {"category": st.sampled_from(["prop", "chat", "tool"]), "value": st.integers(-10**6, 10**6),
     "metadata": st.dictionaries(st.sampled_from(["model", "n", "tag"]), _scalar, max_size=3)},
    optional={"timestamp": st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS), "prompt": st.text(max_size=40),
              "label": st.text(max_size=20)},
)
_overlay = st.dictionaries(
    st.sampled_from(["value", "timestamp", "metadata", "prompt", "label", "id", "session_id", "event_type",
                     "category", "sessionId", "bogus"]),
    st.one_of(_json, _hostile), max_size=2,
)
_event = st.one_of(_valid, st.builds(lambda base, extra: {**base, **extra}, _valid, _overlay))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("ingest-property")
    service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path / "p.db")}}],
                               data_dir=str(path / "data"))
    api = service.start_api_server(port=0, rate_limit={"enabled": False})
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield service, client
    service.shutdown()


def _encode(body) -> bytes:
    # the standard library writes lone surrogates as \\ud800 escapes, as a hostile client would
    return json.dumps(body, ensure_ascii=True).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_event, min_size=1, max_size=20), single=st.booleans())
def test_what_the_api_acknowledged_is_stored_exactly_once_and_the_books_balance(server, batch, single):
    service, client = server
    acknowledged: list[str] = []
    bodies = list(batch) if single else [batch]  # one event per request, or the list in one request
    for body in bodies:
        response = client.post("/api/events", content=_encode(body), headers={"content-type": "application/json"})
        assert response.status_code in (202, 400, 413, 422), response.text
        if response.status_code == 202:
            answer = response.json()
            acknowledged.extend(answer["ids"])
            assert answer["accepted"] == len(answer["ids"]) and not answer["not_accepted"]
    service.flush()
    counters = service.get_health_status().counters
    parts = ("stored", "queued", "spilled", "buffered", "held", "sampled_out", "dropped")
    assert counters["accepted"] == sum(counters[p] for p in parts), counters
    assert counters["dropped"] == 0, counters["dropped_by_reason"]
    stored = [e.id for e in service.iter_events()]
    assert len(stored) == len(set(stored))
    assert set(acknowledged) <= set(stored)
