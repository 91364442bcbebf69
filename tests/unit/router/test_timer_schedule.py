"""How a timer is written as a scheduled message (decision 039)."""

from __future__ import annotations

import datetime

import pytest

from openlines import bus, subjects
from router.timers import Timer, at, key


def test_the_due_time_is_an_at_schedule_in_utc_to_the_millisecond() -> None:
    due = datetime.datetime(2026, 12, 5, 23, 59, 59, 987654, tzinfo=datetime.UTC).timestamp()
    assert at(due) == "@at 2026-12-05T23:59:59.987Z"


def test_every_timer_waits_on_its_own_subject() -> None:
    one = Timer(kind="offer", target="s1", due=1000.0, token="a")
    assert key(one) == key(Timer(kind="offer", target="s1", due=1000.0, token="a"))
    others = [
        Timer(kind="offer", target="s1", due=1000.5, token="a"),
        Timer(kind="offer", target="s1", due=1000.0, token="b"),
        Timer(kind="offer", target="s2", due=1000.0, token="a"),
        Timer(kind="idle", target="s1", due=1000.0, token="a"),
    ]
    assert len({key(t) for t in [one, *others]}) == 5
    subject = subjects.timer_set(one.kind, one.target, key(one))
    assert subject.startswith("ol.timer.set.offer.s1.") and subject.count(".") == 5


def test_a_server_that_drops_the_schedule_setting_is_refused_by_name() -> None:
    want = bus.stream_config(subjects.STREAM_TIMER)
    assert want.allow_msg_schedules
    got = bus.stream_config(subjects.STREAM_TIMER)
    got.allow_msg_schedules = None  # what a nats-server older than 2.12 answers
    with pytest.raises(bus.StreamSettingIgnored, match=r"2\.12 or later"):
        bus.check_stream_kept(got, want)
    bus.check_stream_kept(want, want)
    plain = bus.stream_config(subjects.STREAM_IN)  # no stream but the timers' needs it
    assert not plain.allow_msg_schedules
    bus.check_stream_kept(plain, plain)
