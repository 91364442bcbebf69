"""wait_seconds, auto_close_minutes, presence_grace_seconds, hours openings and the rating window:
when each timer is due and when one that fired is stale (router.core.timing, router.core.client)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from support.rules import NOW, chat, line, office_hours, operator

from openlines.envelopes import ClientProfile, Inbound
from openlines.state import ClientRecord
from router.core import client, timing

T = NOW.timestamp()


def test_the_no_answer_timer_is_due_wait_seconds_after_the_offer() -> None:
    assert timing.offer_due(3, T, 45) == timing.Due(T + 45, "3")


def test_a_no_answer_timer_passes_the_chat_on_when_the_offer_is_still_open_and_time_is_up() -> None:
    offered = chat(status="assigned", operator_id="anna", assignments=3, assigned_at=NOW)
    got = timing.offer_fired(offered, "3", line(queue={"wait_seconds": 45}), T + 45)
    assert got.action == "pass_on"


def test_a_no_answer_timer_for_an_earlier_offer_or_an_accepted_chat_is_stale() -> None:
    ln = line(queue={"wait_seconds": 45})
    offered = chat(status="assigned", operator_id="anna", assignments=3, assigned_at=NOW)
    assert timing.offer_fired(offered, "2", ln, T + 99).action == "stale"
    assert timing.offer_fired(chat(status="answered", assignments=3), "3", ln, T + 99).action == "stale"
    assert timing.offer_fired(None, "3", ln, T + 99).action == "stale"


def test_a_no_answer_timer_that_comes_early_comes_back_when_due() -> None:
    offered = chat(status="assigned", operator_id="anna", assignments=1, assigned_at=NOW)
    got = timing.offer_fired(offered, "1", line(queue={"wait_seconds": 45}), T + 5)
    assert got.action == "early" and got.delay == 40


def test_an_offer_whose_time_just_ran_out_is_announced_again_before_it_passes_on() -> None:
    ln = line(queue={"wait_seconds": 45})
    offered = chat(status="assigned", operator_id="anna", assignments=1, assigned_at=NOW)
    assert timing.offer_fired(offered, "1", ln, T + 45).reannounce
    assert not timing.offer_fired(offered, "1", ln, T + timing.REANNOUNCE_WITHIN + 1).reannounce


def test_auto_close_is_due_after_the_idle_minutes_and_never_when_zero() -> None:
    talked = chat(last_message_at=NOW)
    due = timing.idle_due(line(session={"auto_close_minutes": 1.5}), talked)
    assert due == timing.Due(T + 90, str(T))
    assert timing.idle_due(line(), talked) is None


def test_auto_close_is_stale_once_someone_wrote_again_or_the_chat_closed() -> None:
    token = str(T)
    assert timing.idle_fired(chat(last_message_at=NOW), token)
    assert not timing.idle_fired(chat(last_message_at=NOW + timedelta(seconds=1)), token)
    assert not timing.idle_fired(chat(last_message_at=NOW, status="closed"), token)


def test_a_held_chat_waits_for_the_next_opening() -> None:
    due = timing.opening_due(line(hours=office_hours()), datetime(2026, 11, 24, 21, 0, tzinfo=UTC))
    assert due == timing.Due(datetime(2026, 11, 25, 9, 0, tzinfo=UTC).timestamp(), "20261125T090000")
    assert timing.opening_due(line(hours={"enabled": True}), NOW) is None  # never opens


def test_presence_grace_is_the_shortest_of_the_operators_lines() -> None:
    lines = [line("a", queue={"presence_grace_seconds": 90}), line("b", queue={"presence_grace_seconds": 20})]
    assert timing.presence_grace(lines) == 20
    assert timing.presence_grace([]) == 60


def test_the_grace_ends_with_the_operator_offline_only_if_no_page_came_back() -> None:
    due = timing.presence_due(T, 60)
    gone = operator("anna", disconnected_at=T)
    assert due == timing.Due(T + 60, str(T))
    assert timing.presence_fired(gone, due.token)
    assert not timing.presence_fired(operator("anna", disconnected_at=T, desks=["d1"]), due.token)
    assert not timing.presence_fired(operator("anna", disconnected_at=T + 5), due.token)  # left again later
    assert not timing.presence_fired(operator("anna", disconnected_at=T, status="offline"), due.token)


def test_a_mark_from_1_to_5_within_a_day_rates_the_closed_session() -> None:
    rec = ClientRecord(client_id="c1", channel="webchat", account="demo", chat_id="v1")
    asked = client.awaiting_rating(rec, "s1", T)
    assert asked is not None and asked.rating_until == T + client.RATING_WINDOW
    for text, mark in [("5", 5), ("4/5", 4), ("3 of 5", 3), ("5!", 5), (" 2 ", 2)]:
        assert client.rating_of(asked, text, T + 60) == mark
    assert client.rating_of(asked, "6", T + 60) is None
    assert client.rating_of(asked, "5 but slow", T + 60) is None
    assert client.rating_of(asked, "5", T + client.RATING_WINDOW) is None
    assert client.rating_of(rec, "5", T) is None  # nothing asked


def test_any_message_ends_the_rating_request_and_is_remembered() -> None:
    rec = ClientRecord(client_id="c1", channel="webchat", account="demo", chat_id="v1", rating_for="s1", rating_until=T + 5)
    msg = Inbound(
        id="m1", channel="webchat", account="demo", chat_id="v1", user_id="v1", text="hi", received_at=NOW,
        profile=ClientProfile(name="Ivan"),
    )  # fmt: skip
    after = client.remembered(rec, msg)
    assert (after.rating_for, after.recent_msg_ids, after.profile.name) == ("", ["m1"], "Ivan")
