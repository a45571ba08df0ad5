"""The checkers compiled per dict shape agree with the general checker on everything, valid or not."""

from __future__ import annotations

import math
import threading
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibekit_telemetry import InvalidEventError, model
from vibekit_telemetry.model import ROW_FIELDS, _general_row, _shape_checker, checked_row


class Text(str):
    pass


class Number(int):
    pass


#: values near every limit the checkers draw, and of every kind a caller might pass
TRICKY_STRINGS = ["", "a", "chat", "x" * 256, "x" * 257, "with space", "tab\tin", "line\nbreak", "caf\u00e9",
                  "\ud800", "\u2028", "\x7f", "\x85", "start", "stream", "end", "error", "custom", Text("chat"),
                  "0123456789abcdef", "2026-01-01T00:00:00Z"]
TRICKY_NUMBERS = [0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 0.5, math.nan, math.inf,
                  -math.inf, True, False, Number(3), 946_684_800_000, 946_684_799_999, 7_258_118_400_000,
                  7_258_118_400_001, 1_790_000_000_000, 1_790_000_000_000.0]
_STRINGS = st.sampled_from(TRICKY_STRINGS) | st.text(max_size=12)
_NUMBERS = st.sampled_from(TRICKY_NUMBERS)
_SCALARS = _STRINGS | _NUMBERS | st.none() | st.integers() | st.floats()
_METADATA = st.one_of(
    st.dictionaries(st.sampled_from(["model", "chunk", "k\u00e9", "\ud800", "temperature"]), _SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(["nested", "list"]), st.lists(st.integers(), max_size=2) |
                    st.dictionaries(st.just("a"), st.integers(), max_size=1), max_size=2),
    st.builds(lambda d: {1: d}, st.integers()),  # a key that is not a string
    st.builds(MappingProxyType, st.dictionaries(st.just("a"), st.integers(), max_size=1)),
    st.just({}), st.just([]), st.just("{}"),
)
#: what a well-behaved caller sends for each field: most drawn events are valid up to one odd value
_GOOD_NAMES = st.sampled_from(["chat", "a", "gpt-4.1", "x" * 256])
_GOOD_IDS = st.sampled_from(["s1", "0123456789abcdef", "x" * 256])
_GOOD_TEXT = st.sampled_from(["", "chunk", "caf\u00e9 \u2028 \U0001f600", "line\nbreak"])
_GOOD = {"id": _GOOD_IDS, "session_id": _GOOD_IDS, "parent_session_id": _GOOD_IDS,
         "event_type": st.sampled_from(["start", "stream", "end", "error", "custom"]), "category": _GOOD_NAMES,
         "action": _GOOD_NAMES, "label": _GOOD_NAMES, "agent": _GOOD_NAMES, "mode": _GOOD_NAMES, "status": _GOOD_NAMES,
         "error_type": _GOOD_NAMES, "prompt": _GOOD_TEXT, "stream_data": _GOOD_TEXT, "error_message": _GOOD_TEXT,
         "error_stack": _GOOD_TEXT, "value": st.sampled_from([0, 1.5, -3]), "timestamp": st.just(1_790_000_000_000),
         "metadata": st.dictionaries(st.sampled_from(["model", "chunk", "k\u00e9", "temperature"]),
                                     st.sampled_from(["m", 1, 0.2, True, None, "caf\u00e9", 2**53, 2**63, math.nan]),
                                     max_size=3),
         "truncated": st.just(()), "sessionId": _GOOD_IDS, "eventType": st.just("custom"), "bogus": st.just(1)}
_VALUES = {"id": _STRINGS, "session_id": _STRINGS, "parent_session_id": _STRINGS, "event_type": _STRINGS,
           "category": _STRINGS, "action": _STRINGS, "label": _STRINGS, "agent": _STRINGS, "mode": _STRINGS,
           "status": _STRINGS, "error_type": _STRINGS, "prompt": _STRINGS, "stream_data": _STRINGS,
           "error_message": _STRINGS, "error_stack": _STRINGS, "value": _SCALARS, "timestamp": _NUMBERS | _STRINGS,
           "metadata": _METADATA, "truncated": st.just(()) | st.just(["prompt"]), "sessionId": _STRINGS,
           "eventType": _STRINGS, "bogus": _SCALARS}


@pytest.fixture(autouse=True)
def _fresh_shapes(monkeypatch):
    """Each test learns its shapes anew (the drawn ones would fill the process's cache otherwise)."""
    monkeypatch.setattr(model, "_SHAPES", {False: {}, True: {}})


@st.composite
def event_dicts(draw):
    keys = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True, max_size=9))
    if draw(st.booleans()):  # most events name a category
        keys = ["category", *[k for k in keys if k != "category"]]
    odd = draw(st.sampled_from([None, *keys]))  # one field (or none) drawn from anything, the rest well-behaved
    return {key: draw(_VALUES[key] if key == odd else _GOOD[key]) for key in keys}


def _outcome(check, data, pack):
    try:
        row = check(data, True, pack)
    except InvalidEventError as exc:
        return ("error", exc.field, str(exc))
    # the id and a defaulted time are made anew for each call: compare the rest, and that they are made
    assert type(row[0]) is str and type(row[7]) is int
    given = {key for key, value in data.items() if value is not None}
    return ("row", row[0] if "id" in given else None, row[1:7], row[7] if "timestamp" in given else None, row[8:])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_dicts(), st.booleans())
def test_a_compiled_checker_returns_what_the_general_checker_returns(data, pack):
    assert _outcome(checked_row, dict(data), pack) == _outcome(_general_row, dict(data), pack)
    assert _outcome(checked_row, dict(data), pack) == _outcome(_general_row, dict(data), pack)  # now compiled


