"""RFC 3834 loop and junk guard: which mails must never get an automatic answer.

An auto-reply to a robot starts mail loops (two auto-responders answering
each other) and spams lists, so the gateway remembers these senders and drops
automatic replies (welcome, queue position, outside hours...) addressed to
them. Operators can still answer them by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Local parts that are robots by convention (RFC 3834 §2, RFC 2142).
_ROBOT_LOCALS = frozenset(
    {"mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply", "bounce", "bounces"}
)
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What the loop guard looks at, taken from one inbound mail."""

    sender: str  # normalised From address ("" when none)
    auto_submitted: str | None = None  # Auto-Submitted value, None when absent
    return_path: str | None = None  # Return-Path value, None when absent ("<>" = a bounce)
    precedence: str | None = None
    has_list_headers: bool = False  # any List-Id / List-Unsubscribe / List-Post / ... header
    auto_response_suppress: str | None = None  # X-Auto-Response-Suppress (Microsoft)
    is_bounce: bool = False  # a delivery status notification
    subject: str = ""
    autoreply_header: str = ""  # X-Autoreply / X-Autorespond / X-Vacation ... as "name: value" ("" when none)


def robot_address(address: str) -> str:
    """Why an address is a robot by its name alone ("" when it is not)."""
    local = address.rsplit("@", 1)[0].lower()
    if local in _ROBOT_LOCALS:
        return f"robot address {local}@"
    if local.endswith("-request"):
        return "list address *-request"
    if local.startswith("owner-"):
        return "list address owner-*"
    return ""


def no_auto_reply_reason(facts: HeaderFacts) -> str:
    """Why this mail must get no automatic answer, or "" when it may get one."""
    if facts.is_bounce:
        return "delivery status notification"
    auto = (facts.auto_submitted or "").split(";", 1)[0].strip().lower()
    if facts.auto_submitted is not None and auto != "no":
        return f"Auto-Submitted: {auto or 'present'}"
    if facts.return_path is not None and facts.return_path.strip() in ("", "<>"):
        return "empty Return-Path"
    if facts.has_list_headers:
        return "mailing list (List-* headers)"
    if (facts.precedence or "").strip().lower() in _BULK_PRECEDENCE:
        return f"Precedence: {(facts.precedence or '').strip().lower()}"
    suppress = {v.strip().lower() for v in (facts.auto_response_suppress or "").split(",")}
    if suppress & {"all", "autoreply", "oof"}:
        return "X-Auto-Response-Suppress"
    if not facts.sender:
        return "no sender address"
    return robot_address(facts.sender)


# Subjects vacation and out-of-office responders use when they set no header (checked after Re:/Fwd: is removed).
_VACATION_SUBJECT = re.compile(
    r"^\s*(auto(matic|matische)?[ -]?(reply|response|antwort|risposta)|out of (the )?office|abwesenheitsnotiz|"
    r"r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|automatisch antwoord|autosvar|"
    r"автоответ|автоматический ответ|автоматичний відповідь|я в отпуске)\b",
    re.IGNORECASE,
)
_PREFIX = re.compile(r"^\s*((re|aw|sv|fw|fwd|wg|tr|ответ|на)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def vacation_subject(subject: str) -> bool:
    return bool(_VACATION_SUBJECT.match(_PREFIX.sub("", subject or "")))


def not_a_chat_reason(facts: HeaderFacts) -> str:
    """Why this mail is written by a machine and must open no chat at all ("" = a person's mail).

    Stricter than :func:`no_auto_reply_reason`: mail that a program sent on
    its own (RFC 3834 Auto-Submitted, vacation and out-of-office responders,
    Precedence bulk/list/junk) is not a conversation. A mailing list that
    relays a person's mail (List-* headers only) is, and a robot *address*
    alone (noreply@ forwarding an order) is too; those only get no auto-reply.
    """
    auto = (facts.auto_submitted or "").split(";", 1)[0].strip().lower()
    if facts.auto_submitted is not None and auto != "no":
        return f"Auto-Submitted: {auto or 'present'}"
    precedence = (facts.precedence or "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    if facts.autoreply_header:
        return f"automatic reply ({facts.autoreply_header})"
    if vacation_subject(facts.subject):
        return "automatic reply (subject)"
    return ""
