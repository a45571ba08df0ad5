"""A conformance suite for storage plugins, reusable by third parties.

Subclass :class:`StorageContract` in your plugin's tests and provide a
``make_service`` fixture that returns a factory building a
:class:`~vibekit_telemetry.TelemetryService` whose first storage is your
plugin (called with keyword overrides, e.g. ``stream_batch_size``).  Every
test here then runs against your plugin.  Requires pytest.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .model import QueryFilter, TelemetryEvent
from .hookspecs import hookimpl
from .service import TelemetryService
from .times import now_ms


class StorageContract:
    """What every storage plugin must do: store, query, summarise sessions, page, clean."""

    @pytest.fixture
    def make_service(self) -> Any:  # pragma: no cover - the subclass provides it
        raise NotImplementedError("provide a make_service fixture returning a factory of TelemetryService")

    @pytest.fixture
    def service(self, make_service: Any) -> Any:
        svc = make_service()
        yield svc
        svc.shutdown()

    def _seed(self, service: TelemetryService, base: int) -> dict[str, str]:
        ids = {}
        ids["a"] = service.track_start("claude", "code", "fix the parser bug", timestamp=base,
                                       metadata={"model": "claude-sonnet-4-5"})
        for i in range(3):
            service.track_stream(ids["a"], f"chunk {i} of the answer", timestamp=base + 100 + i * 10,
                                 metadata={"chunk": i})
        service.track_end(ids["a"], "completed", timestamp=base + 500,
                          metadata={"input_tokens": 120, "output_tokens": 30, "cache_read_tokens": 100})
        ids["b"] = service.track_start("gpt", "chat", "hello world", timestamp=base + 1000, metadata={"model": "gpt-4o"})
        service.track_error(ids["b"], error_type="Timeout", message="took too long", timestamp=base + 1200)
        service.track_end(ids["b"], "failed", timestamp=base + 1300)
        service.track({"event_type": "custom", "category": "user-action", "action": "click", "value": 1,
                       "timestamp": base + 2000, "metadata": {"button": "submit", "n": 3, "flag": True}})
        return ids

    def test_reads_see_every_tracked_event(self, service: TelemetryService) -> None:
        base = now_ms() - 10_000
        self._seed(service, base)
        assert len(service.query()) == 9

    def test_session_summary(self, service: TelemetryService) -> None:
        base = now_ms() - 10_000
        ids = self._seed(service, base)
        a = service.get_session(ids["a"])
        assert a is not None
        assert (a.status, a.agent, a.mode, a.prompt) == ("completed", "claude", "code", "fix the parser bug")
        assert (a.started_at, a.ended_at, a.duration_ms, a.ttft_ms) == (base, base + 500, 500, 100)
        assert (a.event_count, a.stream_count, a.error_count) == (5, 3, 0)
        assert a.tokens.input == 120 and a.tokens.output == 30 and a.tokens.cache_read == 100
        assert a.tokens.total == 150
        assert a.metadata["model"] == "claude-sonnet-4-5"
        b = service.get_session(ids["b"])
        assert b is not None and b.status == "failed" and b.error_count == 1 and b.last_error == "took too long"
        assert service.get_session("no-such-session") is None

    def test_filters(self, service: TelemetryService) -> None:
        base = now_ms() - 10_000
        ids = self._seed(service, base)
        assert [e.event_type for e in service.query(category="claude", event_type="stream")] == ["stream"] * 3
        assert len(service.query(session_id=ids["b"])) == 3
        assert len(service.query(session_ids=[ids["a"], ids["b"]])) == 8
        assert len(service.query(since=base + 1000, until=base + 1300)) == 3
        assert [e.action for e in service.query(metadata={"button": "submit"})] == ["click"]
        assert len(service.query(metadata={"n": 3, "flag": True})) == 1
        assert service.query(metadata={"n": 4}) == []
        assert len(service.query(action="click", label=None)) == 1

    def test_order_limit_offset_and_cursor(self, service: TelemetryService) -> None:
        base = now_ms() - 10_000
        self._seed(service, base)
        newest = service.query(limit=3)
        assert [e.timestamp for e in newest] == sorted((e.timestamp for e in newest), reverse=True)
        assert newest[0].timestamp == base + 2000
        oldest = service.query(order="asc", limit=2, offset=1)
        assert [e.timestamp for e in oldest] == [base + 100, base + 110]
        seen: list[str] = []
        cursor = None
        while True:
            page = service.query_page(limit=4, cursor=cursor, order="asc")
            seen.extend(e.id for e in page.events)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 9
        assert [e.id for e in service.iter_events(page_size=2)] == seen

    def test_text_search(self, service: TelemetryService) -> None:
        self._seed(service, now_ms() - 10_000)
        assert {e.event_type for e in service.query(text="parser")} == {"start"}
        assert len(service.query(text="answer chunk")) == 3
        assert service.query(text="nothing-like-this") == []
        assert service.query(text="answ") == [], "words match whole, in every store"
        assert len(service.query(text="ANSWER, chunk!")) == 3

    def test_get_sessions(self, service: TelemetryService) -> None:
        base = now_ms() - 10_000
        ids = self._seed(service, base)
        assert [s.id for s in service.get_sessions()] == [ids["b"], ids["a"]]
        assert [s.id for s in service.get_sessions(status="failed")] == [ids["b"]]
        assert [s.id for s in service.get_sessions(agent="claude")] == [ids["a"]]
        assert [s.id for s in service.get_sessions(order="asc", limit=1)] == [ids["a"]]

    def test_sort_search_and_count_sessions(self, service: TelemetryService) -> None:
        base = now_ms() - 100_000
        made = []
        for i, (prompt, length, tokens) in enumerate([("Fix the Parser", 5_000, 10), ("write docs", 1_000, 300),
                                                       ("parser tests", 9_000, 20), ("open", None, 0)]):
            sid = service.track_start("claude" if i % 2 else "gpt", "chat", prompt, timestamp=base + i * 10)
            if length is not None:
                service.track_end(sid, timestamp=base + i * 10 + length,
                                  metadata={"input_tokens": tokens, "output_tokens": 1})
            made.append(sid)
        assert [s.id for s in service.get_sessions(sort="duration_ms")] == [made[2], made[0], made[1], made[3]]
        assert [s.id for s in service.get_sessions(sort="duration_ms", order="asc")] == [made[3], made[1], made[0], made[2]]
        assert [s.id for s in service.get_sessions(sort="tokens", limit=2)] == [made[1], made[2]]
        assert [s.id for s in service.get_sessions(sort="agent", order="asc", limit=2)] == [made[1], made[3]]
        assert {s.id for s in service.get_sessions(text="PARSER")} == {made[0], made[2]}
        assert service.count_sessions() == 4
        assert service.count_sessions(text="parser", limit=1, offset=1) == 2
        assert service.count_sessions(agent="claude") == 2
        assert service.count_sessions(text="no such prompt") == 0

    def test_session_tree(self, service: TelemetryService) -> None:
        with service.session("agent", "plan", "top") as top:
            with service.session("llm", "call", "inner") as inner:
                with service.session("tool", "run", "leaf"):
                    pass
        tree = service.get_session(top.id, tree=True)
        assert tree is not None and [c.id for c in tree.children] == [inner.id]
        assert tree.children[0].children[0].agent == "tool"
        assert [s.id for s in service.get_sessions(parent_id=top.id)] == [inner.id]
        assert top.id in {s.id for s in service.get_sessions(root_only=True)}

    def test_duplicate_ids_are_stored_once(self, service: TelemetryService) -> None:
        event = TelemetryEvent(event_type="stream", category="c", session_id="s1", stream_data="x")
        service.track(event)
        service.flush()
        service.track(event)
        service.track(TelemetryEvent(event_type="start", category="c", session_id="s1"))
        assert len(service.query(session_id="s1")) == 2
        assert service.get_session("s1").event_count == 2

    def test_batches_out_of_order(self, make_service: Any) -> None:
        service = make_service(stream_batch_size=1)
        try:
            base = now_ms() - 5000
            service.track_end("s", "completed", category="c", timestamp=base + 900)
            service.track_stream("s", "late", category="c", timestamp=base + 300)
            service.track_start("c", "m", "p", session_id="s", timestamp=base)
            session = service.get_session("s")
            assert (session.status, session.duration_ms, session.ttft_ms, session.event_count) == ("completed", 900, 300, 3)
        finally:
            service.shutdown()

    def test_clean(self, service: TelemetryService) -> None:
        old = now_ms() - 10 * 86_400_000
        service.track({"event_type": "custom", "category": "old", "timestamp": old})
        service.track({"event_type": "custom", "category": "new"})
        assert service.clean(5) == 1
        assert [e.category for e in service.query()] == ["new"]

    def test_concurrent_tracking_threads(self, service: TelemetryService) -> None:
        def work(n: int) -> None:
            for i in range(500):
                service.track({"event_type": "custom", "category": f"t{n}", "value": i})

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(service.query(QueryFilter(limit=None))) == 2000
        health = service.get_health_status()
        assert health.counters["stored"] == 2000 and health.counters["dropped"] == 0


def _rows_in_export(data: bytes, format: str, service: TelemetryService) -> list[dict[str, Any]]:
    """The events of an export in the order it holds them, read by the format's importer (already loaded)."""
    import io

    reader = service.host.first("import_events", format=format, input=io.BytesIO(data), options={})[1]
    return [dict(row) for row in reader]


