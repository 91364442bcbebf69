"""The pure parts of the WhatsApp gateway: what an error means, pacing, the plan of a send."""

from __future__ import annotations

import pytest

from gateway_whatsapp.core.errors import GraphFailure, classify
from gateway_whatsapp.deliver import MAX_TEXT, media_type, plan, template_component
from openlines.envelopes import Attachment, Outbound, TemplateMessage, utcnow


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (130429, 400, "throttle_number"),
        (80007, 400, "throttle_number"),
        (4, 429, "throttle_number"),
        (131056, 400, "throttle_user"),
        (1, 400, "transient"),
        (2, 503, "transient"),
        (131000, 500, "transient"),
        (0, 502, "transient"),  # a proxy's error page, no Graph error object
        (131047, 400, "permanent"),
        (131026, 400, "permanent"),
        (190, 401, "permanent"),
        (100, 400, "permanent"),
        (132001, 404, "permanent"),
        (368, 403, "permanent"),
    ],
)
def test_each_cloud_api_error_code_is_waited_out_retried_or_given_up(code: int, status: int, kind: str) -> None:
    assert classify(GraphFailure(status=status, code=code, message=f"(#{code}) title")).kind == kind


def test_the_reasons_an_operator_reads_say_what_happened_and_what_to_do() -> None:
    window = classify(GraphFailure(status=400, code=131047, message="(#131047) Re-engagement message"))
    assert window.window_closed and "24-hour window is closed" in window.reason and "template" in window.reason
    token = classify(GraphFailure(status=401, code=190, message="Error validating access token"))
    assert "renew it in OPENLINES_WHATSAPP_ACCOUNTS" in token.reason
    other = classify(GraphFailure(status=400, code=131009, message="(#131009) Parameter value is not valid", details="to: bad"))
    assert other.reason == "not delivered: (#131009) Parameter value is not valid: to: bad"


def out(**kw: object) -> Outbound:
    return Outbound(
        id="out:s1:r1", session_id="s1", channel="whatsapp", account="shop", chat_id="1650", created_at=utcnow(), **kw
    )  # type: ignore[arg-type]


def test_a_reply_is_its_text_then_one_message_per_file_and_a_template_is_one_message() -> None:
    files = [Attachment(kind="image", ref="ol-desk-files:s1/f1", mime="image/png"), Attachment(kind="location")]
    assert [p.kind for p in plan(out(text="hello", attachments=files))] == ["text", "file", "location"]
    assert [p.kind for p in plan(out(text="   ", attachments=files[:1]))] == ["file"]
    tpl = TemplateMessage(name="follow_up", language="en_US", params=["Ann", "A-1"])
    (only,) = plan(out(text="Hello Ann ...", template=tpl, attachments=files))
    assert only.kind == "template"
    assert template_component(tpl) == {
        "name": "follow_up",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "A-1"}]}],
    }
    named = TemplateMessage(name="n", language="de", params=["42"], param_names=["order_id"])
    assert template_component(named)["components"][0]["parameters"] == [
        {"type": "text", "text": "42", "parameter_name": "order_id"}
    ]
    assert template_component(TemplateMessage(name="hello", language="en_US")) == {"name": "hello", "language": {"code": "en_US"}}


@pytest.mark.parametrize(
    ("kind", "mime", "size", "expected"),
    [
        ("image", "image/jpeg", 1000, "image"),
        ("image", "image/png", 6 * 1024 * 1024, "document"),  # over the 5 MB of an image: still delivered, as a file
        ("image", "image/gif", 1000, "document"),  # WhatsApp takes no GIF as an image
        ("voice", "audio/ogg", 1000, "audio"),
        ("video", "video/mp4", 1000, "video"),
        ("sticker", "image/webp", 1000, "sticker"),
        ("image", "image/webp", 1000, "document"),
        ("file", "application/pdf", 1000, "document"),
        ("file", "application/zip", 101 * 1024 * 1024, ""),
    ],
)
def test_an_operators_file_goes_as_the_type_whatsapp_takes_it(kind: str, mime: str, size: int, expected: str) -> None:
    wa_type, problem = media_type(Attachment(kind=kind, mime=mime, name="f"), size)  # type: ignore[arg-type]
    assert wa_type == expected and bool(problem) == (expected == "")


def test_text_is_cut_at_4096_characters_an_emoji_counting_one() -> None:
    assert MAX_TEXT == 4096
    assert [p.text for p in plan(out(text="a" * 4000 + "\n" + "b" * 200))] == ["a" * 4000, "b" * 200]
    assert [len(p.text) for p in plan(out(text="😀" * 4097))] == [4096, 1]
