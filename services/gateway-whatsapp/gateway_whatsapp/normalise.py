"""A Cloud API webhook body -> what to publish: client messages, status marks, dead letters, things ignored.

One POST carries ``entry[].changes[]``; a ``messages`` change holds
``value.messages`` (what clients wrote, each with ``from``, ``id`` = wamid,
``timestamp``, ``type`` and an object named like the type), ``value.statuses``
(what became of our messages) and sometimes ``value.errors``. Everything here
is pure (the caller passes ``now``) and reads the body defensively: a field of
an unexpected shape costs at most that message's extras, never the message,
and a message that cannot be told apart or answered (no ``id``, no ``from``)
becomes a dead letter rather than being dropped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway_whatsapp.accounts import Accounts, Number
from gateway_whatsapp.core.errors import GraphFailure
from openlines.envelopes import BAD_JSON, Attachment, ClientProfile, Inbound, MarkStatus

CHANNEL = "whatsapp"
FORWARDED = "(forwarded) "
EDITED = "(edited) "
FORWARDED_MANY = "(forwarded many times) "
# Types whose object names a file the gateway fetches by id, and what the attachment is called.
MEDIA_KINDS = {"image": "image", "video": "video", "document": "file", "sticker": "sticker", "audio": "audio"}
STATUSES: dict[str, MarkStatus] = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}
# Message types that say nothing a client wrote (the client opened the chat for the first time).
SILENT_TYPES = frozenset({"request_welcome"})
_WAMID = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces: it becomes a Nats-Msg-Id
_FROM = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CALLBACK_VERSION = 1
_WHERE = "OPENLINES_WHATSAPP_ACCOUNTS"


class BadWebhook(ValueError):
    """The body is not a webhook the gateway can read at all; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Media:
    """A client's file to fetch by id before the message is published (attachment ``index``)."""

    index: int
    media_id: str
    mime: str
    sha256: str


@dataclass(frozen=True, slots=True)
class ClientMessage:
    number: Number
    wa_type: str
    inbound: Inbound
    media: tuple[Media, ...] = ()


@dataclass(frozen=True, slots=True)
class Callback:
    """What the gateway put in ``biz_opaque_callback_data`` when it sent the message: it comes back with each status."""

    session_id: str
    message_id: str
    part: int


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    number: Number
    wamid: str
    status: MarkStatus
    at: datetime
    recipient: str
    callback: Callback | None
    failure: GraphFailure | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    account: str  # "" when no configured number is known
    key: str  # tells one from another (a wamid, or a digest)
    reason: str


