"""Auto-reply texts: templates filled with the client's and the line's names."""

from __future__ import annotations

import string

from openlines.lines import LineConfig
from openlines.state import Session


class _Keep(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, *, client_name: str, line_name: str, position: int | None = None) -> str:
    """Fill ``{client_name}``, ``{line_name}`` (and ``{position}``); unknown fields stay as written."""
    values = _Keep(client_name=client_name or "there", line_name=line_name)
    if position is not None:
        values["position"] = str(position)
    try:
        return string.Formatter().vformat(template, (), values)
    except (ValueError, IndexError):
        # A stray brace in an admin's text must not stop the auto-reply.
        return template


def welcome(line: LineConfig, client_name: str) -> str:
    t = line.auto_replies.welcome
    return render(t, client_name=client_name, line_name=line.name) if t else ""


def closing(line: LineConfig, client_name: str) -> str:
    t = line.auto_replies.closing
    return render(t, client_name=client_name, line_name=line.name) if t else ""


def outside_hours(line: LineConfig, client_name: str) -> str:
    t = line.auto_replies.outside_hours
    return render(t, client_name=client_name, line_name=line.name) if t else ""


def queue_position(line: LineConfig, client_name: str, position: int) -> str:
    t = line.auto_replies.queue_position
    return render(t, client_name=client_name, line_name=line.name, position=position) if t else ""


def rating_request(line: LineConfig, client_name: str) -> str:
    t = line.auto_replies.rating_request
    return render(t, client_name=client_name, line_name=line.name) if t else ""


def position_reply(line: LineConfig, client_name: str, position: int) -> str:
    """What a waiting client is told of their place, when the line tells it (``queue.tell_position``)."""
    if not line.queue.tell_position or position <= 0:
        return ""
    return queue_position(line, client_name, position)


def on_close(line: LineConfig, session: Session) -> tuple[str, str, bool]:
    """The closing text, the rating request, and whether a rating is awaited, for a session just closed.

    A chat closed as spam gets no goodbye; a chat opened by a message that must get no
    automatic answer (a robot, a mailing list) is not asked for a rating.
    """
    if session.close_reason == "spam":
        return "", "", False
    ask = line.session.rating and not session.no_auto_reply
    return closing(line, session.client_name), rating_request(line, session.client_name) if ask else "", ask
