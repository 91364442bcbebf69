"""Cutting a long reply into the messages a channel accepts.

A messenger refuses a text over its limit, counted in characters (WhatsApp's
4096) or in UTF-16 code units (Telegram's 4096, where a character outside the
BMP, most emoji, counts two). Long replies are cut at the last line break that
fits, else at the last space or tab, else hard at the limit; whitespace-only
text gives no part at all (messengers refuse an empty message).
"""

from __future__ import annotations

from typing import Literal

Units = Literal["chars", "utf16"]


def utf16_len(text: str) -> int:
    """``text``'s length in UTF-16 code units (a lone surrogate counts one, as :func:`split_text` counts it)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _fit(text: str, limit: int, units: Units) -> int:
    """The largest n such that ``text[:n]`` is at most ``limit`` units."""
    if units == "chars":
        return min(len(text), limit)
    count = 0
    for i, ch in enumerate(text):
        count += 2 if ord(ch) > 0xFFFF else 1
        if count > limit:
            return i
    return len(text)


def split_text(text: str, limit: int, *, units: Units = "chars") -> list[str]:
    """Non-empty parts of ``text``, each at most ``limit`` ``units``, in order.

    Only the whitespace at a cut is dropped (and line breaks around a part);
    whitespace-only text gives ``[]``. A character is never cut in two: with
    ``units="utf16"`` a part ends before a character that would straddle the limit.
    """
    if limit < 2:  # one UTF-16 unit could not hold a character outside the BMP
        raise ValueError("limit must be at least 2")
    size = utf16_len if units == "utf16" else len
    parts: list[str] = []
    rest = text
    while rest.strip():
        rest = rest.lstrip("\n")  # a part's leading line breaks are dropped: they must not take its room
        if size(rest) <= limit:
            parts.append(rest.strip("\n"))
            break
        n = _fit(rest, limit, units)
        window = rest[:n]
        cut = window.rfind("\n")
        if cut <= 0:
            cut = max(window.rfind(" "), window.rfind("\t"))
        if cut > 0 and window[:cut].strip():
            head, rest = window[:cut].rstrip(), rest[cut + 1 :]
            rest = rest.lstrip(" \t") if window[cut] != "\n" else rest
        else:
            head, rest = window, rest[n:]
        if head.strip():
            parts.append(head.strip("\n"))
    return parts
