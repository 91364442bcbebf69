"""The WhatsApp webhook edge with a real nats-server and the local Cloud API peer: handshake, signatures,
every inbound type, files kept before the PubAck, status callbacks as delivery marks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp
import pytest
from peers.whatsapp_api import FakeWhatsApp, contact, message, new_wamid, notification, text
from support.timing import wait_for
from support.whatsapp import (
    APP,
    CLIENT,
    SALES,
    SHOP,
    events_of,
    fake_whatsapp,
    inbound_of,
    running_gateway,
)

from openlines import subjects
from openlines.envelopes import Inbound

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def stream_size(nc: Any, stream: str = subjects.STREAM_IN) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages)


@pytest.fixture
async def peer() -> Any:
    async with fake_whatsapp() as p:
        yield p


@pytest.fixture
async def gateway(nats_server: Any, nc: Any, peer: FakeWhatsApp) -> Any:
    async with running_gateway(nats_server.url, peer) as svc:
        yield svc


async def test_the_verification_handshake_answers_the_challenge_only_to_the_apps_verify_token(
    gateway: Any, peer: FakeWhatsApp
) -> None:
    status, body, challenge = await peer.verify_webhook()
    assert (status, body) == (200, challenge)
    status, body, _ = await peer.verify_webhook("not-the-verify-token-0123456789")
    assert status == 403 and json.loads(body)["error"] == "bad_verify_token"
    async with aiohttp.ClientSession() as http:
        base = peer.hook.url
        async with http.get(base, params={"hub.mode": "unsubscribe", "hub.challenge": "1"}) as r:
            assert r.status == 400
        async with http.get(base.replace(f"/whatsapp/{APP}", "/whatsapp/other"), params={"hub.mode": "subscribe"}) as r:
            assert r.status == 404


async def test_a_signed_text_message_is_published_once_with_the_clients_name_phone_and_time(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    msg = text(CLIENT, "Does it come in another color?", ts=1749416383)
    body = notification(SHOP["phone_number_id"], [msg], contacts=[contact(CLIENT, "Sheena Nelson")])
    status, answer = await peer.post(body)
    assert status == 200 and answer["messages"] == 1 and answer["duplicates"] == 0
    (got,) = await inbound_of(nc)
    assert got.id == f"whatsapp:shop_wa:{msg['id']}" and got.channel_msg_id == msg["id"]
    assert (got.channel, got.account, got.chat_id, got.user_id) == ("whatsapp", "shop_wa", CLIENT, CLIENT)
    assert got.text == "Does it come in another color?"
    assert (got.profile.name, got.profile.phone) == ("Sheena Nelson", "+16505551234")
    assert got.sent_at is not None and int(got.sent_at.timestamp()) == 1749416383
    # WhatsApp sends a notification again when it got no 200: stored once.
    status, answer = await peer.post(body)
    assert status == 200 and answer["duplicates"] == 1
    assert len(await inbound_of(nc)) == 1


async def test_forged_missing_or_foreign_signatures_are_refused_and_nothing_is_published(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    body = json.dumps(notification(SHOP["phone_number_id"], [text(CLIENT, "forged")])).encode()
    before = await stream_size(nc)
    other_body = b'{"object":"whatsapp_business_account","entry":[]}'
    attempts = [
        "",  # no header
        "sha256=" + "0" * 64,
        peer.sign(body, secret="another-app-secret-0123456789abcd"),
        peer.sign(other_body),  # a real signature of another body
        "sha1=" + hashlib.sha1(body).hexdigest(),
        peer.sign(body).upper(),  # "SHA256=": not the header's form
    ]
    for sig in attempts:
        status, answer = await peer.post(body, signature=sig)
        assert status == 401 and answer["error"] == "bad_signature", sig
    # A body changed after signing (one byte) is refused too.
    status, _ = await peer.post(body.replace(b"forged", b"Forged"), signature=peer.sign(body))
    assert status == 401
    assert await stream_size(nc) == before
    assert await stream_size(nc, subjects.STREAM_EVT) == 0, "no dead letter either: an unsigned body is nobody's"


async def test_a_body_over_the_limit_is_413_before_it_is_checked(nats_server: Any, nc: Any, peer: FakeWhatsApp) -> None:
    async with running_gateway(nats_server.url, peer, max_body=2048):
        big = notification(SHOP["phone_number_id"], [text(CLIENT, "x" * 4000)])
        status, answer = await peer.post(big)
        assert status == 413 and answer["error"] == "too_large"
        assert await stream_size(nc) == 0


async def test_signed_content_that_cannot_be_read_or_routed_is_kept_as_a_dead_letter_and_answered_200(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    status, answer = await peer.post(b"{not json")
    assert status == 200 and "not valid JSON" in answer["dead_letter"]
    unknown = notification("999000111222333", [text(CLIENT, "to a number nobody configured")])
    status, answer = await peer.post(unknown)
    assert status == 200 and answer["dead_letters"] == 1
    no_sender = notification(SHOP["phone_number_id"], [{"id": new_wamid(), "type": "text", "text": {"body": "who?"}}])
    status, answer = await peer.post(no_sender)
    assert status == 200 and answer["dead_letters"] == 1 and answer["messages"] == 0
    dead = await events_of(nc, "dead_letter")
    reasons = [d.reason for d in dead]
    assert any("not valid JSON" in r for r in reasons)
    assert any("999000111222333" in r and "OPENLINES_WHATSAPP_ACCOUNTS" in r for r in reasons)
    assert any("without a usable sender" in r for r in reasons)
    assert await stream_size(nc) == 0


async def test_other_webhook_fields_and_unknown_objects_are_answered_200_and_not_published(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    template_update = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}],
    }
    for body in (template_update, {"object": "page", "entry": []}, {"object": "whatsapp_business_account"}):
        status, _ = await peer.post(body)
        assert status == 200
    assert await stream_size(nc) == 0 and await stream_size(nc, subjects.STREAM_EVT) == 0


async def test_nats_down_is_503_so_whatsapp_sends_it_again_and_it_is_stored_when_back(
    nats_server: Any, nc: Any, peer: FakeWhatsApp
) -> None:
    async with running_gateway(nats_server.url, peer, publish_timeout=1.0):
        body = notification(SHOP["phone_number_id"], [text(CLIENT, "while NATS is away")])
        nats_server.stop()
        status, answer = await peer.post(body)
        assert status == 503 and answer["error"] == "unavailable"
        nats_server.start()
        status, _ = await peer.deliver(body, attempts=200, pause=0.1)
        assert status == 200
    assert [m.text for m in await inbound_of(nc)] == ["while NATS is away"]


async def test_messages_of_two_numbers_in_one_notification_go_to_their_accounts(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    shop = notification(SHOP["phone_number_id"], [text(CLIENT, "to the shop")])
    sales = notification(SALES["phone_number_id"], [text(CLIENT, "to sales")])
    both = {"object": "whatsapp_business_account", "entry": shop["entry"] + sales["entry"]}
    status, answer = await peer.post(both)
    assert status == 200 and answer["messages"] == 2
    assert [m.text for m in await inbound_of(nc, "shop_wa")] == ["to the shop"]
    assert [m.text for m in await inbound_of(nc, "sales_wa")] == ["to sales"]


async def published(nc: Any, wamid: str) -> Inbound:
    async def find() -> Inbound | None:
        return next((m for m in await inbound_of(nc) if m.channel_msg_id == wamid), None)

    return await wait_for(find, what=f"message {wamid}")


async def test_every_inbound_type_reaches_the_operator_as_text_an_attachment_or_a_notice(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    phone = SHOP["phone_number_id"]
    media_id = peer.add_client_media(phone, PNG, "image/png")
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        (message(CLIENT, "image", image={"id": media_id, "mime_type": "image/png", "caption": "my cat"}), "my cat", ["image"]),
        (
            message(CLIENT, "location", location={"latitude": 37.46, "longitude": -122.21, "name": "HQ", "address": "1 Way"}),
            "",
            ["location"],
        ),
        (
            message(
                CLIENT,
                "contacts",
                contacts=[{"name": {"formatted_name": "Chandler Bing"}, "phones": [{"phone": "+1 555"}]}],
            ),
            "",
            ["contact"],
        ),
        (
            message(
                CLIENT, "interactive", interactive={"type": "button_reply", "button_reply": {"id": "y", "title": "Yes, please"}}
            ),
            "Yes, please",
            [],
        ),
        (
            message(
                CLIENT,
                "interactive",
                interactive={"type": "list_reply", "list_reply": {"id": "x", "title": "Express", "description": "1-2 days"}},
            ),
            "Express (1-2 days)",
            [],
        ),
        (message(CLIENT, "button", button={"payload": "STOP", "text": "Stop promotions"}), "Stop promotions", []),
        (message(CLIENT, "reaction", reaction={"message_id": new_wamid(), "emoji": "👍"}), "(reaction) 👍", []),
        (
            message(
                CLIENT,
                "unsupported",
                errors=[{"code": 131051, "title": "Message type unknown", "error_data": {"details": "not supported."}}],
            ),
            "does not pass on to businesses: Message type unknown: not supported. (131051)",
            [],
        ),
        (
            message(CLIENT, "system", system={"body": "User A changed from 1 to 2", "type": "user_changed_number"}),
            "(WhatsApp: User A changed from 1 to 2)",
            [],
        ),
        (message(CLIENT, "poll_vote_of_the_future", poll_vote_of_the_future={"x": 1}), "desk cannot show", []),
        (text(CLIENT, "look at this", context={"forwarded": True}), "(forwarded) look at this", []),
    ]
    for msg, _, _ in cases:
        status, _ = await peer.post(notification(phone, [msg], contacts=[contact(CLIENT)]))
        assert status == 200, msg["type"]
    for msg, expected, kinds in cases:
        got = await published(nc, msg["id"])
        assert expected in got.text, (msg["type"], got.text)
        assert [a.kind for a in got.attachments] == kinds, msg["type"]
    image = await published(nc, cases[0][0]["id"])
    (att,) = image.attachments
    assert att.ref.startswith("ol-wa-files:shop_wa/") and att.mime == "image/png" and att.size == len(PNG)
    kept = await (await nc.jetstream().object_store(subjects.OBJ_WHATSAPP_FILES)).get(att.ref.split(":", 1)[1])
    assert kept.data == PNG
    location = await published(nc, cases[1][0]["id"])
    assert location.attachments[0].extra["latitude"] == "37.46" and location.attachments[0].name == "HQ"
    card = await published(nc, cases[2][0]["id"])
    assert card.attachments[0].name == "Chandler Bing" and card.attachments[0].extra["phone"] == "+1 555"


async def test_a_file_whatsapp_cannot_give_now_is_503_and_one_it_will_never_give_is_published_with_the_reason(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    phone = SHOP["phone_number_id"]
    media_id = peer.add_client_media(phone, b"%PDF-1.4 report", "application/pdf", "report.pdf")
    doc = message(CLIENT, "document", document={"id": media_id, "mime_type": "application/pdf", "filename": "report.pdf"})
    body = notification(phone, [doc], contacts=[contact(CLIENT)])
    peer.fail_media(2)  # "API Service: temporary due to downtime": nothing is published, WhatsApp sends it again
    status, answer = await peer.post(body)
    assert status == 503 and answer["error"] == "unavailable"
    assert await stream_size(nc) == 0
    status, _ = await peer.post(body)
    assert status == 200
    got = await published(nc, doc["id"])
    assert got.attachments[0].name == "report.pdf" and got.attachments[0].ref.startswith("ol-wa-files:shop_wa/")
    # A media id WhatsApp no longer knows (files are kept about 30 days): the message still reaches the operator.
    gone = message(CLIENT, "image", image={"id": "123456", "mime_type": "image/jpeg", "caption": "old photo"})
    status, _ = await peer.post(notification(phone, [gone]))
    assert status == 200
    lost = await published(nc, gone["id"])
    assert lost.text == "old photo"
    assert lost.attachments[0].ref == "" and "WhatsApp did not give the file" in lost.attachments[0].extra["omitted"]


async def test_a_media_url_on_a_foreign_host_is_never_fetched(nats_server: Any, nc: Any, peer: FakeWhatsApp) -> None:
    """The URL comes from the API's answer; were it to point elsewhere, the token is not sent there."""
    async with running_gateway(nats_server.url, peer, whatsapp_api_base=peer.base.replace("127.0.0.1", "localhost")):
        media_id = peer.add_client_media(SHOP["phone_number_id"], PNG, "image/png")
        status, _ = await peer.post(
            notification(SHOP["phone_number_id"], [message(CLIENT, "image", image={"id": media_id, "mime_type": "image/png"})])
        )
        assert status == 200
        (got,) = await inbound_of(nc)
        assert got.attachments[0].ref == "" and "not on the Graph API" in got.attachments[0].extra["omitted"]
        assert not [c for c in peer.calls if c[1].startswith("/whatsapp_business/attachments/")]