class FormatContract:
    """What every export format plugin must do: stream out, read back the same events, compressed or not.

    Subclass it with ``format = "<name>"`` (and ``exact_empty_strings = False`` for a format that
    cannot tell an empty string from a missing value in top-level fields).  Requires pytest.
    """

    format: str = ""
    exact_empty_strings: bool = True

    @pytest.fixture
    def make_service(self, tmp_path: Any) -> Any:
        made: list[TelemetryService] = []

        def make(name: str = "source") -> TelemetryService:
            service = TelemetryService(data_dir=str(tmp_path / name), service_name="format-contract")
            made.append(service)
            return service

        yield make
        for service in made:
            service.shutdown()

    def _seed(self, service: TelemetryService) -> None:
        base = now_ms() - 60_000
        sid = service.track_start("claude", "code", "Réparer le bug 🐛 — 修复错误, \"quoted\", comma, new\nline",
                                  timestamp=base, metadata={"model": "claude-sonnet-4-5", "temperature": 0.7})
        service.track_stream(sid, "chunk, with \"quotes\" and\ttabs", timestamp=base + 10,
                             metadata={"nested": {"a": [1, 2.5, {"b": None}], "c": {"d": "é"}}, "empty": "",
                                       "zero": 0, "flag": False, "none": None})
        service.track_stream(sid, "" if self.exact_empty_strings else "x", timestamp=base + 20, metadata={})
        service.track_error(sid, error_type="ValueError", message="bad value",
                            stack="Traceback (most recent call last):\n  line 1", timestamp=base + 30)
        service.track_end(sid, "failed", timestamp=base + 40, metadata={"input_tokens": 12, "output_tokens": 3})
        for i in range(40):
            service.track({"event_type": "custom", "category": "user-action", "action": "click", "value": i + 0.25,
                           "label": f"button {i}", "timestamp": base + 100 + i, "metadata": {"i": i}})

    @staticmethod
    def _events(service: TelemetryService) -> list[dict[str, Any]]:
        return sorted((e.to_dict() for e in service.iter_events()), key=lambda d: d["id"])

    @pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
    def test_export_then_import_gives_the_same_events(self, make_service: Any, tmp_path: Any,
                                                      compression: str | None) -> None:
        source = make_service()
        self._seed(source)
        suffix = {None: "", "gzip": ".gz", "zstd": ".zst"}[compression]
        path = tmp_path / f"events.{self.format}{suffix}"
        written = source.export(output=path)  # format and compression from the name
        assert written == 45
        target = make_service("target")
        result = target.import_events(path)
        assert (result.read, result.imported, result.rejected) == (45, 45, 0)
        assert self._events(target) == self._events(source)
        again = target.import_events(path)  # ids are kept: a second import stores nothing twice
        assert again.imported == 45 and len(self._events(target)) == 45

    def test_export_follows_the_filter_oldest_first(self, make_service: Any) -> None:
        source = make_service()
        self._seed(source)
        data = source.export(self.format, {"category": "user-action"})
        assert isinstance(data, bytes) and data
        target = make_service("target")
        import io

        target.import_events(io.BytesIO(data), self.format)
        events = list(target.iter_events())
        assert len(events) == 40 and all(e.category == "user-action" for e in events)
        written = [e["timestamp"] for e in _rows_in_export(data, self.format, target)]
        assert written == sorted(written)  # the export itself is oldest first

    def test_an_empty_export_reads_back_empty(self, make_service: Any) -> None:
        import io

        source = make_service()
        data = source.export(self.format)
        assert make_service("target").import_events(io.BytesIO(data), self.format).read == 0


