"""Viewer sessions (meshcast/viewers.py) and the origin's aggregation (origin/viewers.py),
driven by an injected clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.events import EventBus
from meshcast.viewers import (
    MAX_REPORTERS,
    REPORT_TTL,
    SESSION_WINDOW,
    ReportError,
    ViewerCounter,
    parse_report,
    viewer_id,
)
from origin.registry import StreamRegistry
from origin.viewers import ViewerStats


def test_sessions_count_once_and_expire() -> None:
    counter = ViewerCounter()
    a, b = viewer_id(None, "10.0.0.1", "firefox"), viewer_id(None, "10.0.0.1", "chromium")
    token = viewer_id("tok", "10.0.0.1", "firefox")
    assert len({a, b, token}) == 3
    for t in range(10):
        counter.seen("show", a, float(t))
    counter.seen("show", b, 5.0)
    counter.seen("other", token, 5.0)
    assert counter.counts(9.0) == {"show": 2, "other": 1}
    assert counter.counts(5.0 + SESSION_WINDOW + 0.1) == {"show": 1}
    assert counter.counts(9.0 + SESSION_WINDOW + 0.1) == {}


def test_session_memory_is_bounded() -> None:
    counter = ViewerCounter(max_sessions=3)
    for i in range(5):
        counter.seen("s", str(i), 1.0)
    assert counter.counts(1.0) == {"s": 3}
    counter.seen("s", "late", 1.0 + SESSION_WINDOW + 1)  # the old ones expired: room again
    assert counter.counts(1.0 + SESSION_WINDOW + 1) == {"s": 1}


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.booleans(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=3)))  # fmt: skip
def test_report_parser_accepts_only_counts(body: Any) -> None:
    try:
        edge, counts = parse_report(body)
    except ReportError:
        return
    assert isinstance(edge, str) and all(isinstance(v, int) and v >= 0 for v in counts.values())


def test_report_parser_errors_say_what_is_wrong() -> None:
    assert parse_report({"edge": "e1", "streams": {"show": 3}}) == ("e1", {"show": 3})
    for bad, message in (
        ([], "JSON object"),
        ({"streams": {}}, "'edge'"),
        ({"edge": "e", "streams": {"s": -1}}, "integers"),
        ({"edge": "e", "streams": {"s": True}}, "integers"),
        ({"edge": "e", "streams": []}, "'streams'"),
    ):
        with pytest.raises(ReportError, match=message):
            parse_report(json.loads(json.dumps(bad)))


async def test_origin_sums_edges_and_keeps_peak_and_watch_time() -> None:
    now = [1000.0]
    registry = StreamRegistry(EventBus())
    stats = ViewerStats(registry, clock=lambda: now[0])
    stream = registry.publish("show", "rtmp", "test")
    stats.report("edge-a", {"show": 3})
    stats.report("edge-b", {"show": 2, "gone": 4})
    stats.local.seen("show", "direct", now[0])
    stats.tick()
    assert stats.stream_json("show") == {"viewers": 6, "peak_viewers": 6, "watch_seconds": 0.0}
    now[0] += 10
    stats.report("edge-a", {"show": 1})
    stats.report("edge-b", {"show": 0})
    stats.tick()
    assert stats.stream_json("show") == {"viewers": 2, "peak_viewers": 6, "watch_seconds": 60.0}
    now[0] += max(REPORT_TTL, SESSION_WINDOW) + 1  # silent edges and viewers: gone
    stats.tick()
    assert stats.stream_json("show")["viewers"] == 0
    registry.end(stream, "done")
    assert stats.stream_json("show")["peak_viewers"] == 6
    registry.publish("show", "rtmp", "again")  # a new publication starts from zero
    assert stats.stream_json("show") == {"viewers": 0, "peak_viewers": 0, "watch_seconds": 0.0}


def test_reports_keep_live_streams_and_a_bounded_number_of_edges() -> None:
    now = [0.0]
    registry = StreamRegistry(EventBus())
    stats = ViewerStats(registry, clock=lambda: now[0])
    registry.publish("show", "rtmp", "test")
    assert stats.report("e0", {"show": 1, "not-live": 9})
    assert stats.reports["e0"][1] == {"show": 1}
    for i in range(1, MAX_REPORTERS):
        assert stats.report(f"e{i}", {"show": 1})
    assert not stats.report("one-too-many", {"show": 1})
    assert stats.current(now[0])["show"] == MAX_REPORTERS
    now[0] += REPORT_TTL + 1  # the old reports expire: room for new edges
    assert stats.report("one-too-many", {"show": 1})
