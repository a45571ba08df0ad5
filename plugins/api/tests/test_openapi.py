"""The OpenAPI document and the server agree: a body the schema allows is taken, one it refuses gets 422.

Each sample body is checked twice, with an OpenAPI 3.0 schema validator against
the document the running server serves, and by posting it to that server.
"""

from __future__ import annotations

import openapi_schema_validator
import pytest

MIN_MS, MAX_MS = 946_684_800_000, 7_258_118_400_000

#: bodies either side of what the model has always checked: types, names, required fields, null
EVENTS = [
    {"category": "x"},
    {"category": "x", "id": None, "event_type": None, "session_id": None, "action": None, "label": None,
     "value": None, "timestamp": None, "metadata": None, "agent": None, "prompt": None, "truncated": None},
    {"category": "x", "timestamp": "2025-05-01T12:00:00Z"},
    {"category": "x", "timestamp": 1_746_100_800_000.5},
    {"category": "x", "eventType": "custom", "streamData": "camelCase names are the seed's"},
    {"category": "x", "value": 2.5, "metadata": {"model": "m", "n": 3}},
    {"category": None},
    {},
    {"category": ""},
    {"category": "x", "timestamp": True},
    {"category": "x", "value": "3"},
    {"category": "x", "event_type": "bogus"},
    {"category": "x", "colour": "red"},
    {"category": "x", "metadata": [1, 2]},
    {"category": "x", "id": 7},
]
#: bodies either side of what the kernel's gate refuses (issue 14 item 1): these need it
GATED_EVENTS = [
    {"category": "x", "timestamp": MIN_MS},
    {"category": "x", "timestamp": MAX_MS},
    {"category": "x", "timestamp": MIN_MS - 1},
    {"category": "x", "timestamp": MAX_MS + 1},
    {"category": "x", "timestamp": 1e20},
    {"category": "x", "id": "has a space"},
    {"category": "x", "id": "i" * 256},
    {"category": "x", "id": "i" * 257},
    {"category": "line\nbreak"},
    {"category": "c" * 256},
    {"category": "c" * 257},
]
SESSION_STARTS = [
    {"agent": "claude"},
    {"agent": "claude", "mode": None, "prompt": None, "metadata": None, "session_id": None,
     "parent_session_id": None, "timestamp": None},
    {"agent": "claude", "timestamp": "2025-05-01T12:00:00Z"},
    {"agent": None},
    {"agent": "claude", "metadata": "not an object"},
    {"agent": "claude", "colour": 1},
    {"agent": "claude", "timestamp": 1.5},
]
GATED_SESSION_STARTS = [
    {"agent": "claude", "timestamp": MAX_MS + 1},
    {"agent": "claude", "session_id": "has a space"},
]
SESSION_ENDS = [{}, {"status": None, "metadata": None, "timestamp": None}, {"status": "failed"},
                {"status": "exploded"}, {"metadata": 3}]


@pytest.fixture
def served(api):
    service, _, client = api
    document = client.get("/openapi.json").json()
    return service, client, document["components"]["schemas"]


def _schema_allows(schema, body) -> bool:
    return openapi_schema_validator.OAS30Validator(schema).is_valid(body)


def _check(client, schemas, name, bodies, post):
    disagree = []
    for body in bodies:
        allowed = _schema_allows(schemas[name], body)
        status = post(client, body)
        taken = status in (201, 202)
        if allowed != taken or not taken and status != 422:
            disagree.append(f"{body!r:.120}: the schema {'allows' if allowed else 'refuses'} it, the server said {status}")
    assert not disagree, "\n".join(disagree)


def _post_event(client, body):
    return client.post("/api/events", json=body).status_code


def _post_session(client, body):
    return client.post("/api/sessions", json=body).status_code


def test_event_bodies(served):
    _, client, schemas = served
    _check(client, schemas, "Event", EVENTS, _post_event)


def test_event_bodies_at_the_gate(served):
    _, client, schemas = served
    _check(client, schemas, "Event", GATED_EVENTS, _post_event)


def test_session_bodies(served):
    _, client, schemas = served
    _check(client, schemas, "SessionStart", SESSION_STARTS, _post_session)
    _check(client, schemas, "SessionStart", GATED_SESSION_STARTS, _post_session)
    sid = client.post("/api/sessions", json={"agent": "claude"}).json()["session_id"]
    _check(client, schemas, "SessionEnd", SESSION_ENDS,
           lambda c, body: c.post(f"/api/sessions/{sid}/end", json=body).status_code)


def test_the_documented_bounds_are_the_kernels(served):
    from vibekit_telemetry import model

    _, _, schemas = served
    properties = schemas["Event"]["properties"]
    epoch_ms = properties["timestamp"]["oneOf"][0]
    assert (epoch_ms["minimum"], epoch_ms["maximum"]) == (model.MIN_TIMESTAMP_MS, model.MAX_TIMESTAMP_MS)
    assert properties["id"]["pattern"] == f"^[!-~]{{1,{model.MAX_ID_LENGTH}}}$"
    assert properties["category"]["maxLength"] == model.MAX_NAME_LENGTH
