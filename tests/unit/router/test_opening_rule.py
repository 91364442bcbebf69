"""hours.outside, hours.redirect_line and the auto-replies a new chat gets, decided in router.core.opening."""

from __future__ import annotations

from datetime import UTC, datetime

from support.rules import line, office_hours

from router.core import opening

TUE_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TUE_NIGHT = datetime(2026, 11, 24, 21, 0, tzinfo=UTC)
SUPPORT_AT_NIGHT = line("support", hours=office_hours(outside="redirect", redirect_line="night"))
NIGHT = line("night", replies={"welcome": "Night desk here", "outside_hours": "night closed"})


def test_a_line_without_hours_is_always_open() -> None:
    assert not opening.is_closed(line(), TUE_NIGHT)
    assert not opening.holds(line(hours={"outside": "hold_until_open"}), TUE_NIGHT)


def test_a_line_outside_its_hours_is_closed() -> None:
    assert opening.is_closed(line(hours=office_hours()), TUE_NIGHT)
    assert not opening.is_closed(line(hours=office_hours()), TUE_NOON)


def test_outside_hours_redirect_sends_the_chat_to_the_redirect_line() -> None:
    lines = {"support": SUPPORT_AT_NIGHT, "night": NIGHT}
    assert opening.route(SUPPORT_AT_NIGHT, lines, TUE_NIGHT).id == "night"
    assert opening.route(SUPPORT_AT_NIGHT, lines, TUE_NOON).id == "support"


def test_a_redirect_to_a_missing_line_keeps_the_chat() -> None:
    assert opening.route(SUPPORT_AT_NIGHT, {"support": SUPPORT_AT_NIGHT}, TUE_NIGHT).id == "support"


def test_a_redirect_is_one_hop_only() -> None:
    night = line("night", hours=office_hours(outside="redirect", redirect_line="third"))
    lines = {"support": SUPPORT_AT_NIGHT, "night": night, "third": line("third")}
    assert opening.route(SUPPORT_AT_NIGHT, lines, TUE_NIGHT).id == "night"


def test_outside_hours_queue_queues_and_hold_until_open_holds() -> None:
    queued = opening.open_session(line(hours=office_hours()), line(), TUE_NIGHT, first_contact=True, client_name="")
    held_line = line(hours=office_hours(outside="hold_until_open"))
    held = opening.open_session(held_line, held_line, TUE_NIGHT, first_contact=True, client_name="")
    assert (queued.closed, queued.held) == (True, False)
    assert (held.closed, held.held) == (True, True)
    assert opening.holds(held_line, TUE_NIGHT) and not opening.holds(held_line, TUE_NOON)


def test_the_welcome_goes_to_the_first_contact_only() -> None:
    ln = line(replies={"welcome": "Hello {client_name}, this is {line_name}"})
    first = opening.open_session(ln, ln, TUE_NOON, first_contact=True, client_name="Ivan")
    again = opening.open_session(ln, ln, TUE_NOON, first_contact=False, client_name="Ivan")
    assert (first.reply.kind, first.reply.text) == ("welcome", "Hello Ivan, this is Line support")
    assert again.reply.kind == "" and "welcome_each_session" in again.reply.why


def test_welcome_each_session_greets_a_returning_client() -> None:
    ln = line(replies={"welcome": "Hi", "welcome_each_session": True})
    assert opening.reply(ln, ln, closed=False, first_contact=False, client_name="").text == "Hi"


def test_a_closed_line_sends_its_outside_hours_text_instead_of_the_welcome() -> None:
    ln = line(hours=office_hours(), replies={"welcome": "Hi", "outside_hours": "Closed, {client_name}"})
    got = opening.open_session(ln, ln, TUE_NIGHT, first_contact=True, client_name="")
    assert (got.reply.kind, got.reply.text) == ("outside", "Closed, there")


def test_a_closed_line_without_outside_text_falls_back_to_the_welcome() -> None:
    ln = line(hours=office_hours(), replies={"welcome": "Hi"})
    assert opening.reply(ln, ln, closed=True, first_contact=True, client_name="").kind == "welcome"


def test_a_redirected_chat_gets_the_entry_lines_outside_hours_text() -> None:
    entry = line(
        "support", hours=office_hours(outside="redirect", redirect_line="night"), replies={"outside_hours": "We are closed"}
    )
    got = opening.open_session(NIGHT, entry, TUE_NIGHT, first_contact=True, client_name="")
    assert (got.reply.kind, got.reply.text) == ("outside", "We are closed")
    assert got.note == "Outside business hours: redirected to Line night"


def test_a_redirected_chat_without_entry_text_gets_the_targets_welcome() -> None:
    got = opening.open_session(NIGHT, SUPPORT_AT_NIGHT, TUE_NIGHT, first_contact=True, client_name="")
    assert (got.reply.kind, got.reply.text) == ("welcome", "Night desk here")


def test_no_texts_no_auto_reply() -> None:
    got = opening.open_session(line(), line(), TUE_NOON, first_contact=True, client_name="")
    assert got.reply.kind == "" and got.reply.text == "" and got.note == "Opened on Line support"


def test_first_contact_is_the_clients_first_session_even_when_redelivered() -> None:
    assert opening.first_contact(0, "", "s1")
    assert opening.first_contact(1, "s1", "s1")  # this very message opened it before a crash
    assert not opening.first_contact(1, "", "s1")
    assert not opening.first_contact(2, "s1", "s1")