# -- exports straight from storage rows (``export_rows``): what the exporter plugins' tests share -------------

EXPORT_BASE = 1_750_000_000_000
EXPORT_SECRET = "the launch code is tangerine-42"


class ReadAsStored:
    """An ``after_read`` plugin that changes nothing: with it installed, exports take the event path."""

    name = "read-as-stored"

    @hookimpl
    def after_read(self, events):
        return None


def seed_export_events(service: TelemetryService) -> None:
    """Events with everything an exporter must write exactly: unicode, control characters, nested metadata,
    big and tiny numbers, empty and missing values, truncated fields (with ``max_field_bytes=1024``)."""
    track = service.track
    track({"event_type": "start", "category": "claude", "agent": "claude", "mode": "code", "session_id": "s-1",
           "prompt": "Réparer le bug 🐛 — 修复错误 " + "long prompt " * 100, "timestamp": EXPORT_BASE, "id": "e-00",
           "metadata": {"model": "claude-sonnet-4-5", "temperature": 0.1, "big": 2**62, "exp": 1e20, "tiny": -1.5e-7,
                        "nested": {"a": [1, 2.5, {"b": None}], "c": {"d": "é"}}, "empty": "", "no": False,
                        "text": "tab\tnew\nline \"quoted\" \x01", "none": None}})
    track({"event_type": "stream", "category": "claude", "session_id": "s-1", "stream_data": "chunk, \"quoted\"\r\nCRLF",
           "timestamp": EXPORT_BASE + 1, "id": "e-01", "metadata": {}})
    track({"event_type": "stream", "category": "claude", "session_id": "s-1", "stream_data": "", "timestamp": EXPORT_BASE + 2,
           "id": "e-02", "metadata": {"chunk": 2}})
    track({"event_type": "error", "category": "claude", "session_id": "s-1", "error_type": "ValueError",
           "error_message": "bad value 💥", "error_stack": "Traceback\n  line 1", "timestamp": EXPORT_BASE + 3, "id": "e-03"})
    track({"event_type": "end", "category": "claude", "session_id": "s-1", "status": "failed", "timestamp": EXPORT_BASE + 4,
           "id": "e-04", "metadata": {"input_tokens": 12, "output_tokens": 3}})
    track({"event_type": "start", "category": "codex", "agent": "codex", "session_id": "s-2", "parent_session_id": "s-1",
           "timestamp": EXPORT_BASE + 5, "id": "e-05"})
    for i in range(30):
        track({"event_type": "custom", "category": "user-action", "action": "click", "id": f"e-{10 + i}",
               "value": [0.0, -2.5, 1e300, 3.0, 0.1 + 0.2][i % 5], "label": f"button;{i}, «{i}»",
               "timestamp": EXPORT_BASE + 100 + i, "session_id": "s-2" if i % 2 else None,
               "metadata": {"i": i, "kind": "even" if i % 2 == 0 else "odd"} if i % 3 else {}})


