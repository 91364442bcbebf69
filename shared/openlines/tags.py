"""Tags operators put on conversations: one rule for what a tag may be, used by the desk and the router."""

from __future__ import annotations

import re
import unicodedata

MAX_TAGS = 20  # per conversation
MAX_TAG_LENGTH = 32

# Letters and digits of any script, then also "-", "_" and "."; no spaces (a tag is one word to filter by).
_TAG = re.compile(r"^[^\W_][\w.-]*$")


class BadTag(ValueError):
    """Not a tag: the message says why, for the operator."""


def normalise(raw: str) -> str:
    """The tag as stored: trimmed, NFC, lower case; BadTag with the reason if it cannot be one."""
    tag = unicodedata.normalize("NFC", raw.strip()).lower()
    if not tag:
        raise BadTag("a tag cannot be empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise BadTag(f"tag {tag[:40]!r} is longer than {MAX_TAG_LENGTH} characters")
    if not _TAG.fullmatch(tag):
        raise BadTag(f"tag {tag!r} may hold letters, digits, '-', '_' and '.', starting with a letter or digit")
    return tag


def applied(current: list[str], add: list[str], remove: list[str]) -> list[str]:
    """The tags after adding and removing (all normalised already); BadTag when there would be too many."""
    gone = set(remove)
    out = [t for t in current if t not in gone]
    for t in add:
        if t not in out and t not in gone:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise BadTag(f"a conversation has at most {MAX_TAGS} tags")
    return out
