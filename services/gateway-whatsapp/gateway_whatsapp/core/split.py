"""Cutting a long reply into WhatsApp text messages.

The Cloud API refuses a text body over 4096 characters. Long replies are cut
at the last line break that fits, else at the last space, else hard at the
limit; whitespace-only text sends nothing (WhatsApp refuses an empty body).
"""

from __future__ import annotations

MAX_TEXT = 4096


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Non-empty parts of ``text``, each at most ``limit`` characters, in order; only whitespace at a cut is dropped."""
    if limit < 2:
        raise ValueError("limit must be at least 2")
    parts: list[str] = []
    rest = text
    while rest.strip():
        if len(rest) <= limit:
            parts.append(rest.strip("\n"))
            break
        window = rest[:limit]
        cut = window.rfind("\n")
        if cut <= 0:
            cut = max(window.rfind(" "), window.rfind("\t"))
        if cut > 0 and window[:cut].strip():
            head, rest = window[:cut].rstrip(), rest[cut + 1 :]
            rest = rest.lstrip(" \t") if window[cut] != "\n" else rest
        else:
            head, rest = window, rest[limit:]
        if head.strip():
            parts.append(head.strip("\n"))
    return parts
