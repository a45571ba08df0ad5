"""Text queries answered from the full-text index in row order give exactly the pages of the time-ordered contract.

Every query here is checked against a brute-force filter and sort of every stored event in Python, and against
the plan that sorts every match (``_text_fast_path = False``), on real SQLite files whose row order is, and is
not, time order.
"""

from __future__ import annotations

import random

import attrs
import pytest

import vibekit_telemetry_sqlite
from vibekit_telemetry import QueryFilter, TelemetryEvent, TelemetryService, encode_cursor, new_id, search_words
from vibekit_telemetry_sqlite import SQLiteStorage, search

BASE = 1_700_000_000_000
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "filler", "words", "more")
CATEGORIES = ("claude", "codex", "gemini")


def _event(rng: random.Random, timestamp: int, sessions: list[str]) -> TelemetryEvent:
    def text() -> str | None:
        if rng.random() < 0.3:
            return None
        # "alpha" is in most texts, "beta" in some, "gamma" rarely; prompts and streamed text differ
        picked = [w for w, p in (("alpha", 0.7), ("beta", 0.15), ("gamma", 0.02)) if rng.random() < p]
        return " ".join(picked + rng.sample(WORDS[3:], 2))

    prompt, stream = text(), text()
    return TelemetryEvent.from_dict({
        "id": new_id(timestamp), "category": rng.choice(CATEGORIES), "timestamp": timestamp,
        "event_type": rng.choice(("start", "stream", "stream", "end")), "session_id": rng.choice(sessions),
        "prompt": prompt, "stream_data": stream, "metadata": {"tier": rng.choice(("a", "b"))},
    })


