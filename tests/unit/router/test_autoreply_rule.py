"""auto_replies: the texts, their fields, the queue position and what a close sends (router.core.autoreply)."""

from __future__ import annotations

from support.rules import chat, line

from router.core import autoreply

REPLIES = {"closing": "Bye {client_name}", "rating_request": "Rate us 1-5", "queue_position": "You are number {position}"}


def test_template_fields_are_filled_and_unknown_ones_or_stray_braces_left_as_written() -> None:
    assert autoreply.render("Hi {client_name} at {line_name} {x}", client_name="", line_name="Sales") == "Hi there at Sales {x}"
    assert autoreply.render("Hmm :-{", client_name="Ivan", line_name="L") == "Hmm :-{"
    assert autoreply.render("{{literal}}", client_name="Ivan", line_name="L") == "{literal}"


def test_a_waiting_client_is_told_their_place_only_when_the_line_says_so() -> None:
    telling = line(queue={"tell_position": True}, replies=REPLIES)
    assert autoreply.position_reply(telling, "", 3) == "You are number 3"
    assert autoreply.position_reply(telling, "", 0) == ""  # not waiting (any more)
    assert autoreply.position_reply(line(replies=REPLIES), "", 3) == ""
    assert autoreply.position_reply(line(queue={"tell_position": True}), "", 3) == ""  # no text


def test_a_close_sends_the_closing_text_and_the_rating_request_when_rating_is_on() -> None:
    closed = chat(status="closed", close_reason="operator", client_name="Ivan")
    assert autoreply.on_close(line(replies=REPLIES), closed) == ("Bye Ivan", "", False)
    assert autoreply.on_close(line(replies=REPLIES, session={"rating": True}), closed) == ("Bye Ivan", "Rate us 1-5", True)


def test_a_spammer_gets_no_goodbye_and_a_robot_is_not_asked_for_a_rating() -> None:
    rated = line(replies=REPLIES, session={"rating": True})
    assert autoreply.on_close(rated, chat(status="closed", close_reason="spam")) == ("", "", False)
    robot = chat(status="closed", close_reason="auto_close", no_auto_reply=True)
    assert autoreply.on_close(rated, robot) == ("Bye there", "", False)
