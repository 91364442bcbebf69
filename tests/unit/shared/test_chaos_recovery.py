"""The fault suite's recovery figure after a NATS node kill: lag counted from the cluster's new leaders."""

from __future__ import annotations

from support.chaos import Kill, Routed, lag_after, recovery, slowest


def test_lag_after_the_new_leaders_counts_from_them_not_from_the_kill_plus_the_gap() -> None:
    # Killed at 100; new leaders at 108. The last line before the kill was at 99.5, the next at 108.5.
    # A message came at 99.2 (before the kill) and was routed at 109.0; one came at 105, routed at 108.6.
    routed = Routed(lines=[99.5, 108.5, 108.6, 109.0], messages=[(99.2, 109.0), (105.0, 108.6)])
    assert lag_after(routed, 100.0, 108.0) == 1.0  # 109.0 - 108, not 100 + 9.8 - 108 = 1.8
    # A message that came after the leaders counts its own wait.
    routed.messages.append((108.2, 110.7))
    routed.lines.append(110.7)
    assert lag_after(routed, 100.0, 108.0) == 2.5
    # Routing that carried on before the leaders (other partitions) is no lag.
    assert lag_after(Routed(lines=[99.0, 101.0], messages=[(100.5, 101.0)]), 100.0, 108.0) == 0.0


def test_the_report_gives_the_gap_from_the_kill_and_the_lag_after_the_new_leaders() -> None:
    routed = Routed(lines=[99.5, 108.5, 109.0], messages=[(99.2, 109.0)])
    kill = Kill("nats", "nats", 100.0, in_flight=3, new_leaders_at=108.0)
    got = recovery([kill], routed, {})["nats"]
    assert got["gaps"] == [9.8]  # the message's wait, from when it came
    assert got["detail"][0]["gap_after_new_leaders"] == 1.0
    assert got["longest_gap_after_new_leaders_seconds"] == 1.0


def test_the_report_names_the_slowest_message_around_a_fault() -> None:
    routed = Routed(lines=[99.5, 101.0, 104.0], messages=[(99.6, 101.0), (100.5, 104.0)], ids=["a", "b"])
    assert slowest(routed, 100.0) == "b came +0.50 s from the fault, waited 3.50 s"
    got = recovery([Kill("router", "router-a", 100.0, in_flight=1)], routed, {})["router"]
    assert got["detail"][0]["slowest"].startswith("b came")


def test_the_report_names_what_lagged_after_the_new_leaders_and_the_slowest_quiet_messages() -> None:
    # Killed at 100, new leaders at 108: "b" came at 108.2 and was routed at 110.7 (2.5 s after them);
    # "a" came before the kill and was routed 1 s after them. "q" came long after, with no fault near.
    routed = Routed(
        lines=[99.5, 108.5, 109.0, 110.7, 150.5],
        messages=[(99.2, 109.0), (108.2, 110.7), (150.0, 153.0), (160.0, 160.1)],
        ids=["a", "b", "q", "r"],
    )
    got = recovery([Kill("nats", "nats", 100.0, in_flight=1, new_leaders_at=108.0)], routed, {})
    assert got["nats"]["detail"][0]["slowest_after_new_leaders"] == (
        "b came +8.20 s from the fault, routed +10.70 s, 2.50 s after the new leaders"
    )
    assert got["quiet"]["slowest"] == ["q came 50.0 s after a fault, waited 3.00 s", "r came 60.0 s after a fault, waited 0.10 s"]
    # When nothing waited, the first line after the kill sets the lag.
    late = Routed(lines=[99.5, 109.5], messages=[(150.0, 150.1)], ids=["x"])
    got = recovery([Kill("nats", "nats", 100.0, in_flight=0, new_leaders_at=108.0)], late, {})
    first = "the first transcript line after the kill, 1.50 s after the new leaders"
    assert got["nats"]["detail"][0]["slowest_after_new_leaders"] == first