def _timestamps(kind: str, n: int, rng: random.Random) -> list[int]:
    """Timestamps in the order the events are stored."""
    if kind == "in_order":
        return [BASE + i * 10 for i in range(n)]
    if kind == "ties":  # in order, many events per millisecond
        return [BASE + i // 7 for i in range(n)]
    if kind == "jitter":  # batches of several writers interleaving: mostly in order, a little disorder everywhere
        return [BASE + i * 10 + rng.randint(-60, 60) for i in range(n)]
    if kind == "jitter_ties":  # the same, with a few events in every millisecond: equal timestamps out of row order
        return [BASE + (i + rng.randint(-40, 40)) // 8 for i in range(n)]
    if kind == "late":  # in order, then a back-filled import of old events, then a few from the future early on
        stamps = [BASE + i * 10 for i in range(n)]
        for i in range(n - n // 10, n):
            stamps[i] = BASE + rng.randint(0, n * 10)
        for i in rng.sample(range(n // 2), 5):
            stamps[i] = BASE + n * 20 + i
        return stamps
    assert kind == "shuffled"
    stamps = [BASE + i * 3 for i in range(n)]
    rng.shuffle(stamps)
    return stamps


KINDS = ("in_order", "ties", "jitter", "jitter_ties", "late", "shuffled")


@pytest.fixture(scope="module", params=KINDS)
def stored(request, tmp_path_factory):
    """A database of 1,500 events stored in batches, and those events in the order they were stored."""
    rng = random.Random(f"text-order-{request.param}")
    sessions = [f"s{i}" for i in range(8)]
    events = [_event(rng, ts, sessions) for ts in _timestamps(request.param, 1500, rng)]
    path = tmp_path_factory.mktemp(request.param) / "t.db"
    store = SQLiteStorage.open(path)
    for start in range(0, len(events), 200):
        store.store(events[start : start + 200])
    yield request.param, store, events
    store.close()


@pytest.fixture(autouse=True)
def every_text_query_is_a_many_match_query(monkeypatch):
    # with the real threshold (2,000 matches) these small databases would only ever take the few-matches plan
    monkeypatch.setattr(vibekit_telemetry_sqlite, "_FEW_MATCHES", 0)


@pytest.fixture
def fast_pages(monkeypatch):
    """What each call of ``search.text_page`` answered (a page of seqs, or None for the fallback)."""
    answers: list[list[int] | None] = []
    real = search.text_page

    def spy(*args, **kwargs):
        answers.append(real(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(search, "text_page", spy)
    return answers


def _brute_force(events: list[TelemetryEvent], f: QueryFilter) -> list[str]:
    """Ids of every page of ``f`` (limit and offset applied, no cursor), by filtering and sorting in Python."""
    words = set(search_words(f.text or ""))
    hits = []
    for seq, e in enumerate(events):
        found = set(search_words(e.prompt or "")) | set(search_words(e.stream_data or ""))
        if not words <= found:
            continue
        if f.category is not None and e.category != f.category:
            continue
        if f.event_type is not None and e.event_type != f.event_type:
            continue
        if f.session_id is not None and e.session_id != f.session_id:
            continue
        if f.session_ids and e.session_id not in f.session_ids:
            continue
        if f.since is not None and e.timestamp < f.since:
            continue
        if f.until is not None and e.timestamp > f.until:
            continue
        if any(e.metadata.get(k) != v for k, v in f.metadata.items()):
            continue
        hits.append((e.timestamp, seq, e.id))
    hits.sort(reverse=f.order == "desc")
    ids = [h[2] for h in hits]
    return ids[f.offset : None if f.limit is None else f.offset + f.limit]


def _old_plan(store: SQLiteStorage, f: QueryFilter) -> list[str]:
    store._text_fast_path = False
    try:
        return [e.id for e in store.query(f)]
    finally:
        del store._text_fast_path


def _check(store: SQLiteStorage, events: list[TelemetryEvent], **kwargs) -> list[str]:
    f = QueryFilter(**kwargs)
    got = [e.id for e in store.query(f)]
    expected = _brute_force(events, f)
    assert got == expected, kwargs
    assert _old_plan(store, f) == expected, kwargs
    return got


def _mid(events: list[TelemetryEvent], fraction: float) -> int:
    stamps = sorted(e.timestamp for e in events)
    return stamps[int(len(stamps) * fraction)]


QUERIES = [
    {"text": "alpha", "limit": 1},
    {"text": "alpha", "limit": 25},
    {"text": "alpha", "limit": 25, "order": "asc"},
    {"text": "alpha", "limit": 10, "offset": 40},
    {"text": "alpha", "limit": 10, "offset": 40, "order": "asc"},
    {"text": "beta", "limit": 50},
    {"text": "beta alpha", "limit": 30},
    {"text": "gamma", "limit": 100},  # more than match: the whole, sorted
    {"text": "gamma", "limit": 100, "order": "asc", "offset": 3},
    {"text": "alpha", "limit": 20, "category": "codex"},
    {"text": "alpha", "limit": 20, "event_type": "end", "order": "asc"},
    {"text": "beta", "limit": 15, "session_id": "s3"},
    {"text": "alpha", "limit": 15, "session_ids": ("s1", "s2")},
    {"text": "alpha", "limit": 20, "metadata": {"tier": "b"}},
    {"text": "alpha", "limit": 20, "category": "gemini", "metadata": {"tier": "a"}, "order": "asc"},
    {"text": "alpha", "limit": 0},
    {"text": "nowhere", "limit": 10},
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: ",".join(f"{k}={v}" for k, v in q.items()))
def test_pages_equal_the_brute_force_answer(stored, query, fast_pages):
    kind, store, events = stored
    got = _check(store, events, **query)
    if query.get("limit"):
        assert got or query["text"] == "nowhere"
    if kind == "in_order" and query["text"] != "nowhere":
        assert fast_pages and fast_pages[0] is not None, "in time order the index's row order answers"


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("window", [(0.2, 0.6), (None, 0.3), (0.7, None)])
def test_time_ranges(stored, order, window):
    _, store, events = stored
    since, until = (None if w is None else _mid(events, w) for w in window)
    for text, limit in (("alpha", 20), ("beta", 7), ("gamma", 50)):
        _check(store, events, text=text, limit=limit, order=order, since=since, until=until)
        _check(store, events, text=text, limit=limit, order=order, since=since, until=until, category="claude")
    earliest, latest = min(e.timestamp for e in events), max(e.timestamp for e in events)
    assert _check(store, events, text="alpha", limit=5, order=order, until=earliest - 1) == []
    assert _check(store, events, text="alpha", limit=5, order=order, since=latest + 1) == []


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(("text", "limit", "extra"), [
    ("alpha", 37, {}), ("beta", 9, {}), ("alpha", 11, {"category": "codex"}),
    ("alpha beta", 5, {"metadata": {"tier": "a"}}),
])
def test_cursor_pages_walk_every_match_once_in_order(stored, order, text, limit, extra):
    _, store, events = stored
    whole = _brute_force(events, QueryFilter(text=text, order=order, **extra))
    seen: list[str] = []
    cursor = None
    while True:
        f = QueryFilter(text=text, limit=limit, order=order, cursor=cursor, **extra)
        page = store.query(f)
        assert [e.id for e in page] == whole[len(seen) : len(seen) + limit]
        assert [e.id for e in page] == _old_plan(store, f)
        seen += [e.id for e in page]
        if len(page) < limit:
            break
        cursor = encode_cursor(page[-1])
    assert seen == whole


def test_count_counts_every_match(stored):
    _, store, events = stored
    for kwargs in ({"text": "alpha"}, {"text": "beta", "category": "claude"}, {"text": "gamma", "order": "asc"}):
        assert store.count(QueryFilter(**kwargs)) == len(_brute_force(events, QueryFilter(**kwargs)))


def test_a_word_only_in_prompts_or_only_in_streamed_text(tmp_path):
    store = SQLiteStorage.open(tmp_path / "t.db")
    try:
        events = []
        for i in range(300):
            field = "prompt" if i % 3 == 0 else "stream_data"
            word = "promptword" if field == "prompt" else "streamword"
            events.append(TelemetryEvent.from_dict({"category": "c", "timestamp": BASE + (i * 7919) % 300,
                                                    field: f"{word} both {i}"}))
        store.store(events)
        for text in ("promptword", "streamword", "both", "promptword streamword"):
            for order in ("desc", "asc"):
                got = _check(store, events, text=text, limit=40, order=order)
                assert len(got) == {"promptword": 40, "streamword": 40, "both": 40}.get(text, 0)
    finally:
        store.close()


def test_the_check_catches_a_late_event_that_sorts_first(tmp_path, fast_pages):
    # rows 1..300 in time order, then one event stamped before all of them: oldest first, it is the first result,
    # although it is the last row; newest first, an early row stamped last must lead the page
    store = SQLiteStorage.open(tmp_path / "t.db")
    try:
        events = [TelemetryEvent.from_dict({"category": "c", "timestamp": BASE + 10 * i, "prompt": f"word {i}"})
                  for i in range(1, 301)]
        early = TelemetryEvent.from_dict({"category": "c", "timestamp": BASE + 10_000, "prompt": "word early"})
        events.insert(5, early)
        events.append(TelemetryEvent.from_dict({"category": "c", "timestamp": BASE, "prompt": "word late"}))
        for start in range(0, len(events), 50):
            store.store(events[start : start + 50])
        assert _check(store, events, text="word", limit=10, order="asc")[0] == events[-1].id
        assert _check(store, events, text="word", limit=10)[0] == events[5].id
        assert all(page is not None for page in fast_pages), "a few late events are checked, not a reason to sort"
    finally:
        store.close()


@pytest.mark.parametrize(("stamps", "order", "bound"), [
    # newest first up to 200: the walk starts at the second row (the newest at or before 200) and reads down; the
    # third row is above it, and ties with the page's last event (the first row) but sorts ahead of it by seq
    ((100, 200, 100, 300), "desc", {"until": 200}),
    # oldest first from 50: the walk starts at the second row and reads up; the first row, below it, ties the last
    ((100, 50, 100, 10), "asc", {"since": 50}),
])
def test_an_equal_timestamp_outside_the_walk_sorts_by_seq(tmp_path, fast_pages, stamps, order, bound):
    store = SQLiteStorage.open(tmp_path / "t.db")
    try:
        events = [TelemetryEvent.from_dict({"category": "c", "timestamp": BASE + ts, "prompt": "word"})
                  for ts in stamps]
        store.store(events)
        bound = {k: BASE + v for k, v in bound.items()}
        for limit in (1, 2, 3, 4):
            _check(store, events, text="word", limit=limit, order=order, **bound)
        assert all(page is not None for page in fast_pages)
    finally:
        store.close()


@pytest.mark.parametrize("budget", ["_walk_budget", "_window_budget", "_suspect_budget", "_span_budget"])
def test_over_budget_the_sorting_plan_answers(stored, monkeypatch, fast_pages, budget):
    _, store, events = stored
    monkeypatch.setattr(search, budget, lambda want: 0)
    for query in QUERIES[:12]:
        _check(store, events, **query)


@pytest.mark.parametrize(("ranges", "gap"), [(3, 2), (16, 0)])
def test_suspects_read_as_several_rowid_ranges(stored, monkeypatch, ranges, gap):
    # these databases are too small for the real gap (2,000 rowids) to split the suspects
    _, store, events = stored
    monkeypatch.setattr(search, "_RANGES", ranges)
    monkeypatch.setattr(search, "_GAP", gap)
    for query in QUERIES:
        _check(store, events, **query)


def test_text_queries_see_events_stored_since_the_last_query(tmp_path):
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db")}}],
                          data_dir=str(tmp_path)) as telemetry:
        for i in range(50):
            telemetry.track({"category": "c", "prompt": f"needle {i}", "timestamp": BASE + i})
        assert len(telemetry.query(text="needle", limit=10)) == 10
        telemetry.track({"category": "c", "prompt": "needle newest", "timestamp": BASE + 1000})
        telemetry.track({"category": "c", "prompt": "needle oldest", "timestamp": BASE - 1000})
        telemetry.flush()
        assert telemetry.query(text="needle", limit=3)[0].prompt == "needle newest"
        assert telemetry.query(text="needle", limit=3, order="asc")[0].prompt == "needle oldest"
        page = telemetry.query_page(text="needle", limit=20)
        rest = telemetry.query_page(text="needle", limit=100, cursor=page.next_cursor)
        assert len(page.events) + len(rest.events) == 52


def test_the_page_is_checked_against_the_filter_and_the_word(stored):
    # the events handed back must each match: a page of the fast plan is a list of rows the final SELECT trusts
    _, store, events = stored
    by_id = {e.id: e for e in events}
    for kwargs in ({"text": "beta", "limit": 40, "category": "claude"}, {"text": "alpha gamma", "limit": 40}):
        f = QueryFilter(**kwargs)
        for event in store.query(f):
            assert attrs.evolve(f, text=None).matches(by_id[event.id])
            assert set(search_words(f.text)) <= set(search_words(f"{event.prompt} {event.stream_data}"))
