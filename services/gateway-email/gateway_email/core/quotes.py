"""What of a mail body the customer wrote: the parts quote stripping must never lose. Pure.

``mail-parser-reply`` finds the newest reply of a top-posted mail well. It
does not know interleaved answers ("> question" / answer / "> question" /
answer) or bottom posting, where it keeps the greeting above the first quote
and drops everything the customer wrote below it, and it leaves a trailing
"--- On ... wrote:" line (Yahoo) or a quoted line behind. These helpers decide
when its result must not be used and tidy what it returns.
"""

from __future__ import annotations

import re

# A reply header line: "On <date>, <who> wrote:" in the languages mail clients write it in,
# possibly behind dashes (Yahoo: "--- On Wed, 4/4/12, x wrote:").
_REPLY_HEADER = re.compile(
    r"^[\s>\-_*]*(on|am|le|el|il|op|em|den|dne|w dniu|в|\d{1,2}[./]\d{1,2}[./]\d{2,4})\b.{0,300}"
    r"(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|skrev|napsal|napisał|написал\(?а?\)?|пишет)\s*:?\s*[-_*]*\s*$",
    re.IGNORECASE,
)
# Lines after which the rest is a footer, not an answer: a signature separator, a list footer.
_FOOTER = re.compile(r"^(-- ?|_{10,}|-{10,})\s*$")
_FORWARD_MARKER = re.compile(
    r"^\s*(-{2,}\s*(forwarded message|original message follows|weitergeleitete nachricht|message transféré|"
    r"mensaje reenviado|пересылаемое сообщение|переслано)|begin forwarded message:)",
    re.IGNORECASE | re.MULTILINE,
)


def is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def is_reply_header(line: str) -> bool:
    return bool(_REPLY_HEADER.match(line.strip()))


def _has_words(line: str) -> bool:
    return len(re.findall(r"\w", line)) >= 2


def answers_after_quote(text: str) -> bool:
    """True when the customer wrote below a quoted line (interleaved answers, bottom posting).

    Text after a signature separator or a list footer does not count, nor do
    reply header lines.
    """
    seen_quote = False
    for line in text.splitlines():
        if _FOOTER.match(line):
            break
        if is_quoted(line):
            seen_quote = True
            continue
        if seen_quote and _has_words(line) and not is_reply_header(line):
            return True
    return False


def has_forward(text: str) -> bool:
    """An inline forward ("---------- Forwarded message ---------"): its content is what the customer sends."""
    return bool(_FORWARD_MARKER.search(text))


def trim_trailing_quote(text: str) -> str:
    """Drop what a reply parser left at the end: quoted lines, reply headers (also split over two lines), blanks."""
    lines = text.rstrip().splitlines()
    while lines:
        last = lines[-1]
        if not last.strip() or is_quoted(last) or is_reply_header(last):
            lines.pop()
            continue
        if len(lines) >= 2 and is_reply_header(lines[-2] + " " + last):
            del lines[-2:]
            continue
        break
    return "\n".join(lines).rstrip()


def own_words(text: str) -> bool:
    """Whether the text has anything the customer wrote (not only quotes and reply headers)."""
    return any(_has_words(line) and not is_quoted(line) and not is_reply_header(line) for line in text.splitlines())