async def test_status_callbacks_become_delivery_marks_and_a_failure_a_delivery_failed_event(
    gateway: Any, peer: FakeWhatsApp, nc: Any
) -> None:
    from peers.whatsapp_api import SentMessage, status
    from support import marks_of

    from gateway_whatsapp.normalise import Callback, encode_callback

    cb = encode_callback(Callback(session_id="s0123456789abcdef", message_id="out:s0123456789abcdef:r1", part=0))
    msg = SentMessage(SHOP["phone_number_id"], CLIENT, "text", {"biz_opaque_callback_data": cb}, new_wamid())
    # Out of order, "delivered" skipped, and one status sent twice.
    for state in ("read", "sent", "read"):
        code, _ = await peer.post(notification(SHOP["phone_number_id"], statuses=[status(msg, state)]))
        assert code == 200
    marks = await marks_of(nc, "s0123456789abcdef")
    assert sorted(m.status for m in marks) == ["read", "sent"]
    assert {m.message_id for m in marks} == {"out:s0123456789abcdef:r1"}
    part1 = {"biz_opaque_callback_data": cb.replace('"p":0', '"p":1')}
    failed = SentMessage(SHOP["phone_number_id"], CLIENT, "text", part1, new_wamid())
    code, _ = await peer.post(notification(SHOP["phone_number_id"], statuses=[status(failed, "failed", code=131026)]))
    assert code == 200
    bad = [m for m in await marks_of(nc, "s0123456789abcdef") if m.status == "failed"]
    assert len(bad) == 1 and bad[0].part == 1 and "131026" in bad[0].reason
    (evt,) = await events_of(nc, "delivery_failed")
    assert evt.session_id == "s0123456789abcdef" and evt.chat_id == CLIENT and "could not deliver" in evt.reason
    # A status of a message someone else sent (no callback data of ours) changes nothing.
    foreign = SentMessage(SHOP["phone_number_id"], CLIENT, "text", {}, new_wamid())
    code, _ = await peer.post(notification(SHOP["phone_number_id"], statuses=[status(foreign, "delivered")]))
    assert code == 200 and len(await marks_of(nc, "s0123456789abcdef")) == 3
