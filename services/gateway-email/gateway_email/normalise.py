"""A raw RFC 5322 mail -> what the gateway publishes. Pure: no I/O, no clock.

- Parsed with the stdlib ``email`` package and ``policy.default`` (encoded
  headers and charsets decoded); a part in an unknown or wrong charset is
  decoded as UTF-8, then Windows-1252, replacing what cannot be read, and the
  problem is noted — never an exception for a bad mail.
- text/plain preferred; HTML only mails are sanitised (nh3) and turned into
  text (:mod:`gateway_email.htmltext`).
- Quoted replies, reply headers ("On ... wrote:", "Von: ... Gesendet: ...")
  and signatures are stripped with ``mail-parser-reply`` for what the operator
  sees (docs/decisions/007-email-gateway.md), except where that would lose the
  customer's words (answers between or below quotes, inline forwards).
- Attachments are kept as attachments (bytes returned for the shell to store),
  larger ones are listed but not kept.
- Broken MIME: a multipart whose boundary the default parser cannot find
  (unquoted with "=", missing) is parsed again with the boundary its body
  actually uses. Headers with raw 8-bit bytes are decoded as UTF-8, else the
  mail's declared charsets, else Windows-1252 (never U+FFFD for a readable name).
- Forwarded mails (``message/rfc822``) become ``.eml`` attachments and their
  text is appended under a "---- Forwarded message ----" block.
- RFC 3834 facts for the loop guard, and reports (delivery status, read
  receipts, spam complaints, vacation replies, bulk mail) with the
  Message-IDs they refer to: those never open a chat.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from email import errors, message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from typing import Literal

from email_validator import EmailNotValidError, validate_email
from mailparser_reply.parser import EmailMessage as ReplyText

from gateway_email.core import loopguard, quotes, replies
from gateway_email.htmltext import html_to_text
from openlines.envelopes import Attachment, ClientProfile, Inbound

CHANNEL = "email"
MAX_MESSAGE_ID = 250
_LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "list-help", "list-subscribe", "list-owner", "list-archive")
# Headers vacation responders set instead of (or besides) Auto-Submitted.
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-vacation", "x-mailru-autoreply")
MAX_FORWARD_DEPTH = 3  # forwarded mails inside forwarded mails, shown this deep


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


ReportKind = Literal["failed", "delayed", "delivered", "read", "disposition", "complaint", "auto", "report"]


@dataclass(frozen=True, slots=True)
class Report:
    """A mail a machine wrote about another mail: never a chat, at most a status on the mail it is about.

    ``failed`` / ``delayed`` / ``delivered``: a delivery status notification
    (RFC 3464) or a bounce without one; ``read`` / ``disposition``: a read
    receipt (RFC 8098); ``complaint``: a spam complaint feedback report (ARF,
    RFC 5965); ``auto``: a vacation or other automatic reply, or bulk mail;
    ``report``: another ``multipart/report``.
    """

    kind: ReportKind
    refers_to: list[str]  # Message-IDs of the mail it is about, most likely first
    recipient: str  # whose delivery / reading it reports ("" when unknown)
    reason: str
    why: str = ""  # for ``auto``: the header or subject that shows a machine wrote it

    @property
    def original_message_id(self) -> str:
        return self.refers_to[0] if self.refers_to else ""


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
    report: Report | None = None  # set: a machine's mail, never a chat
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


def _raw_value(msg: Message, name: str) -> str | None:
    """A header's value as it came (8-bit bytes as surrogate escapes), unfolded; None when absent."""
    for k, v in msg.raw_items():
        if k.lower() == name.lower():
            return "".join(re.split(r"\r?\n", str(v)))
    return None


def _has_8bit(value: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in value)


