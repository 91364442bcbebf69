"""Per-line statistics from session events: the pure computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from desk.stats import SPAM_REASON, compute
from openlines.envelopes import SessionEvent

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ev(kind: str, sid: str, seconds: float, line: str = "support", reason: str = "") -> SessionEvent:
    return SessionEvent(
        id=f"{kind}:{sid}:{seconds}", kind=kind, at=T0 + timedelta(seconds=seconds), session_id=sid, line_id=line, reason=reason
    )


def test_first_response_missed_and_rating_per_line() -> None:
    events = [
        ev("session_opened", "a", 0),
        ev("session_answered", "a", 10),
        ev("session_answered", "a", 500),  # answered again after a transfer: the first answer counts
        ev("session_closed", "a", 600, reason="closed by anna"),
        ev("session_rated", "a", 700, reason="5"),
        ev("session_opened", "b", 100),
        ev("session_answered", "b", 130),
        ev("session_closed", "b", 200, reason="closed by anna"),
        ev("session_rated", "b", 300, reason="2"),
        ev("session_opened", "c", 50),
        ev("session_closed", "c", 150, reason="closed after no activity"),  # abandoned in the queue
        ev("session_opened", "d", 60),
        ev("session_closed", "d", 70, reason=SPAM_REASON),  # spam is not a missed client
        ev("session_opened", "e", 80),  # still waiting
        ev("session_opened", "s", 0, line="sales"),
        ev("session_answered", "s", 90, line="sales"),
    ]
    stats = compute(events, T0, T0 + DAY, ["support", "sales", "empty"])
    support = stats["support"]
    assert (support.sessions, support.answered, support.missed, support.open_unanswered) == (5, 2, 1, 1)
    assert support.first_response_avg_seconds == 20.0  # (10 + 30) / 2
    assert support.first_response_p50_seconds == 20.0
    assert (support.rated, support.rating_avg) == (2, 3.5)
    assert stats["sales"].first_response_avg_seconds == 90.0 and stats["sales"].missed == 0
    empty = stats["empty"]
    assert empty.sessions == 0 and empty.first_response_avg_seconds is None and empty.rating_avg is None


def test_only_sessions_opened_in_the_range_count() -> None:
    events = [
        ev("session_opened", "before", -10),
        ev("session_answered", "before", 5),  # answered inside the range, opened before it
        ev("session_opened", "inside", 0),
        ev("session_opened", "at-end", DAY.total_seconds()),  # the end is exclusive
    ]
    stats = compute(events, T0, T0 + DAY)
    assert stats["support"].sessions == 1 and stats["support"].answered == 0


def test_a_bad_rating_is_ignored() -> None:
    events = [ev("session_opened", "a", 0), ev("session_rated", "a", 5, reason="11"), ev("session_rated", "a", 6, reason="x")]
    assert compute(events, T0, T0 + DAY)["support"].rated == 0


@st.composite
def histories(draw: st.DrawFn) -> list[SessionEvent]:
    out: list[SessionEvent] = []
    for i in range(draw(st.integers(0, 12))):
        sid = f"s{i}"
        line = draw(st.sampled_from(["a", "b"]))
        t = draw(st.floats(0, 3600))
        out.append(ev("session_opened", sid, t, line))
        if draw(st.booleans()):
            out.append(ev("session_answered", sid, t + draw(st.floats(0, 600)), line))
        if draw(st.booleans()):
            out.append(ev("session_closed", sid, t + 700, line, reason=draw(st.sampled_from(["closed by x", SPAM_REASON]))))
        if draw(st.booleans()):
            out.append(ev("session_rated", sid, t + 800, line, reason=str(draw(st.integers(1, 5)))))
    return out


@given(histories())
def test_every_session_is_counted_once_and_figures_stay_in_bounds(events: list[SessionEvent]) -> None:
    stats = compute(events, T0, T0 + DAY)
    opened = [e for e in events if e.kind == "session_opened"]
    assert sum(s.sessions for s in stats.values()) == len(opened)
    for s in stats.values():
        assert s.answered + s.missed + s.open_unanswered <= s.sessions
        if s.answered:
            assert s.first_response_avg_seconds is not None and 0 <= s.first_response_avg_seconds <= 600
            assert s.first_response_p50_seconds is not None and 0 <= s.first_response_p50_seconds <= 600
        else:
            assert s.first_response_avg_seconds is None
        if s.rated:
            assert s.rating_avg is not None and 1 <= s.rating_avg <= 5