@dataclass(slots=True)
class Parsed:
    messages: list[ClientMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # what was answered 200 and not published, for logs and metrics


def message_id(account: str, wamid: str) -> str:
    """The envelope id and Nats-Msg-Id of one client message."""
    return f"{CHANNEL}:{account}:{wamid}"


def encode_callback(cb: Callback) -> str:
    """``biz_opaque_callback_data`` of a send (at most 512 characters; ids are far shorter)."""
    return msgspec.json.encode({"v": CALLBACK_VERSION, "s": cb.session_id, "m": cb.message_id, "p": cb.part}).decode()


def decode_callback(value: Any) -> Callback | None:
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        data = msgspec.json.decode(value)
    except BAD_JSON:
        return None
    if not isinstance(data, dict) or data.get("v") != CALLBACK_VERSION:
        return None
    sid, mid, part = data.get("s"), data.get("m"), data.get("p")
    if not isinstance(sid, str) or not _SESSION.match(sid) or not isinstance(mid, str) or not 0 < len(mid) <= 300:
        return None
    if type(part) is not int or part < 0:
        return None
    return Callback(session_id=sid, message_id=mid, part=part)


def _digest(value: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(value)).hexdigest()[:40]


def _str(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _obj(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _list(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def _time(value: str) -> datetime | None:
    try:
        seconds = int(value)
    except ValueError:
        return None
    if not 0 < seconds < 10**11:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _extra(**fields: object) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items() if v not in (None, "")}


def failure_of(errors: list[Any]) -> GraphFailure | None:
    """The first error object of a webhook (``statuses[].errors``, ``messages[].errors``, ``value.errors``)."""
    for err in errors:
        if isinstance(err, dict):
            code = err.get("code")
            return GraphFailure(
                code=code if type(code) is int else 0,
                message=_str(err, "title") or _str(err, "message"),
                details=_str(_obj(err, "error_data"), "details"),
            )
    return None


def _failure_text(f: GraphFailure | None) -> str:
    if f is None:
        return ""
    text = f.message or "error"
    if f.details and f.details != f.message:
        text = f"{text}: {f.details}"
    return f"{text} ({f.code})" if f.code else text


def parse_webhook(body: bytes, accounts: Accounts, app_id: str, now: datetime) -> Parsed:
    """Everything one webhook POST says, for the app whose secret signed it."""
    try:
        obj: Any = msgspec.json.decode(body)
    except BAD_JSON as exc:
        raise BadWebhook(f"body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadWebhook("body must be a JSON object (a webhook notification)")
    out = Parsed()
    if obj.get("object") != "whatsapp_business_account":
        out.ignored.append(f"object:{str(obj.get('object'))[:40]}")
        return out
    for entry in _list(obj, "entry"):
        for change in _list(entry, "changes"):
            if not isinstance(change, dict):
                continue
            field_name = _str(change, "field")
            value = _obj(change, "value")
            if field_name != "messages":
                # account_update, message_template_status_update, phone_number_quality_update, ...: not a chat.
                out.ignored.append(f"field:{field_name[:40] or 'none'}")
                continue
            _messages_change(value, accounts, app_id, now, out)
    return out


def _messages_change(value: dict[str, Any], accounts: Accounts, app_id: str, now: datetime, out: Parsed) -> None:
    phone_id = _str(_obj(value, "metadata"), "phone_number_id")
    number = accounts.by_phone_id.get(phone_id)
    has_content = bool(_list(value, "messages") or _list(value, "statuses") or _list(value, "errors"))
    if number is None or number.app != app_id:
        if has_content:
            why = (
                f"no phone number with phone_number_id {phone_id!r} is configured in {_WHERE}"
                if number is None
                else f"phone_number_id {phone_id} belongs to app {number.app!r}, not to app {app_id!r} whose webhook this is"
            )
            out.dead.append(DeadLetter(account="", key=_digest(value), reason=why))
        return
    contacts = [c for c in _list(value, "contacts") if isinstance(c, dict)]
    # An error WhatsApp reports beside the messages (131000 "Unsupported webhook payload") is about them.
    beside = _failure_text(failure_of(_list(value, "errors")))
    for raw in _list(value, "messages"):
        _message(raw, number, contacts, now, out, beside)
    for raw in _list(value, "statuses"):
        _status(raw, number, now, out)
    errors = _list(value, "errors")
    if errors and not _list(value, "messages"):
        f = failure_of(errors)
        out.dead.append(
            DeadLetter(account=number.account, key=_digest(value), reason=f"WhatsApp reported an error: {_failure_text(f)}")
        )


def _profile(sender: str, contacts: list[dict[str, Any]]) -> ClientProfile:
    match = next((c for c in contacts if _str(c, "wa_id") == sender), contacts[0] if len(contacts) == 1 else None)
    name = _str(_obj(match, "profile"), "name") if match is not None else ""
    # A WhatsApp id is the client's phone number in international form (without the +).
    phone = f"+{sender}" if sender.isdigit() and 6 <= len(sender) <= 15 else ""
    return ClientProfile(name=name.strip()[:200], phone=phone)


def _message(raw: Any, number: Number, contacts: list[dict[str, Any]], now: datetime, out: Parsed, beside: str = "") -> None:
    if not isinstance(raw, dict):
        out.dead.append(DeadLetter(number.account, _digest(raw), "a message that is not an object"))
        return
    wamid, sender, wa_type = _str(raw, "id"), _str(raw, "from"), _str(raw, "type")
    if not _WAMID.match(wamid) or not _FROM.match(sender):
        reason = (
            "a message without a usable id (wamid)" if not _WAMID.match(wamid) else "a message without a usable sender (from)"
        )
        out.dead.append(DeadLetter(number.account, _digest(raw), reason))
        return
    if raw.get("group_id"):
        out.dead.append(DeadLetter(number.account, wamid, "a message in a WhatsApp group: groups are not supported"))
        return
    if wa_type in SILENT_TYPES:
        out.ignored.append(f"message:{wa_type}")
        return
    text, files, media = _content(raw, wa_type)
    context = _obj(raw, "context")
    if context.get("frequently_forwarded") is True:
        text = (FORWARDED_MANY + text).rstrip()
    elif context.get("forwarded") is True:
        text = (FORWARDED + text).rstrip()
    problem = _failure_text(failure_of(_list(raw, "errors"))) or beside
    if problem and wa_type != "unsupported":
        text = f"{text}\n(WhatsApp: {problem})" if text else f"(WhatsApp could not pass this message on: {problem})"
    referral = _obj(raw, "referral")
    if referral:
        ad = _str(referral, "headline") or _str(referral, "source_url") or "an ad"
        text = f"{text}\n(came from the ad: {ad})" if text else f"(came from the ad: {ad})"
    if not text and not files:
        text = f"(an empty {wa_type or 'untyped'} message)"
    out.messages.append(
        ClientMessage(
            number=number,
            wa_type=wa_type or "none",
            media=tuple(media),
            inbound=Inbound(
                id=message_id(number.account, wamid),
                channel=CHANNEL,
                account=number.account,
                chat_id=sender,
                user_id=sender,
                profile=_profile(sender, contacts),
                text=text,
                attachments=files,
                channel_msg_id=wamid,
                received_at=now,
                sent_at=_time(_str(raw, "timestamp")),
            ),
        )
    )


def _content(raw: dict[str, Any], wa_type: str) -> tuple[str, list[Attachment], list[Media]]:
    """The text, attachments and files to fetch of one message, by its type."""
    body = _obj(raw, wa_type) if wa_type else {}
    if wa_type == "text":
        return _str(body, "body"), [], []
    if wa_type == "edit":  # the client edited an earlier message: the new version is nested
        inner = _obj(body, "message")
        text, files, media = _content(inner, _str(inner, "type")) if inner else ("", [], [])
        return EDITED + text, files, media
    if wa_type == "revoke":
        return "(the client deleted a message)", [], []
    if wa_type in MEDIA_KINDS:
        mime = _str(body, "mime_type")
        kind = MEDIA_KINDS[wa_type]
        if wa_type == "audio" and body.get("voice") is True:
            kind = "voice"
        media_id = _str(body, "id")
        att = Attachment(
            kind=kind,  # type: ignore[arg-type]
            name=_str(body, "filename")[:255],
            mime=mime.split(";", 1)[0].strip().lower(),
            extra=_extra(media_id=media_id, sha256=_str(body, "sha256"), animated=body.get("animated") is True or None),
        )
        media = [Media(index=0, media_id=media_id, mime=att.mime, sha256=_str(body, "sha256"))] if media_id else []
        return _str(body, "caption"), [att], media
    if wa_type == "location":
        lat, lon = body.get("latitude"), body.get("longitude")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return "(a location without coordinates)", [], []
        att = Attachment(
            kind="location",
            name=_str(body, "name")[:200],
            extra=_extra(latitude=lat, longitude=lon, address=_str(body, "address")[:500], url=_str(body, "url")[:500]),
        )
        return "", [att], []
    if wa_type == "contacts":
        cards = [_contact(c) for c in _list(raw, "contacts") if isinstance(c, dict)]
        return ("" if cards else "(a contact card without contacts)"), cards, []
    if wa_type == "interactive":
        return _interactive(body), [], []
    if wa_type == "button":  # a quick-reply button of a template
        return _str(body, "text") or _str(body, "payload"), [], []
    if wa_type == "reaction":
        emoji = _str(body, "emoji")
        return (f"(reaction) {emoji}" if emoji else "(reaction removed)"), [], []
    if wa_type == "unsupported":
        problem = _failure_text(failure_of(_list(raw, "errors")))
        why = f": {problem}" if problem else ""
        return f"(the client sent a message WhatsApp does not pass on to businesses{why})", [], []
    if wa_type == "system":
        return f"(WhatsApp: {_str(body, 'body') or _str(body, 'type') or 'a system message'})", [], []
    if wa_type == "order":
        items = [i for i in _list(body, "product_items") if isinstance(i, dict)]
        listed = ", ".join(f"{_str(i, 'product_retailer_id')} x{_str(i, 'quantity')}" for i in items[:20])
        note = _str(body, "text")
        return f"(order: {listed or 'no items'}){' ' + note if note else ''}", [], []
    return f"(a {wa_type or 'untyped'} message the desk cannot show; see it in the WhatsApp Business app)", [], []


def _interactive(body: dict[str, Any]) -> str:
    kind = _str(body, "type")
    reply = _obj(body, kind)
    if kind == "button_reply":
        return _str(reply, "title") or _str(reply, "id")
    if kind == "list_reply":
        title, description = _str(reply, "title") or _str(reply, "id"), _str(reply, "description")
        return f"{title} ({description})" if description else title
    if kind == "nfm_reply":  # a WhatsApp Flow's answer
        return f"(form answered) {_str(reply, 'body') or _str(reply, 'name')}".strip()
    return f"(an interactive {kind or 'untyped'} reply)"


def _contact(card: dict[str, Any]) -> Attachment:
    name = _obj(card, "name")
    phones = [p for p in _list(card, "phones") if isinstance(p, dict)]
    emails = [e for e in _list(card, "emails") if isinstance(e, dict)]
    first = phones[0] if phones else {}
    return Attachment(
        kind="contact",
        name=(_str(name, "formatted_name") or " ".join(p for p in (_str(name, "first_name"), _str(name, "last_name")) if p))[
            :200
        ],
        extra=_extra(
            phone=_str(first, "phone"),
            wa_id=_str(first, "wa_id"),
            first_name=_str(name, "first_name"),
            last_name=_str(name, "last_name"),
            email=_str(emails[0], "email") if emails else "",
            org=_str(_obj(card, "org"), "company"),
        ),
    )


def _status(raw: Any, number: Number, now: datetime, out: Parsed) -> None:
    if not isinstance(raw, dict):
        out.ignored.append("status:not-an-object")
        return
    status = STATUSES.get(_str(raw, "status"))
    wamid = _str(raw, "id")
    if status is None or not _WAMID.match(wamid):
        out.ignored.append(f"status:{_str(raw, 'status')[:20] or 'none'}")
        return
    at = _time(_str(raw, "timestamp"))
    out.statuses.append(
        StatusUpdate(
            number=number,
            wamid=wamid,
            status=status,
            at=at or now,
            recipient=_str(raw, "recipient_id"),
            callback=decode_callback(raw.get("biz_opaque_callback_data")),
            failure=failure_of(_list(raw, "errors")) if status == "failed" else None,
        )
    )