def decode_8bit_header(data: bytes, hints: list[str]) -> str:
    """Header bytes sent without RFC 2047 encoding: UTF-8 (also when one stray byte is bad),
    else the charsets the mail declares for its bodies, else Windows-1252 (then Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    loose = data.decode("utf-8", "replace")
    bad = loose.count("\ufffd")
    good = sum(1 for c in loose if ord(c) > 127 and c != "\ufffd")
    if good > bad:
        return loose
    for charset in dict.fromkeys(_SUPERSETS.get(h, h) for h in hints):
        if charset in ("utf-8", "us-ascii"):
            continue
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _charset_hints(msg: Message) -> list[str]:
    try:
        return [c.lower() for c in msg.get_charsets() if c]
    except Exception:
        return []


def _header(msg: Message, name: str, problems: list[str]) -> str | None:
    """A header as text, None when absent; a header that will not decode is read raw and noted."""
    raw = _raw_value(msg, name)
    if raw is not None and _has_8bit(raw):
        text = decode_8bit_header(raw.encode("ascii", "surrogateescape"), _charset_hints(msg))
        problems.append(f"header {name} has unencoded 8-bit text")
        try:
            value: object = policy.default.header_factory(name, text)
        except Exception:
            value = text
        return " ".join(str(value).split()) if name.lower() != "subject" else str(value).strip()
    try:
        value = msg.get(name)
    except Exception as exc:  # policy.default parses lazily; broken headers raise here
        problems.append(f"header {name} unreadable: {exc.__class__.__name__}")
        # The value as it came, not parsed (get_all would parse it again and raise again).
        return " ".join((raw or "").split())
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
    name = "".join(" " if unicodedata.category(c) == "Cc" else c for c in name).replace("\ufffd", "")
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
    raw = part.get_payload()
    if (
        isinstance(raw, str)
        and any(isinstance(d, errors.InvalidBase64CharactersDefect) for d in part.defects)
        and (" " in raw.strip() or len(re.findall(r"[^A-Za-z0-9+/=\s]", raw)) * 20 > len(raw))
    ):
        # Labelled base64 but plainly text (a mailer's mistake): decoding it would only give noise.
        problems.append("text labelled base64 is not base64: read as it is")
        payload = raw.encode("utf-8", "surrogateescape")
    declared = (part.get_content_charset() or "us-ascii").lower()
    for charset in dict.fromkeys([_SUPERSETS.get(declared, declared), "utf-8", "cp1252"]):
        try:
            text = payload.decode(charset)
        except UnicodeDecodeError:
            continue
        except (LookupError, ValueError):  # unknown, or not even a name (a NUL in it)
            problems.append(f"unknown charset {declared!r}")
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

    The whole text is kept when stripping could lose what the customer wrote:
    answers below or between quoted lines, an inline forward, or a result
    with nothing of their own left (a mail that is all quote, a parser surprise).
    """
    text = text.strip()
    if not text:
        return ""
    if quotes.answers_after_quote(text) or quotes.has_forward(text):
        return text
    try:
        parsed = ReplyText(text=text, languages=languages or ["en"], keep_hyphen_lists=True).read()
        newest = parsed.replies[0].body.strip() if parsed.replies else ""
    except Exception:
        newest = ""
    newest = quotes.trim_trailing_quote(newest)
    return newest if quotes.own_words(newest) else text


# ---------------------------------------------------------------- attachments


@dataclass(slots=True)
class _Parts:
    attachments: list[FileAttachment] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # more text parts of the body (an iPhone's text after a photo)
    forwarded: list[EmailMessage] = field(default_factory=list)  # message/rfc822 parts


def _safe_name(name: str) -> str:
    name = re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]+', " ", name)
    return " ".join(name.split())[:80].strip(" .")


def _forwarded_bytes(part: Message) -> tuple[bytes, EmailMessage | None]:
    inner = part.get_payload()
    first = inner[0] if isinstance(inner, list) and inner else None
    if isinstance(first, EmailMessage):
        try:
            return first.as_bytes(policy=first.policy.clone(linesep="\r\n")), first
        except Exception:  # headers the generator refuses: the compat32 generator writes them as they came
            return first.as_bytes(policy=policy.compat32.clone(linesep="\r\n")), first
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    again = message_from_bytes(data, policy=policy.default) if data else None
    return data, again if isinstance(again, EmailMessage) else None


def _parts(msg: EmailMessage, max_bytes: int, problems: list[str]) -> _Parts:
    out = _Parts()
    try:
        parts = list(msg.iter_attachments()) if msg.is_multipart() else []
    except Exception as exc:
        problems.append(f"attachments unreadable: {exc.__class__.__name__}")
        return out
    for index, part in enumerate(parts, start=1):
        mime = part.get_content_type()
        try:
            name = part.get_filename() or ""
        except Exception:
            name = ""
        forwarded: EmailMessage | None = None
        try:
            if mime in ("message/rfc822", "message/global"):
                data, forwarded = _forwarded_bytes(part)
                if forwarded is not None:
                    out.forwarded.append(forwarded)
                if not name:
                    subject = str(forwarded.get("Subject", "") or "") if forwarded is not None else ""
                    name = f"{_safe_name(subject) or 'forwarded message'}.eml"
            elif part.is_multipart():
                continue
            elif part.get_content_maintype() == "text" and mime in ("text/plain", "text/html") and not name:
                # A text part without a file name is more of the body (Apple Mail puts the
                # signature after a photo), unless the sender marked it as an attachment.
                if (part.get_content_disposition() or "") != "attachment":
                    text = _decode_text(part, problems)
                    text = html_to_text(text) if mime == "text/html" else text.replace("\r\n", "\n")
                    if text.strip():
                        out.texts.append(text.strip())
                    continue
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
            else:
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
        except Exception as exc:
            problems.append(f"attachment {name or index!r} unreadable: {exc.__class__.__name__}")
            continue
        if not name:
            ext = {"text/calendar": ".ics", "text/plain": ".txt", "text/html": ".html"}.get(mime, "")
            name = f"attachment-{index}{ext}"
        cid = (part.get("Content-ID") or "").strip()
        inline = (part.get_content_disposition() or "") == "inline"
        if len(data) > max_bytes:
            out.attachments.append(FileAttachment(name, mime, len(data), None, f"larger than {max_bytes} bytes", inline, cid))
        else:
            out.attachments.append(FileAttachment(name, mime, len(data), data, "", inline, cid))
    return out


