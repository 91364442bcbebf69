"""Threading of our replies (RFC 5322 §3.6.4) and our own Message-IDs."""

from __future__ import annotations

import hashlib
import re

MAX_REFERENCES = 20  # keep headers bounded; the first and the last ids matter most to clients
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|vs|ad|antw|odp|r|rif|ответ|на)\s*(\[\d+\])?\s*:", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]+>")


def digest(*parts: str, size: int = 16) -> str:
    """A stable hex digest (KV keys and Message-IDs are derived from it)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).hexdigest()


def our_message_id(out_id: str, domain: str) -> str:
    """Deterministic from the outbound id: a resend after a crash carries the same Message-ID."""
    return f"<out-{digest(out_id)}@{domain}>"


def is_ours(message_id: str, domain: str) -> bool:
    return message_id.startswith("<out-") and message_id.endswith(f"@{domain}>")


def reply_subject(subject: str, fallback: str = "Your message") -> str:
    subject = " ".join(subject.split())
    if not subject:
        return f"Re: {fallback}"
    if _REPLY_PREFIX.match(subject):
        return subject
    return f"Re: {subject}"


def message_ids(value: str) -> list[str]:
    """The ``<id>`` tokens of a Message-ID / In-Reply-To / References value, in order."""
    return _MSGID.findall(value or "")


def references(parent_references: list[str], parent_id: str) -> list[str]:
    """References of a reply: the parent's References followed by the parent's Message-ID."""
    refs = [r for r in parent_references if r != parent_id]
    if parent_id:
        refs.append(parent_id)
    unique = list(dict.fromkeys(refs))
    if len(unique) > MAX_REFERENCES:
        unique = [unique[0], *unique[-(MAX_REFERENCES - 1) :]]
    return unique
