"""The replica's hints of which session a chat has open: bounded, dropped when the chat has none."""

from __future__ import annotations

from router.shell.hints import OpenSessions


def test_the_least_recently_seen_chat_is_forgotten_first() -> None:
    hints = OpenSessions(size=2)
    hints.saw("a", "l", "s-a")
    hints.saw("b", "l", "s-b")
    hints.saw("a", "l", "s-a")  # seen again: now the most recent
    hints.saw("c", "l", "s-c")
    assert hints._hints == {("a", "l"): "s-a", ("c", "l"): "s-c"}


def test_a_chat_with_no_open_session_has_no_hint_and_lines_are_apart() -> None:
    hints = OpenSessions()
    hints.saw("a", "l1", "s1")
    hints.saw("a", "l2", "s2")
    hints.saw("a", "l1", None)
    assert hints._hints == {("a", "l2"): "s2"}