def _forward_block(inner: EmailMessage, problems: list[str], depth: int = 1) -> str:
    """A forwarded mail as the operator reads it: its From/Date/Subject and its text."""
    head = ["---- Forwarded message ----"]
    for name in ("From", "Date", "Subject", "To"):
        value = _header(inner, name, problems)
        if value:
            head.append(f"{name}: {value}")
    body = _body(inner, problems).strip()
    nested = _parts(inner, 0, problems) if depth < MAX_FORWARD_DEPTH else _Parts()
    chunks = ["\n".join(head), body, *nested.texts]
    chunks += [_forward_block(m, problems, depth + 1) for m in nested.forwarded]
    return "\n\n".join(c for c in chunks if c)


# ---------------------------------------------------------------- reports


_REPORT_PARTS = ("message/delivery-status", "message/disposition-notification", "message/feedback-report")
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver|delivery status|failure notice|returned mail|delivery failure|delivery has failed|nicht zustellbar|"
    r"non remis|не доставлено|недоставленное)",
    re.I,
)
_DELAY_TEXT = re.compile(
    r"(warning message only|do not need to resend|will (continue to )?(be )?retr|delayed|delivery delay)", re.I
)


def _field_text(part: Message, problems: list[str]) -> str:
    """The text of a report part (message/disposition-notification etc. are header blocks)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n".join(str(block) for block in payload if isinstance(block, Message))
    if isinstance(payload, str) and part.get("Content-Transfer-Encoding") is None:
        return payload
    return _decode_text(part, problems)


def _fields(text: str) -> dict[str, str]:
    """``Name: value`` lines of a report part (first value per name, lower-case names, unfolded)."""
    out: dict[str, str] = {}
    for found in re.finditer(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*(?:\r?\n[ \t].*)*)", text, re.M):
        out.setdefault(found.group(1).lower(), " ".join(found.group(2).split()))
    return out


def _returned_message_id(part: Message, problems: list[str]) -> str:
    """The Message-ID of the mail a report returns (message/rfc822 or text/rfc822-headers)."""
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        found = replies.message_ids(str(inner[0].get("Message-ID") or ""))
        return found[0] if found else ""
    text = inner if isinstance(inner, str) else _decode_text(part, problems)
    match = re.search(r"^Message-ID:\s*(<[^>\s]+>)", text, re.I | re.M)
    return match.group(1) if match else ""


def _report_kind(msg: EmailMessage, sender: str) -> str:
    """Which kind of machine-written report this is, by its structure ("" = none)."""
    if msg.get_content_type() == "multipart/report":
        return str(msg.get_param("report-type") or "").lower() or "report"
    if msg.is_multipart():
        for part in msg.iter_parts():
            if part.get_content_type() in _REPORT_PARTS:
                return part.get_content_type().split("/", 1)[1]
    local = sender.rsplit("@", 1)[0]
    if local in ("mailer-daemon", "postmaster") and _BOUNCE_SUBJECT.search(str(msg.get("Subject", ""))):
        return "delivery-status"
    return ""


def _report(msg: EmailMessage, report_type: str, problems: list[str]) -> Report:
    refs: list[str] = []
    recipient = ""
    reason = ""
    kind: ReportKind = "report"
    actions: list[str] = []
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
                action = str(block.get("Action") or "").strip().lower()
                if action:
                    actions.append(action)
                if (diag or status) and not reason:
                    reason = f"{action or 'failed'} {status or ''}: {' '.join(str(diag or '').split())}".strip()
        elif ctype == "message/disposition-notification":
            f = _fields(_field_text(part, problems))
            refs += replies.message_ids(f.get("original-message-id", ""))
            recipient = recipient or f.get("final-recipient", "").split(";", 1)[-1].strip().lower()
            disposition = f.get("disposition", "")
            kind = "read" if disposition.rsplit(";", 1)[-1].strip().lower().startswith("displayed") else "disposition"
            reason = f"disposition: {disposition}" if disposition else "read receipt"
        elif ctype == "message/feedback-report":
            f = _fields(_field_text(part, problems))
            kind = "complaint"
            recipient = recipient or f.get("original-rcpt-to", "").lower()
            reason = f"feedback report: {f.get('feedback-type', 'abuse')}"
            if f.get("user-agent"):
                reason += f" ({f['user-agent']})"
        elif ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            returned = _returned_message_id(part, problems)
            if returned:
                refs.append(returned)
    if report_type == "delivery-status" or actions:
        if any(a == "failed" for a in actions):
            kind = "failed"
        elif any(a == "delayed" for a in actions):
            kind = "delayed"
        elif actions and all(a in ("delivered", "relayed", "expanded") for a in actions):
            kind = "delivered"
        else:
            body = _body(msg, problems)
            kind = "delayed" if _DELAY_TEXT.search(body) and not re.search(r"permanent|fatal", body, re.I) else "failed"
    elif report_type == "disposition-notification" and kind == "report":
        kind = "read"
    elif report_type == "feedback-report":
        kind = "complaint"
    refs += replies.message_ids(str(msg.get("In-Reply-To") or ""))
    refs += list(reversed(replies.message_ids(str(msg.get("References") or ""))))
    if not refs:
        found = re.search(r"Message-ID:\s*(<[^>\s]+>)", _body(msg, problems), re.I)
        refs = [found.group(1)] if found else []
    if not reason:
        reason = " ".join(_body(msg, problems).split())[:300] or {"failed": "delivery failed"}.get(kind, report_type)
    return Report(kind=kind, refers_to=list(dict.fromkeys(refs)), recipient=recipient, reason=reason[:500])


def _auto_report(msg: EmailMessage, why: str, problems: list[str]) -> Report:
    """A vacation reply or bulk mail: about the mail it answers, if any."""
    refs = replies.message_ids(str(msg.get("In-Reply-To") or ""))
    refs += list(reversed(replies.message_ids(str(msg.get("References") or ""))))
    text = " ".join(_body(msg, problems).split())[:300]
    reason = f"{why}: {text}" if text else why
    return Report(kind="auto", refers_to=list(dict.fromkeys(refs)), recipient="", reason=reason[:500], why=why)


# ---------------------------------------------------------------- the whole mail


def _message_id(msg: Message, problems: list[str]) -> str:
    ids = replies.message_ids(_header(msg, "Message-ID", problems) or "")
    if not ids:
        return ""
    mid = ids[0]
    return mid if len(mid) <= MAX_MESSAGE_ID else ""


def _split_head(raw: bytes) -> tuple[bytes, bytes, bytes]:
    found = re.search(rb"\r?\n\r?\n", raw)
    if found is None:
        return raw, b"", b""
    return raw[: found.start()], raw[found.start() : found.end()], raw[found.end() :]


def repair_boundary(raw: bytes, subtype: str) -> bytes | None:
    """The mail with its top-level multipart boundary replaced by the one its body uses.

    For Content-Types the default parser misreads (an unquoted boundary with
    "=", as Outlook Express writes it) or that name none: the boundary is the
    ``--<token>`` line that most often starts a part (a header line follows).
    None when the body shows no such line.
    """
    head, sep, body = _split_head(raw)
    lines = body.splitlines()
    starts: Counter[bytes] = Counter()
    for line, after in itertools.pairwise(lines):
        token = line.rstrip()
        if token.startswith(b"--") and len(token) > 2 and re.match(rb"(?i)content-[a-z-]+:", after):
            starts[token[2:]] += 1
    if not starts:
        return None
    boundary = starts.most_common(1)[0][0]
    if len(boundary) > 200 or re.search(rb'[\x00-\x20"\\\x7f-\xff]', boundary):
        return None
    header = re.search(rb"(?im)^content-type:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", head)
    if header is None:
        return None
    fixed = b"Content-Type: multipart/" + subtype.encode("ascii", "replace") + b'; boundary="' + boundary + b'"'
    declared = re.search(rb'(?i)boundary\s*=\s*"?([^";\s]+)', header.group(0))
    if declared and declared.group(1) != boundary:
        # The closing line may use the declared boundary while the parts start with another one.
        body = body.replace(b"\n--" + declared.group(1) + b"--", b"\n--" + boundary + b"--")
    return head[: header.start()] + fixed + head[header.end() :] + sep + body


def _parse(raw: bytes, problems: list[str]) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    if parsed.get_content_maintype() == "multipart" and not parsed.is_multipart():
        # A multipart whose parts were not found: the default policy truncates an
        # unquoted boundary at "=", and some mailers name none at all.
        repaired = repair_boundary(raw, parsed.get_content_subtype())
        if repaired is not None:
            again = message_from_bytes(repaired, policy=policy.default)
            if isinstance(again, EmailMessage) and again.is_multipart() and again.get_payload():
                problems.append("MIME boundary repaired")
                return again
    return parsed


def parse_mail(raw: bytes, *, max_attachment_bytes: int, languages: list[str], max_text_chars: int = 20_000) -> Mail:
    """Parse one raw mail. Raises :class:`MailError` only when there is no usable sender."""
    problems: list[str] = []
    msg = _parse(raw, problems)
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
    report_type = _report_kind(msg, sender)
    report = _report(msg, report_type, problems) if report_type else None
    facts = loopguard.HeaderFacts(
        sender=sender,
        auto_submitted=_header(msg, "Auto-Submitted", problems),
        return_path=_header(msg, "Return-Path", problems),
        precedence=_header(msg, "Precedence", problems),
        has_list_headers=any(msg.get(h) is not None for h in _LIST_HEADERS),
        auto_response_suppress=_header(msg, "X-Auto-Response-Suppress", problems),
        is_bounce=report is not None,
        subject=subject,
        autoreply_header=_autoreply_header(msg, problems),
    )
    if report is None and (why := loopguard.not_a_chat_reason(facts)):
        report = _auto_report(msg, why, problems)
    if not sender and report is None:
        raise MailError("no valid sender address in From")
    full = _body(msg, problems).strip()
    parts = _Parts() if report is not None else _parts(msg, max_attachment_bytes, problems)
    own = "\n\n".join(t for t in [full, *parts.texts] if t)
    text = strip_quotes(own, languages)
    forwards = [_forward_block(inner, problems) for inner in parts.forwarded]
    if forwards:
        text = "\n\n".join(t for t in [text, *forwards] if t)
        own = "\n\n".join(t for t in [own, *forwards] if t)
    if len(text) > max_text_chars:
        text = text[:max_text_chars].rstrip() + "\n[… cut: the mail is longer]"
        problems.append(f"text cut to {max_text_chars} characters")
    return Mail(
        message_id=message_id,
        key=key,
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        text=text,
        full_text=own,
        in_reply_to=in_reply_to_ids[0] if in_reply_to_ids else "",
        references=refs,
        date=date,
        attachments=parts.attachments,
        no_auto_reply=_no_auto_reply(report, facts),
        report=report,
        problems=problems,
    )


def _autoreply_header(msg: Message, problems: list[str]) -> str:
    for name in _AUTOREPLY_HEADERS:
        value = (_header(msg, name, problems) or "").strip().lower()
        if value not in ("", "no", "false", "0"):
            return f"{name}: {value}"
    return ""


def _no_auto_reply(report: Report | None, facts: loopguard.HeaderFacts) -> str:
    if report is None:
        return loopguard.no_auto_reply_reason(facts)
    if report.kind in ("failed", "delayed", "delivered"):
        return "delivery status notification"
    if report.kind == "auto":
        return report.why
    return {"read": "read receipt", "disposition": "read receipt", "complaint": "feedback report"}.get(report.kind, "report")


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
        report=mail.report,
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


def to_inbound(account: str, mail: Mail, attachments: list[Attachment], now: datetime, *, chat_id: str = "") -> Inbound:
    """The envelope; ``chat_id`` = the conversation's client when the mail joins one from another address.

    Then the client's profile is left as it is (an empty profile changes
    nothing in the router) and the text says who wrote.
    """
    chat_id = chat_id or mail.sender
    text = text_for_operator(mail)
    profile = ClientProfile(name=mail.sender_name, email=mail.sender)
    if chat_id != mail.sender:
        who = f"{mail.sender_name} <{mail.sender}>" if mail.sender_name else mail.sender
        text = f"[From {who}, in this conversation]\n\n{text}".strip()
        profile = ClientProfile()
    return Inbound(
        id=inbound_id(account, mail.key),
        channel=CHANNEL,
        account=account,
        chat_id=chat_id,
        user_id=mail.sender,
        profile=profile,
        text=text,
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