TRICKY_METADATA = [{}, {"a": None}, {"a": "caf\u00e9"}, {"k\u00e9": 1}, {"a": "\ud800"}, {"\ud800": 1}, {1: 1},
                   {"a": 2**53}, {"a": 2**53 + 1}, {"a": 2**63}, {"a": math.nan}, {"a": -math.inf}, {"a": [1]},
                   {"a": {"b": 1}}, {"a": Text("t")}, {"a": Number(1)}, {Text("k"): 1}, {"a": (1, 2)},
                   MappingProxyType({"a": 1}), [], "{}"]


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("field", sorted(_VALUES))
def test_every_odd_value_of_every_field_gets_the_general_answer(field, pack):
    """Each field of a valid event given each value near a limit, one at a time: the same answer both ways."""
    base = {"event_type": "stream", "session_id": "s1", "category": "chat", "stream_data": "chunk",
            "timestamp": 1_790_000_000_000, "metadata": {"model": "m"}}
    for value in [*TRICKY_STRINGS, *TRICKY_NUMBERS, None, *TRICKY_METADATA]:
        for data in ({**base, field: value}, {"category": "chat", field: value}):
            assert _outcome(checked_row, dict(data), pack) == _outcome(_general_row, dict(data), pack), (field, value)
            assert _outcome(checked_row, dict(data), pack) == _outcome(_general_row, dict(data), pack), (field, value)


def test_the_common_shapes_are_compiled_and_give_the_queue_its_row():
    data = {"event_type": "stream", "session_id": "s1", "category": "chat", "stream_data": "chunk",
            "timestamp": 1_790_000_000_000, "metadata": {"model": "m", "chunk": 1, "temperature": 0.5}}
    row = checked_row(data, True, True)
    assert model._SHAPES[True][tuple(data)] is not None  # this shape has its own checker now
    assert dict(zip(ROW_FIELDS, row)) == {
        "id": row[0], "session_id": "s1", "event_type": "stream", "category": "chat", "action": None, "label": None,
        "value": None, "timestamp": 1_790_000_000_000, "agent": None, "mode": None, "prompt": None,
        "parent_session_id": None, "stream_data": "chunk", "status": None, "error_type": None, "error_message": None,
        "error_stack": None, "metadata": '{"model":"m","chunk":1,"temperature":0.5}', "truncated": ()}
    unpacked = checked_row(data, True, False)
    assert unpacked[17] is data["metadata"]  # as the general path keeps it
    assert checked_row({"category": "c"}, True, False)[17] == {}
    assert checked_row({"category": "c"}, True, False)[17] is not checked_row({"category": "c"}, True, False)[17]
    assert checked_row({"category": "c"}, True, True)[2:4] == ("custom", "c")


def test_a_shape_the_general_path_must_decide_is_not_compiled():
    assert _shape_checker(("session_id", "stream_data"), True) is None  # no category: an error to explain
    assert _shape_checker(("category", "truncated"), True) is None
    assert _shape_checker(("category", "session_id", "sessionId"), True) is None  # one field named twice


def test_shapes_with_unknown_keys_are_not_kept():
    for i in range(50):
        with pytest.raises(InvalidEventError, match="unknown field"):
            checked_row({"category": "c", f"junk{i}": 1}, True, True)
    assert model._SHAPES == {False: {}, True: {}}  # a hostile client cannot grow the cache


def test_past_the_limit_new_shapes_take_the_general_path(monkeypatch):
    monkeypatch.setattr(model, "_SHAPE_LIMIT", 1)
    checked_row({"category": "c"}, True, True)
    row = checked_row({"category": "c", "label": "l"}, True, True)
    assert row[3:6] == ("c", None, "l")
    assert list(model._SHAPES[True]) == [("category",)]


def test_a_dict_changed_by_another_thread_meanwhile_is_still_checked():
    data = {"category": "c", "label": "l"}
    checked_row(data, True, True)
    check = model._SHAPES[True][("category", "label")]
    data["action"] = "a"  # the shape the checker was chosen for is gone
    assert check(data) is None  # the general path decides
    assert checked_row(data, True, True)[3:6] == ("c", "a", "l")
    # as many keys, other ones: never a value in another field's place
    ended = {"category": "c", "event_type": "end", "session_id": "s1"}
    checked_row(ended, True, True)
    check = model._SHAPES[True][tuple(ended)]
    assert check({"category": "c", "event_type": "end", "label": "l"}) is None
    with pytest.raises(InvalidEventError, match="session_id"):
        checked_row({"category": "c", "event_type": "end", "label": "l"}, True, True)


def test_error_shapes_do_not_fill_the_cache():
    for keys in [("session_id", "label"), ("label", "session_id"), ("category", "sessionId", "session_id"),
                 ("category", "truncated")]:
        data = dict.fromkeys(keys, "x")
        try:
            checked_row(data, True, True)
        except InvalidEventError:
            pass
    assert model._SHAPES[True] == {}  # a client sending error shapes leaves room for real ones


def test_ids_are_unique_and_in_order_across_threads():
    ids: list[list[str]] = [[] for _ in range(4)]

    def make(out):
        for _ in range(5000):
            out.append(checked_row({"category": "c"}, True, True)[0])

    threads = [threading.Thread(target=make, args=(out,)) for out in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in ids for i in out]
    assert len(set(every)) == len(every)
    for out in ids:
        assert out == sorted(out)  # one thread's ids sort in the order it made them