@pytest.fixture
def export_db(tmp_path: Any) -> Any:
    """A SQLite file holding :func:`seed_export_events`'s events."""
    path = tmp_path / "events.db"
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}],
                          data_dir=str(tmp_path / "seed"), max_field_bytes=1024) as service:
        seed_export_events(service)
    assert any(e.truncated for e in open_export_service(path, tmp_path / "check").iter_events())
    return path


_opened: list[TelemetryService] = []


def open_export_service(path: Any, data_dir: Any, *plugins: Any) -> TelemetryService:
    """A service over ``path`` (shut down after the test by :func:`shut_down_export_services`)."""
    service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}], data_dir=str(data_dir),
                               plugins=list(plugins))
    _opened.append(service)
    return service


@pytest.fixture(autouse=True)
def shut_down_export_services() -> Any:
    yield
    while _opened:
        _opened.pop().shutdown()




def export_rows_spy(monkeypatch: Any, exporter: type) -> list[int | None]:
    """Record what each ``export_rows`` call of ``exporter`` (a plugin class) returned: a count when it wrote."""
    answers: list[int | None] = []
    original = exporter.export_rows

    @hookimpl
    def export_rows(self: Any, format: str, rows: Any, output: Any, options: Any) -> int | None:
        answers.append(original(self, format, rows, output, options))
        return answers[-1]

    monkeypatch.setattr(exporter, "export_rows", export_rows)
    return answers
