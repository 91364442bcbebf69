"""One :class:`Outbound` -> Cloud API messages (*parts*), and how each is sent.

A template is one part (its name, language and variables; the outbound text is
only its body for the transcript). Otherwise the text, cut to WhatsApp's 4096
characters, comes first, then one message per attachment: a file is uploaded
(``/media``) and sent by the media id WhatsApp returns, as the type WhatsApp
takes it (an image it would refuse as an image goes as a document), a location
and a contact card as their own types. Every part carries
``biz_opaque_callback_data`` (session, message, part), which WhatsApp returns
with each status of that part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway_whatsapp.accounts import Number
from gateway_whatsapp.graph import Graph
from gateway_whatsapp.media import DeskFiles, FileProblem
from gateway_whatsapp.normalise import Callback, encode_callback
from openlines.envelopes import Attachment, Outbound, TemplateMessage
from openlines.split import split_text

MAX_TEXT = 4096  # characters of a text body the Cloud API takes
PartKind = Literal["text", "template", "file", "location", "contact"]
KB, MB = 1024, 1024 * 1024
# What WhatsApp takes as each media type (Cloud API "Supported media types"), and its size limit.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})
VIDEO_TYPES = frozenset({"video/mp4", "video/3gpp"})
AUDIO_TYPES = frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"})
LIMITS = {"image": 5 * MB, "video": 16 * MB, "audio": 16 * MB, "sticker": 500 * KB, "document": 100 * MB}


@dataclass(frozen=True, slots=True)
class Part:
    kind: PartKind
    text: str = ""
    attachment: Attachment | None = None
    template: TemplateMessage | None = None


def plan(out: Outbound) -> list[Part]:
    if out.template is not None:
        return [Part(kind="template", template=out.template)]
    parts = [Part(kind="text", text=chunk) for chunk in split_text(out.text, MAX_TEXT)]
    for att in out.attachments:
        kind: PartKind = "location" if att.kind == "location" else "contact" if att.kind == "contact" else "file"
        parts.append(Part(kind=kind, attachment=att))
    return parts


def media_type(att: Attachment, size: int) -> tuple[str, str]:
    """(WhatsApp type, "") or ("", why it cannot be sent) for an operator's file of ``size`` bytes."""
    mime = att.mime.split(";", 1)[0].strip().lower()
    if att.kind == "sticker" and mime == "image/webp" and size <= LIMITS["sticker"]:
        return "sticker", ""
    if mime in IMAGE_TYPES and size <= LIMITS["image"]:
        return "image", ""
    if mime in VIDEO_TYPES and size <= LIMITS["video"]:
        return "video", ""
    if mime in AUDIO_TYPES and size <= LIMITS["audio"]:
        return "audio", ""
    if size <= LIMITS["document"]:
        return "document", ""  # anything else, and media over their own limit, go as a document
    return "", f"attachment {att.name or 'file'!r} is {size} bytes; WhatsApp takes at most {LIMITS['document']} bytes"


def _envelope(out: Outbound, index: int) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": out.chat_id,
        "biz_opaque_callback_data": encode_callback(Callback(session_id=out.session_id, message_id=out.id, part=index)),
    }


def template_component(tpl: TemplateMessage) -> dict[str, Any]:
    params: list[dict[str, str]] = []
    for i, value in enumerate(tpl.params):
        param = {"type": "text", "text": value}
        if tpl.param_names:
            param["parameter_name"] = tpl.param_names[i]
        params.append(param)
    body: dict[str, Any] = {"name": tpl.name, "language": {"code": tpl.language}}
    if params:
        body["components"] = [{"type": "body", "parameters": params}]
    return body


def _location(att: Attachment) -> dict[str, Any]:
    try:
        lat, lon = float(att.extra["latitude"]), float(att.extra["longitude"])
    except (KeyError, ValueError):
        raise FileProblem("location attachment without latitude/longitude", permanent=True) from None
    loc: dict[str, Any] = {"latitude": lat, "longitude": lon}
    if att.name:
        loc["name"] = att.name
    if att.extra.get("address"):
        loc["address"] = att.extra["address"]
    return loc


def _contact(att: Attachment) -> dict[str, Any]:
    phone = att.extra.get("phone", "")
    first = att.extra.get("first_name", "") or att.name
    if not phone or not first:
        raise FileProblem("contact attachment without phone and first_name", permanent=True)
    name = {"formatted_name": att.name or first, "first_name": first}
    if att.extra.get("last_name"):
        name["last_name"] = att.extra["last_name"]
    return {"name": name, "phones": [{"phone": phone, "type": "CELL"}]}


async def send_part(graph: Graph, number: Number, files: DeskFiles, out: Outbound, part: Part, index: int) -> tuple[str, str]:
    """Make the part's Cloud API call(s); (wamid, WhatsApp type).

    Raises ``GraphError`` / ``GraphUnavailable`` (the API) or :class:`FileProblem` (an operator's file).
    """
    payload = _envelope(out, index)
    if part.kind == "template" and part.template is not None:
        payload.update(type="template", template=template_component(part.template))
    elif part.kind == "text":
        payload.update(type="text", text={"preview_url": False, "body": part.text})
    elif part.kind == "location" and part.attachment is not None:
        payload.update(type="location", location=_location(part.attachment))
    elif part.kind == "contact" and part.attachment is not None:
        payload.update(type="contacts", contacts=[_contact(part.attachment)])
    elif part.attachment is not None:
        att = part.attachment
        data = await files.read(att)
        wa_type, problem = media_type(att, len(data))
        if problem:
            raise FileProblem(problem, permanent=True)
        mime = att.mime.split(";", 1)[0].strip().lower() if wa_type != "document" else (att.mime or "application/octet-stream")
        media_id = await graph.upload(number, data, mime, att.name or "file")
        media: dict[str, Any] = {"id": media_id}
        if wa_type == "document":
            media["filename"] = att.name or "file"
        payload.update(type=wa_type, **{wa_type: media})
    else:
        raise FileProblem("nothing to send in this part", permanent=True)
    return await graph.send(number, payload), str(payload["type"])
