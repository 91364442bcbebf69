"""A visitor's WebSocket frame -> :class:`openlines.envelopes.Inbound`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


def _contact(obj: dict[str, Any], client_id: str) -> tuple[str, str, str]:
    """The pre-chat form's e-mail, phone and consent of a frame, checked; FrameError says which is wrong."""
    values = []
    for field in ("email", "phone", "consent"):
        v = obj.get(field, "")
        if v is None:
            v = ""
        if not isinstance(v, str) or not _encodable(v):
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
    if not _encodable(text):
        raise FrameError("bad_frame", '"text" is not valid Unicode', client_id)
    if len(text) > max_text:
        raise FrameError("too_large", f"text is longer than {max_text} characters", client_id)
    name = obj.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or not _encodable(name):
        raise FrameError("bad_frame", '"name" must be a string', client_id)
    email, phone, consent = _contact(obj, client_id)
    return ClientMessage(
        id=client_id,
        text=text,
        name=" ".join(name.split())[:MAX_NAME],
        files=tuple(dict.fromkeys(file_ids)),
        email=email,
        phone=phone,
        consent=consent,
    )


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
    account: str, visitor: str, msg: ClientMessage, now: datetime, attachments: list[Attachment] | None = None
) -> Inbound:
    return Inbound(
        id=inbound_id(account, visitor, msg.id),
        channel=CHANNEL,
        account=account,
        chat_id=visitor,
        user_id=visitor,
        profile=ClientProfile(name=msg.name, email=msg.email, phone=msg.phone, consent=msg.consent),
        text=msg.text,
        attachments=attachments or [],
        channel_msg_id=msg.id,
        received_at=now,
    )
