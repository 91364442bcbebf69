"""The SLA clock rule (router.core.sla): which target runs, from when, and when it is passed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openlines.lines import SlaConfig
from router.core.sla import Clock, EntryKind, apply, check, entry_kind

SLA = SlaConfig(first_response_seconds=60, next_response_seconds=120)


def run(entries: list[tuple[EntryKind, float]], sla: SlaConfig = SLA) -> Clock | None:
    clock: Clock | None = None
    for seq, (kind, at) in enumerate(entries, start=1):
        new = apply(clock, session_id="s1", line_id="support", kind=kind, at=at, seq=seq, sla=sla)
        clock = new or clock
    return clock


def test_auto_replies_and_system_lines_are_not_an_operator_answer() -> None:
    assert entry_kind("in", "visitor") == "client"
    assert entry_kind("out", "auto") == "other"
    assert entry_kind("out", "") == "other"
    assert entry_kind("system", "") == "other"
    assert entry_kind("out", "anna") == "operator"


def test_first_client_message_starts_the_first_response_clock_and_later_ones_do_not_restart_it() -> None:
    clock = run([("client", 100.0), ("other", 101.0), ("client", 130.0)])
    assert clock is not None
    assert (clock.target, clock.since, clock.due, clock.limit) == ("first_response", 100.0, 160.0, 60)


def test_operator_message_stops_the_clock_and_the_next_client_message_starts_next_response() -> None:
    clock = run([("client", 100.0), ("operator", 150.0)])
    assert clock is not None and clock.target is None and clock.answered
    clock = run([("client", 100.0), ("operator", 150.0), ("client", 200.0)])
    assert clock is not None
    assert (clock.target, clock.since, clock.due) == ("next_response", 200.0, 320.0)


def test_a_line_without_a_next_response_target_runs_only_the_first() -> None:
    sla = SlaConfig(first_response_seconds=60)
    clock = run([("client", 100.0), ("operator", 150.0), ("client", 200.0)], sla)
    assert clock is not None and clock.target is None


def test_check_breaches_only_the_clock_the_timer_was_set_for() -> None:
    clock = run([("client", 100.0)])
    assert clock is not None
    assert check(clock, clock.token, 130.0) == 30.0  # not due: wait 30 s more
    breach = check(clock, clock.token, 175.0)
    assert breach is not None and not isinstance(breach, float)
    assert (breach.target, breach.limit, breach.over, breach.waited) == ("first_response", 60, 15.0, 75.0)
    assert breach.reason == "first response target 1 min passed by 15 s (client waiting 1 min 15 s)"
    assert check(clock, "first_response:99.000", 175.0) is None  # another clock's timer
    answered = run([("client", 100.0), ("operator", 150.0)])
    assert check(answered, clock.token, 175.0) is None  # answered in time: nothing
    import msgspec

    assert check(msgspec.structs.replace(clock, breached=True), clock.token, 175.0) is None  # alerted once


def test_an_entry_older_than_the_last_change_is_ignored() -> None:
    clock = run([("client", 100.0), ("operator", 150.0)])
    assert clock is not None and clock.seq == 2
    # the client message redelivered (a crash before its ack) starts nothing
    assert apply(clock, session_id="s1", line_id="support", kind="client", at=100.0, seq=1, sla=SLA) is None


@given(st.lists(st.tuples(st.sampled_from(["client", "operator", "other"]), st.floats(0, 1e6)), max_size=30))
def test_a_clock_runs_exactly_when_a_client_message_waits_for_an_operator(entries: list[tuple[EntryKind, float]]) -> None:
    clock = run(entries)
    said = [k for k, _ in entries if k != "other"]
    waiting = bool(said) and said[-1] == "client"
    assert (clock is not None and clock.target is not None) == waiting
    if waiting and clock is not None:
        # it runs from the first client message after the last operator message
        last_op = max((i for i, (k, _) in enumerate(entries) if k == "operator"), default=-1)
        first_waiting = next(at for i, (k, at) in enumerate(entries) if k == "client" and i > last_op)
        assert clock.since == first_waiting
        assert clock.target == ("next_response" if last_op >= 0 else "first_response")
