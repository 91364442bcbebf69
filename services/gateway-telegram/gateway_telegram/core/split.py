"""Cutting a long reply into Telegram messages.

Telegram refuses ``sendMessage`` text over 4096 characters, counted in UTF-16
code units (an emoji outside the BMP counts two). Long replies are cut at the
last line break that fits, else at the last space, else hard at the limit.
"""

from __future__ import annotations

MAX_TEXT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The largest n such that ``text[:n]`` is at most ``limit`` UTF-16 units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Non-empty parts of ``text``, each at most ``limit`` UTF-16 units, in order.

    Only the whitespace at a cut is dropped; whitespace-only text gives ``[]``
    (Telegram refuses empty messages).
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    parts: list[str] = []
    rest = text
    while rest.strip():
        if utf16_len(rest) <= limit:
            parts.append(rest.strip("\n"))
            break
        n = _fit(rest, limit)
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
