"""A visitor's WebSocket frame -> :class:`openlines.envelopes.Inbound`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import email_validator
import msgspec
import phonenumbers

from openlines.envelopes import Attachment, ClientProfile, Inbound

CHANNEL = "webchat"
MAX_NAME = 100
MAX_FILES = 10  # files one message may carry
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class FrameError(Exception):
    """A frame we refuse; the socket stays open. ``code`` is ``bad_frame`` or ``too_large``."""

    def __init__(self, code: str, detail: str, client_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client_id = client_id


MAX_CONSENT = 500


@dataclass(frozen=True, slots=True)
class ClientMessage:
    id: str
    text: str
    name: str
    files: tuple[str, ...] = ()  # ids of files this visitor uploaded (POST /files/<account>)
    email: str = ""  # from the pre-chat form: normalised, or refused with the reason
    phone: str = ""  # E.164
    consent: str = ""  # the consent text the visitor ticked
    page_url: str = ""  # the page the visitor wrote from, without query and fragment
    referrer: str = ""  # the page that sent them to it, likewise


def _contact(obj: dict[str, Any], client_id: str, plain: bool) -> tuple[str, str, str]:
    """The pre-chat form's e-mail, phone and consent of a frame, checked; FrameError says which is wrong.
    ``plain``: the frame has no JSON escape, so no string of it can hold a lone surrogate."""
    if "email" not in obj and "phone" not in obj and "consent" not in obj:
        return "", "", ""  # every message after the first: no form
    values = []
    for field in ("email", "phone", "consent"):
        v = obj.get(field, "")
        if v is None:
            v = ""
        if not isinstance(v, str) or not (plain or _encodable(v)):
            raise FrameError("bad_frame", f'"{field}" must be a string', client_id)
        values.append(" ".join(v.split()))
    email, phone, consent = values
    if email:
        try:
            email = email_validator.validate_email(email, check_deliverability=False).normalized
        except email_validator.EmailNotValidError as exc:
            raise FrameError("bad_frame", f'"email" is not an e-mail address: {exc}', client_id) from None
    if phone:
        try:
            number = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_possible_number(number):
            raise FrameError(
                "bad_frame", '"phone" must be a phone number with its country code, like +44 20 7946 0018', client_id
            )
        phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(consent) > MAX_CONSENT:
        raise FrameError("too_large", f'"consent" is longer than {MAX_CONSENT} characters', client_id)
    return email, phone, consent


def parse_frame(data: str, *, max_text: int, max_frame: int) -> ClientMessage:
    """Validate one text frame of the visitor protocol."""
    too_big = len(data.encode("utf-8")) > max_frame
    # Only a JSON escape (\ud800) can put a lone surrogate, which no UTF-8 consumer accepts, into a decoded string:
    # the frame itself encoded just now. Without one, the strings need no such check (most frames).
    plain = "\\u" not in data
    try:
        obj: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        if too_big:
            raise FrameError("too_large", f"frame is larger than {max_frame} bytes") from None
        raise FrameError("bad_frame", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")
    raw_id = obj.get("id")
    client_id = raw_id if isinstance(raw_id, str) and _CLIENT_ID.match(raw_id) else None
    if too_big:
        raise FrameError("too_large", f"frame is larger than {max_frame} bytes", client_id)
    if obj.get("type") != "message":
        raise FrameError("bad_frame", 'unknown or missing "type" (expected "message")', client_id)
    if client_id is None:
        raise FrameError("bad_frame", '"id" must be 1-64 characters of A-Z a-z 0-9 _ -')
    file_ids = obj.get("files", [])
    if file_ids is None:
        file_ids = []
    if not isinstance(file_ids, list) or not all(isinstance(f, str) and _FILE_ID.match(f) for f in file_ids):
        raise FrameError("bad_frame", '"files" must be a list of file ids the upload answered', client_id)
    if len(file_ids) > MAX_FILES:
        raise FrameError("too_large", f"{len(file_ids)} files; at most {MAX_FILES} per message", client_id)
    text = obj.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str) or (not text.strip() and not file_ids):
        raise FrameError("bad_frame", '"text" must be a non-empty string (or send "files")', client_id)
    if not (plain or _encodable(text)):
        raise FrameError("bad_frame", '"text" is not valid Unicode', client_id)
    if len(text) > max_text:
        raise FrameError("too_large", f"text is longer than {max_text} characters", client_id)
    name = obj.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or not (plain or _encodable(name)):
        raise FrameError("bad_frame", '"name" must be a string', client_id)
    email, phone, consent = _contact(obj, client_id, plain)
    page_url, referrer = _page(obj.get("page"), plain), _page(obj.get("referrer"), plain)
    return ClientMessage(
        id=client_id,
        text=text,
        name=" ".join(name.split())[:MAX_NAME],
        files=tuple(dict.fromkeys(file_ids)),
        email=email,
        phone=phone,
        consent=consent,
        page_url=page_url,
        referrer=referrer,
    )


MAX_URL = 1000


def _page(value: object, plain: bool = False) -> str:
    """An http(s) page address without its query and fragment (they can hold tokens or personal data); "" otherwise.

    Only shown to the operator, so a wrong one is dropped rather than refusing the visitor's message.
    """
    if not value or not isinstance(value, str) or len(value) > 4 * MAX_URL or not (plain or _encodable(value)):
        return ""
    try:
        url = urlsplit(value.strip())
    except ValueError:
        return ""
    if url.scheme not in ("http", "https") or not url.hostname:
        return ""
    return urlunsplit((url.scheme, url.netloc.rpartition("@")[2], url.path, "", ""))[:MAX_URL]


_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/(\d+)")),
    ("Opera", re.compile(r"\bOPR/(\d+)")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/(\d+)")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS)/(\d+)")),
    ("Safari", re.compile(r"\bVersion/(\d+)(?:\.\d+)*.*\bSafari/")),
)
_SYSTEMS = (
    ("Android", re.compile(r"\bAndroid\b")),
    ("iOS", re.compile(r"\b(?:iPhone|iPad|iPod)\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Linux", re.compile(r"\bLinux\b")),
)
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,2}$")


def browser_of(user_agent: str) -> str:
    """ "Chrome 131 on Windows" from a User-Agent header; "" when it names no browser we know."""
    ua = user_agent[:512]
    name = next((f"{b} {m.group(1)}" for b, rx in _BROWSERS if (m := rx.search(ua))), "")
    system = next((s for s, rx in _SYSTEMS if rx.search(ua)), "")
    return f"{name} on {system}" if name and system else name or system


def language_of(accept_language: str) -> str:
    """The visitor's first language from Accept-Language ("de-DE,de;q=0.9" -> "de-DE"); "" when none is readable."""
    first = accept_language[:200].split(",")[0].split(";")[0].strip()
    return first if _LANGUAGE.match(first) else ""


def _encodable(value: str) -> bool:
    # JSON escapes can smuggle lone surrogates in, which no UTF-8 consumer accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inbound_id(account: str, visitor: str, client_id: str) -> str:
    """Deterministic: a resend of the same client message id is the same envelope."""
    return f"{CHANNEL}:{account}:{visitor}:{client_id}"


def to_inbound(
    account: str,
    visitor: str,
    msg: ClientMessage,
    now: datetime,
    attachments: list[Attachment] | None = None,
    *,
    browser: str = "",
    language: str = "",
) -> Inbound:
    return Inbound(
        id=inbound_id(account, visitor, msg.id),
        channel=CHANNEL,
        account=account,
        chat_id=visitor,
        user_id=visitor,
        profile=ClientProfile(
            name=msg.name,
            email=msg.email,
            phone=msg.phone,
            consent=msg.consent,
            page_url=msg.page_url,
            referrer=msg.referrer,
            browser=browser,
            language=language,
        ),
        text=msg.text,
        attachments=attachments or [],
        channel_msg_id=msg.id,
        received_at=now,
    )
