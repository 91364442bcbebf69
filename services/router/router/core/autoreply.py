"""Auto-reply texts: templates filled with the client's and the line's names."""

from __future__ import annotations

import string

from openlines.lines import LineConfig


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
