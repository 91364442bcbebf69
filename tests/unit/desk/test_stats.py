"""Statistics folded from session events: the pure fold, the per-day buckets and the summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from desk.stats import SPAM_REASON, Day, LineFigures, Trace, apply, days_between, fold, spread, summarise
from openlines.envelopes import SessionEvent

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ev(
    kind: str, sid: str, seconds: float, line: str = "support", reason: str = "", op: str = "", channel: str = "webchat"
) -> SessionEvent:
    return SessionEvent(
        id=f"{kind}:{sid}:{seconds}",
        kind=kind,
        at=T0 + timedelta(seconds=seconds),
        session_id=sid,
        line_id=line,
        reason=reason,
        operator_id=op,
        channel=channel,
    )


def fold_all(events: list[SessionEvent], *, twice: bool = False) -> dict[str, Day]:
    """Fold events in stream order as the aggregator does (day first, then trace); ``twice`` delivers each one again."""
    traces: dict[str, Trace] = {}
    days: dict[str, Day] = {}
    for seq, e in enumerate(events, start=1):
        for _ in range(2 if twice else 1):
            new, incs = fold(traces.get(e.session_id), e, seq)
            if new is None:
                continue
            if incs:
                key = f"{new.line_id}.{new.opened.date()}"
                changed = apply(days.get(key), new.line_id, new.opened, incs, seq)
                if changed is not None:
                    days[key] = changed
            traces[e.session_id] = new
    return days


def figures(events: list[SessionEvent], start: datetime = T0, end: datetime = T0 + DAY, **kw: bool) -> dict[str, LineFigures]:
    days = fold_all(events, **kw)
    return {f.line_id: f for f in summarise(days.values(), start, end, ["support", "sales", "empty"])}


def test_first_response_resolution_missed_ratings_and_offers_per_line_and_operator() -> None:
    events = [
        ev("session_opened", "a", 0),
        ev("offer_declined", "a", 5, reason="no answer", op="boris"),
        ev("session_answered", "a", 10, op="anna"),
        ev("session_answered", "a", 500, op="boris"),  # answered again after a transfer: the first answer counts
        ev("session_closed", "a", 600, op="anna", reason="closed by anna"),
        ev("session_rated", "a", 700, op="anna", reason="5"),
        ev("session_opened", "b", 100, channel="telegram"),
        ev("offer_declined", "b", 110, reason="skipped", op="anna"),
        ev("session_answered", "b", 130, op="boris"),
        ev("session_closed", "b", 200, op="boris"),
        ev("session_rated", "b", 300, op="boris", reason="2"),
        ev("session_opened", "c", 50),
        ev("session_closed", "c", 150, reason="closed after no activity"),  # abandoned in the queue
        ev("session_opened", "d", 60),
        ev("session_closed", "d", 70, reason=SPAM_REASON),  # spam is not a missed client
        ev("session_opened", "e", 80),  # still waiting
        ev("session_opened", "s", 0, line="sales"),
        ev("session_answered", "s", 90, line="sales", op="boris"),
    ]
    stats = figures(events)
    support = stats["support"]
    assert (support.sessions, support.answered, support.missed, support.open_unanswered) == (5, 2, 1, 1)
    assert support.by_channel == {"telegram": 1, "webchat": 4}
    assert support.by_hour[9] == 5 and sum(support.by_hour) == 5
    assert (support.first_response.median_seconds, support.first_response.p90_seconds) == (20.0, 30.0)
    assert (support.resolution.median_seconds, support.resolution.p90_seconds) == (350.0, 600.0)
    assert (support.rated, support.rating_avg, support.ratings) == (2, 3.5, {"2": 1, "5": 1})
    assert (support.offers_missed, support.offers_passed) == (1, 1)
    ops = {o.operator_id: o for o in support.operators}
    assert (ops["anna"].sessions, ops["anna"].first_response.median_seconds, ops["anna"].resolution.median_seconds) == (
        1,
        10.0,
        600.0,
    )
    assert (ops["anna"].rating_avg, ops["anna"].offers_passed, ops["anna"].offers_missed) == (5.0, 1, 0)
    assert (ops["boris"].sessions, ops["boris"].by_channel, ops["boris"].offers_missed) == (1, {"telegram": 1}, 1)
    assert stats["sales"].first_response.median_seconds == 90.0 and stats["sales"].missed == 0
    empty = stats["empty"]
    assert empty.sessions == 0 and empty.first_response.median_seconds is None and empty.rating_avg is None
    assert empty.sla_met_percent is None


def test_an_event_delivered_twice_is_counted_once() -> None:
    events = [
        ev("session_opened", "a", 0),
        ev("offer_declined", "a", 5, reason="no answer", op="boris"),
        ev("session_answered", "a", 10, op="anna"),
        ev("session_closed", "a", 60, op="anna"),
        ev("session_rated", "a", 70, op="anna", reason="4"),
    ]
    assert figures(events, twice=True) == figures(events)


def test_a_day_written_but_trace_not_is_not_counted_again() -> None:
    """The aggregator died after writing the day and before the trace: the redelivered event changes no day."""
    opened = ev("session_opened", "a", 0)
    trace, incs = fold(None, opened, 1)
    assert trace is not None
    day = apply(None, "support", trace.opened, incs, 1)
    answered = ev("session_answered", "a", 10, op="anna")
    after, incs = fold(trace, answered, 2)
    assert after is not None and incs
    day = apply(day, "support", trace.opened, incs, 2)
    assert day is not None
    # redelivered: the trace is still the old one, so the fold gives the same increments; the day refuses them
    _again, incs_again = fold(trace, answered, 2)
    assert incs_again == incs and apply(day, "support", trace.opened, incs_again, 2) is None
    # and once the trace holds the event, the event folds to nothing at all
    assert fold(after, answered, 2) == (None, [])


def test_sla_met_reads_sla_breached_events() -> None:
    events = [
        ev("session_opened", "a", 0),
        ev("session_answered", "a", 10, op="anna"),
        ev("session_opened", "b", 0),
        ev("sla_breached", "b", 60, op="anna", reason="first response"),
        ev("sla_breached", "b", 120, op="anna", reason="next response"),  # one session breaches once
        ev("session_answered", "b", 130, op="anna"),
    ]
    support = figures(events)["support"]
    assert (support.sla_breached, support.sla_met_percent) == (1, 50.0)


def test_only_sessions_opened_in_the_range_count_and_the_end_is_exclusive() -> None:
    events = [
        ev("session_opened", "before", -3600),
        ev("session_answered", "before", 5, op="anna"),  # answered inside the range, opened before it
        ev("session_opened", "inside", 0),
        ev("session_opened", "at-end", DAY.total_seconds()),
    ]
    support = figures(events)["support"]
    assert support.sessions == 1 and support.answered == 0


def test_events_of_an_unknown_session_and_bad_ratings_are_ignored() -> None:
    assert fold(None, ev("session_answered", "x", 1, op="anna"), 1) == (None, [])
    events = [ev("session_opened", "a", 0), ev("session_rated", "a", 5, reason="11"), ev("session_rated", "a", 6, reason="x")]
    assert figures(events)["support"].rated == 0


def test_median_and_p90_are_nearest_rank_of_whole_seconds() -> None:
    assert spread({}).median_seconds is None
    ten = spread({str(v): 1 for v in range(1, 11)})
    assert (ten.count, ten.median_seconds, ten.p90_seconds, ten.avg_seconds) == (10, 5.5, 9.0, 5.5)
    assert spread({"7": 3}).p90_seconds == 7.0
    assert spread({"1": 9, "100": 1}).p90_seconds == 1.0 and spread({"1": 8, "100": 2}).p90_seconds == 100.0


def test_hours_and_days_are_told_in_the_zone_asked_for() -> None:
    moscow = ZoneInfo("Europe/Moscow")  # UTC+3 all year
    events = [
        ev("session_opened", "late", 22 * 3600 - 9 * 3600),  # 22:00 UTC = 01:00 the next day in Moscow
        ev("session_opened", "morning", 0),  # 09:00 UTC = 12:00 in Moscow
    ]
    days = fold_all(events)
    local_day = datetime(2026, 11, 21, tzinfo=moscow)
    (f,) = summarise(days.values(), local_day.astimezone(UTC), (local_day + DAY).astimezone(UTC), ["support"], tz=moscow)
    assert f.sessions == 1 and f.by_hour[1] == 1 and f.by_day == {"2026-11-21": 1}
    (f,) = summarise(days.values(), T0 - DAY, T0 + DAY, ["support"], tz=moscow)
    assert {h: n for h, n in enumerate(f.by_hour) if n} == {1: 1, 12: 1}
    assert f.by_day == {"2026-11-20": 1, "2026-11-21": 1}


def test_a_range_touches_every_utc_day_it_covers() -> None:
    assert days_between(T0, T0 + timedelta(hours=1)) == ["2026-11-20"]
    assert days_between(T0, T0 + DAY + timedelta(hours=1)) == ["2026-11-20", "2026-11-21"]
    midnight = datetime(2026, 11, 20, tzinfo=UTC)
    assert days_between(midnight, midnight + DAY) == ["2026-11-20"]


@st.composite
def histories(draw: st.DrawFn) -> list[SessionEvent]:
    out: list[SessionEvent] = []
    for i in range(draw(st.integers(0, 12))):
        sid = f"s{i}"
        line = draw(st.sampled_from(["support", "sales"]))
        t = draw(st.floats(0, 3600))
        op = draw(st.sampled_from(["anna", "boris", ""]))
        out.append(ev("session_opened", sid, t, line))
        if draw(st.booleans()):
            out.append(ev("offer_declined", sid, t + 1, line, reason=draw(st.sampled_from(["no answer", "skipped"])), op=op))
        if draw(st.booleans()):
            out.append(ev("session_answered", sid, t + draw(st.floats(0, 600)), line, op=op))
        if draw(st.booleans()):
            reason = draw(st.sampled_from(["closed by x", SPAM_REASON]))
            out.append(ev("session_closed", sid, t + 700, line, reason=reason, op=op))
        if draw(st.booleans()):
            out.append(ev("session_rated", sid, t + 800, line, reason=str(draw(st.integers(1, 5))), op=op))
    return out


@given(histories())
def test_every_session_is_counted_once_and_figures_stay_in_bounds(events: list[SessionEvent]) -> None:
    stats = figures(events)
    assert figures(events, twice=True) == stats
    opened = [e for e in events if e.kind == "session_opened"]
    assert sum(s.sessions for s in stats.values()) == len(opened)
    for s in stats.values():
        assert s.answered + s.missed + s.open_unanswered <= s.sessions
        assert sum(o.sessions for o in s.operators) <= s.answered
        fr = s.first_response
        if s.answered:
            assert fr.median_seconds is not None and 0 <= fr.median_seconds <= fr.p90_seconds <= 600
        else:
            assert fr.median_seconds is None
        if s.rated:
            assert s.rating_avg is not None and 1 <= s.rating_avg <= 5
