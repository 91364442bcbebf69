"""A raw RFC 5322 mail -> what the gateway publishes. Pure: no I/O, no clock.

- Parsed with the stdlib ``email`` package and ``policy.default`` (encoded
  headers and charsets decoded); a part in an unknown or wrong charset is
  decoded as UTF-8, then Windows-1252, replacing what cannot be read, and the
  problem is noted — never an exception for a bad mail.
- text/plain preferred; HTML only mails are sanitised (nh3) and turned into
  text (:mod:`gateway_email.htmltext`).
- Quoted replies, reply headers ("On ... wrote:", "Von: ... Gesendet: ...")
  and signatures are stripped with ``mail-parser-reply`` for what the operator
  sees (docs/decisions/007-email-gateway.md).
- Attachments are kept as attachments (bytes returned for the shell to store),
  larger ones are listed but not kept.
- RFC 3834 facts for the loop guard, and delivery status notifications
  (bounces) with the Message-ID of the mail that bounced.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr

from email_validator import EmailNotValidError, validate_email
from mailparser_reply.parser import EmailMessage as ReplyText

from gateway_email.core import loopguard, replies
from gateway_email.htmltext import html_to_text
from openlines.envelopes import Attachment, ClientProfile, Inbound

CHANNEL = "email"
MAX_MESSAGE_ID = 250
_LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "list-help", "list-subscribe", "list-owner", "list-archive")


class MailError(ValueError):
    """A mail we cannot publish as a client message (the reason goes to the dead-letter event)."""


@dataclass(frozen=True, slots=True)
class FileAttachment:
    name: str
    mime: str
    size: int
    data: bytes | None  # None when not kept (too large)
    omitted: str = ""  # why the bytes were not kept
    inline: bool = False
    content_id: str = ""

    @property
    def kind(self) -> str:
        major = self.mime.split("/", 1)[0]
        return {"image": "image", "audio": "audio", "video": "video"}.get(major, "file")

    def object_key(self, account: str) -> str:
        """Content-addressed: the same file stored twice (a redelivery) is one object."""
        assert self.data is not None
        return f"{account}/{hashlib.sha256(self.data).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Bounce:
    original_message_id: str  # the mail that could not be delivered ("" when not found)
    recipient: str
    reason: str


@dataclass(frozen=True, slots=True)
class Mail:
    message_id: str  # "<...>", or "" when the mail has none
    key: str  # message_id, or "sha256:<hex of the raw bytes>"
    sender: str  # normalised address, lower case
    sender_name: str
    subject: str
    text: str  # what the operator sees: quotes and signatures stripped
    full_text: str  # the whole text body
    in_reply_to: str
    references: list[str]
    date: datetime | None
    attachments: list[FileAttachment] = field(default_factory=list)
    no_auto_reply: str = ""  # RFC 3834 reason; "" = may get an auto-reply
    bounce: Bounce | None = None
    problems: list[str] = field(default_factory=list)  # what could not be read as it should


# ---------------------------------------------------------------- addresses


def normalise_address(value: str) -> str:
    """Lower-case, syntax-checked address ("" when it is not a usable address)."""
    _name, addr = parseaddr(value or "")
    if not addr or "@" not in addr:
        return ""
    try:
        # Syntax only: no DNS (a gateway must not block on it); `.test` allowed for test setups.
        checked = validate_email(
            addr, check_deliverability=False, allow_smtputf8=True, allow_quoted_local=False, test_environment=True
        )
    except EmailNotValidError:
        return ""
    return str(checked.normalized).lower()


def _header(msg: Message, name: str, problems: list[str]) -> str | None:
    """A header as text, None when absent; a header that will not decode is read raw and noted."""
    try:
        value = msg.get(name)
    except Exception as exc:  # policy.default parses lazily; broken headers raise here
        problems.append(f"header {name} unreadable: {exc.__class__.__name__}")
        # The value as it came, not parsed (get_all would parse it again and raise again).
        raw = next((str(v) for k, v in msg.raw_items() if k.lower() == name.lower()), "")
        return " ".join(raw.split())
    if value is None:
        return None
    return " ".join(str(value).split()) if name.lower() != "subject" else str(value).strip()


def _sender(msg: Message, problems: list[str]) -> tuple[str, str]:
    raw = _header(msg, "From", problems) or ""
    try:
        pairs = getaddresses([raw])
    except Exception:
        pairs = []
    for name, addr in pairs:
        norm = normalise_address(addr)
        if norm:
            return norm, _display_name(name)
    return "", ""


def _display_name(name: str) -> str:
    """A display name as a person reads it: encoded words decoded (when the header was read raw),
    control characters (an encoded CR/LF, say) turned into spaces, at most 100 characters."""
    if "=?" in name:
        try:
            name = str(make_header(decode_header(name)))
        except Exception:
            pass  # keep it as written
    name = "".join(" " if unicodedata.category(c) == "Cc" else c for c in name)
    return " ".join(name.split())[:100]


# ---------------------------------------------------------------- bodies


# Declared charsets that mail software means as a superset.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "iso-8859-1": "cp1252", "us-ascii": "utf-8", "ks_c_5601-1987": "cp949"}


def _decode_text(part: Message, problems: list[str]) -> str:
    """A text part's content, whatever its declared charset claims.

    The declared charset (or its usual superset) is tried strictly, then
    UTF-8, then Windows-1252, then UTF-8 replacing what is left; a mismatch is noted.
    """
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(part.get_payload())
    declared = (part.get_content_charset() or "us-ascii").lower()
    for charset in dict.fromkeys([_SUPERSETS.get(declared, declared), "utf-8", "cp1252"]):
        try:
            text = payload.decode(charset)
        except LookupError:
            problems.append(f"unknown charset {declared!r}")
            continue
        except UnicodeDecodeError:
            continue
        if charset not in (declared, _SUPERSETS.get(declared)):
            problems.append(f"text declared as {declared!r} read as {charset}")
        return text
    return payload.decode("utf-8", "replace")


def _body(msg: EmailMessage, problems: list[str]) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception as exc:
        problems.append(f"body structure unreadable: {exc.__class__.__name__}")
        part = None
    if part is None:
        if msg.get_content_maintype() == "text" or not msg.is_multipart():
            part = msg
        else:
            return ""
    text = _decode_text(part, problems)
    if part.get_content_subtype() == "html":
        return html_to_text(text)
    return text.replace("\r\n", "\n")


def strip_quotes(text: str, languages: list[str]) -> str:
    """The newest reply of a mail body: no quoted history, reply headers or signature.

    Falls back to the whole text when stripping would leave nothing (a mail
    that is all quote, or a parser surprise).
    """
    text = text.strip()
    if not text:
        return ""
    try:
        parsed = ReplyText(text=text, languages=languages or ["en"], keep_hyphen_lists=True).read()
        newest = parsed.replies[0].body.strip() if parsed.replies else ""
    except Exception:
        newest = ""
    return newest or text


# ---------------------------------------------------------------- attachments


def _attachments(msg: EmailMessage, max_bytes: int, problems: list[str]) -> list[FileAttachment]:
    out: list[FileAttachment] = []
    try:
        parts = list(msg.iter_attachments()) if msg.is_multipart() else []
    except Exception as exc:
        problems.append(f"attachments unreadable: {exc.__class__.__name__}")
        return out
    for index, part in enumerate(parts, start=1):
        if part.is_multipart():
            continue
        mime = part.get_content_type()
        try:
            name = part.get_filename() or ""
        except Exception:
            name = ""
        if not name:
            ext = {"message/rfc822": ".eml", "text/calendar": ".ics"}.get(mime, "")
            name = f"attachment-{index}{ext}"
        try:
            if part.get_content_maintype() == "message":
                inner = part.get_payload()
                first = inner[0] if isinstance(inner, list) and inner else None
                data = first.as_bytes() if isinstance(first, Message) else part.as_bytes()
            else:
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
        except Exception as exc:
            problems.append(f"attachment {name!r} unreadable: {exc.__class__.__name__}")
            continue
        cid = (part.get("Content-ID") or "").strip()
        inline = (part.get_content_disposition() or "") == "inline"
        if len(data) > max_bytes:
            out.append(FileAttachment(name, mime, len(data), None, f"larger than {max_bytes} bytes", inline, cid))
        else:
            out.append(FileAttachment(name, mime, len(data), data, "", inline, cid))
    return out


# ---------------------------------------------------------------- bounces


def _is_bounce(msg: EmailMessage, sender: str) -> bool:
    if msg.get_content_type() == "multipart/report":
        return str(msg.get_param("report-type") or "").lower() == "delivery-status"
    local = sender.rsplit("@", 1)[0]
    return local in ("mailer-daemon", "postmaster") and bool(
        re.search(r"(undeliver|delivery status|failure notice|returned mail|delivery failure)", str(msg.get("Subject", "")), re.I)
    )


def _bounce(msg: EmailMessage, problems: list[str]) -> Bounce:
    original = ""
    recipient = ""
    reason = ""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            for block in blocks if isinstance(blocks, list) else []:
                if not isinstance(block, Message):
                    continue
                status = block.get("Status")
                diag = block.get("Diagnostic-Code")
                rcpt = block.get("Final-Recipient") or block.get("Original-Recipient")
                if rcpt and not recipient:
                    recipient = str(rcpt).split(";", 1)[-1].strip().lower()
                if (diag or status) and not reason:
                    action = str(block.get("Action") or "failed")
                    reason = f"{action} {status or ''}: {' '.join(str(diag or '').split())}".strip()
        elif ctype in ("message/rfc822", "text/rfc822-headers") and not original:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = " ".join(str(inner[0].get("Message-ID") or "").split())
            else:
                text = inner if isinstance(inner, str) else _decode_text(part, problems)
                found = re.search(r"^Message-ID:\s*(<[^>\s]+>)", text, re.I | re.M)
                original = found.group(1) if found else ""
    if not original:
        refs = replies.message_ids(str(msg.get("In-Reply-To") or "")) or replies.message_ids(str(msg.get("References") or ""))
        original = refs[-1] if refs else ""
    if not original:
        body = _body(msg, problems)
        found = re.search(r"Message-ID:\s*(<[^>\s]+>)", body, re.I)
        original = found.group(1) if found else ""
    if not reason:
        reason = " ".join(_body(msg, problems).split())[:300] or "delivery failed"
    return Bounce(
        original_message_id=replies.message_ids(original)[0] if replies.message_ids(original) else "",
        recipient=recipient,
        reason=reason[:500],
    )


# ---------------------------------------------------------------- the whole mail


def _message_id(msg: Message, problems: list[str]) -> str:
    ids = replies.message_ids(_header(msg, "Message-ID", problems) or "")
    if not ids:
        return ""
    mid = ids[0]
    return mid if len(mid) <= MAX_MESSAGE_ID else ""


def parse_mail(raw: bytes, *, max_attachment_bytes: int, languages: list[str], max_text_chars: int = 20_000) -> Mail:
    """Parse one raw mail. Raises :class:`MailError` only when there is no usable sender."""
    problems: list[str] = []
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    msg = parsed
    for defect in getattr(msg, "defects", [])[:5]:
        problems.append(f"MIME defect: {defect.__class__.__name__}")
    sender, sender_name = _sender(msg, problems)
    message_id = _message_id(msg, problems)
    key = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    subject = _header(msg, "Subject", problems) or ""
    subject = " ".join(subject.split())[:500]
    in_reply_to_ids = replies.message_ids(_header(msg, "In-Reply-To", problems) or "")
    refs = replies.message_ids(_header(msg, "References", problems) or "")
    try:
        date = msg["Date"].datetime if msg["Date"] is not None else None
    except Exception:
        date = None
    bounce = _bounce(msg, problems) if _is_bounce(msg, sender) else None
    if not sender and bounce is None:
        raise MailError("no valid sender address in From")
    full = _body(msg, problems).strip()
    text = strip_quotes(full, languages)
    if len(text) > max_text_chars:
        text = text[:max_text_chars].rstrip() + "\n[… cut: the mail is longer]"
        problems.append(f"text cut to {max_text_chars} characters")
    facts = loopguard.HeaderFacts(
        sender=sender,
        auto_submitted=_header(msg, "Auto-Submitted", problems),
        return_path=_header(msg, "Return-Path", problems),
        precedence=_header(msg, "Precedence", problems),
        has_list_headers=any(msg.get(h) is not None for h in _LIST_HEADERS),
        auto_response_suppress=_header(msg, "X-Auto-Response-Suppress", problems),
        is_bounce=bounce is not None,
    )
    return Mail(
        message_id=message_id,
        key=key,
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        text=text,
        full_text=full,
        in_reply_to=in_reply_to_ids[0] if in_reply_to_ids else "",
        references=refs,
        date=date,
        attachments=[] if bounce is not None else _attachments(msg, max_attachment_bytes, problems),
        no_auto_reply=loopguard.no_auto_reply_reason(facts),
        bounce=bounce,
        problems=problems,
    )


def parse_headers_only(raw_headers: bytes, size: int, *, languages: list[str]) -> Mail:
    """A mail too large to fetch: its headers and a note for the operator."""
    mail = parse_mail(raw_headers + b"\r\n", max_attachment_bytes=0, languages=languages)
    note = f"[This e-mail is {size} bytes, above the gateway's limit; open it in the mailbox to read it.]"
    return Mail(
        message_id=mail.message_id,
        key=mail.key,
        sender=mail.sender,
        sender_name=mail.sender_name,
        subject=mail.subject,
        text=note,
        full_text=note,
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        date=mail.date,
        no_auto_reply=mail.no_auto_reply,
        bounce=mail.bounce,
        problems=[*mail.problems, f"message of {size} bytes not fetched"],
    )


# ---------------------------------------------------------------- the envelope


def inbound_id(account: str, key: str) -> str:
    """``email:<account>:<Message-ID>`` (without the angle brackets), or the raw-bytes hash."""
    return f"{CHANNEL}:{account}:{key.strip('<>')}"


def text_for_operator(mail: Mail) -> str:
    """The mail's text; a new conversation (not a reply) starts with its subject."""
    is_reply = bool(mail.in_reply_to) or replies.reply_subject(mail.subject) == mail.subject
    if mail.subject and not is_reply:
        return f"{mail.subject}\n\n{mail.text}".strip()
    return mail.text or (mail.subject if not mail.attachments else "")


def to_inbound(account: str, mail: Mail, attachments: list[Attachment], now: datetime) -> Inbound:
    return Inbound(
        id=inbound_id(account, mail.key),
        channel=CHANNEL,
        account=account,
        chat_id=mail.sender,
        user_id=mail.sender,
        profile=ClientProfile(name=mail.sender_name, email=mail.sender),
        text=text_for_operator(mail),
        attachments=attachments,
        channel_msg_id=mail.message_id,
        received_at=now,
        no_auto_reply=bool(mail.no_auto_reply),
        no_auto_reply_reason=mail.no_auto_reply,
        subject=mail.subject,
    )


def attachment_envelope(att: FileAttachment, ref: str) -> Attachment:
    extra: dict[str, str] = {}
    if att.omitted:
        extra["omitted"] = att.omitted
    if att.inline:
        extra["inline"] = "true"
    if att.content_id:
        extra["content_id"] = att.content_id
    name = att.name if att.name.strip() else "attachment"
    return Attachment(kind=att.kind, name=name[:200], mime=att.mime, size=att.size, ref=ref, extra=extra)  # type: ignore[arg-type]
