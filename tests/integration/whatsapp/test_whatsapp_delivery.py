"""Outbound to WhatsApp with a real nats-server and the local Cloud API: each part once, with the
platform's limits (throughput, pair rate, transient errors) waited out and its refusals reported as
delivery_failed and a failed mark the operator sees; files uploaded, templates sent by name."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
from peers.whatsapp_api import FakeWhatsApp
from support import marks_of
from support.timing import wait_for
from support.whatsapp import CLIENT, SALES, SHOP, events_of, fake_whatsapp, running_gateway

from desk.files import FileStore
from gateway_whatsapp.normalise import decode_callback
from gateway_whatsapp.sent import SentRecord, open_bucket
from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, Attachment, Outbound, TemplateMessage, encode, utcnow
from openlines.lanes import sent_key

PHONE = SHOP["phone_number_id"]
OTHER = "16505550000"


def outbound(out_id: str, chat: str = CLIENT, text: str = "", **kw: Any) -> Outbound:
    return Outbound(
        id=out_id,
        session_id=kw.pop("session_id", "s-test"),
        channel="whatsapp",
        account=kw.pop("account", SHOP["account"]),
        chat_id=chat,
        text=text,
        created_at=utcnow(),
        **kw,
    )


async def publish_out(nc: Any, out: Outbound) -> int:
    subject = subjects.outbound("whatsapp", out.account, subjects.chat_key("whatsapp", out.account, out.chat_id))
    ack = await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: out.id})
    return int(ack.seq)


async def acked(nc: Any, seq: int) -> bool:
    info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, "gateway-whatsapp")
    return info.ack_floor.stream_seq >= seq


async def record(nc: Any, out_id: str) -> SentRecord | None:
    kv = await open_bucket(nc.jetstream(), ttl=0, replicas=1)
    try:
        entry = await kv.get(sent_key(out_id))
    except Exception:
        return None
    return msgspec.json.decode(entry.value, type=SentRecord) if entry.value else None


def window_open(peer: FakeWhatsApp, *chats: str) -> None:
    for chat in chats or (CLIENT,):
        peer.age_window(PHONE, chat, hours=1)


def texts(peer: FakeWhatsApp, chat: str = CLIENT) -> list[str]:
    return [m.text for m in peer.sent_to(chat, "text")]


async def failures(nc: Any) -> list[Any]:
    return await events_of(nc, "delivery_failed")


async def test_a_reply_is_sent_once_tagged_and_its_status_callbacks_mark_it_sent_and_delivered(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        window_open(peer)
        seq = await publish_out(nc, outbound("out:s-test:r1", text="Hello from the shop"))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        (sent,) = peer.sent_to(CLIENT)
        assert sent.payload["messaging_product"] == "whatsapp" and sent.payload["recipient_type"] == "individual"
        assert sent.payload["text"] == {"preview_url": False, "body": "Hello from the shop"}
        cb = decode_callback(sent.callback)
        assert cb is not None and (cb.session_id, cb.message_id, cb.part) == ("s-test", "out:s-test:r1", 0)
        rec = await record(nc, "out:s-test:r1")
        assert rec is not None and rec.done and rec.wamids == [sent.wamid] and rec.uncertain == 0

        async def marked() -> list[str] | None:
            got = sorted(m.status for m in await marks_of(nc, "s-test"))
            return got if got == ["delivered", "sent"] else None

        await wait_for(marked, what="the sent and delivered marks")
        (read,) = [await peer.read(sent)]
        assert read[0] == 200
        await wait_for(lambda: _has_mark(nc, "read"), what="the read mark")
        assert await failures(nc) == []


async def _has_mark(nc: Any, status: str) -> bool:
    return any(m.status == status for m in await marks_of(nc, "s-test"))


async def test_a_long_reply_goes_as_several_messages_under_4096_characters(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        window_open(peer)
        long = "\n".join(f"line {i} " + "x" * 90 for i in range(100))
        seq = await publish_out(nc, outbound("out:long", text=long))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        parts = texts(peer)
        assert len(parts) == 3 and all(len(p) <= 4096 for p in parts) and "\n".join(parts) == long
        parts_of = [decode_callback(m.callback).part for m in peer.sent_to(CLIENT)]  # type: ignore[union-attr]
        assert parts_of == [0, 1, 2]


async def test_throughput_and_pair_rate_limits_are_waited_out_and_other_chats_go_on(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer, whatsapp_backoff=0.2, whatsapp_backoff_max=1.0):
        window_open(peer, CLIENT, OTHER)
        peer.fail(CLIENT, 131056, times=-1)  # pair rate for one client, until it is cleared
        first = await publish_out(nc, outbound("out:pair", text="to a client we wrote to a lot"))
        await publish_out(nc, outbound("out:other", chat=OTHER, text="to another client"))
        await wait_for(lambda: texts(peer, OTHER), what="the other chat delivered")
        assert texts(peer, OTHER) == ["to another client"] and texts(peer) == []  # the throttled chat still waits
        peer.clear(CLIENT)
        await wait_for(lambda: acked(nc, first), timeout=30, what="the throttled chat delivered after waiting")
        assert texts(peer) == ["to a client we wrote to a lot"]
        peer.fail("*", 130429, times=3)  # the number's throughput
        seq = await publish_out(nc, outbound("out:busy", text="when the number is busy"))
        await wait_for(lambda: acked(nc, seq), timeout=30, what="delivered after the throughput limit")
        assert texts(peer)[-1] == "when the number is busy"
        assert await failures(nc) == [], "limits are waited out, never reported as failures"


async def test_transient_errors_are_retried_and_given_up_after_the_attempts_with_the_reason(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer, whatsapp_max_attempts=3):
        window_open(peer)
        peer.fail(CLIENT, 131000, times=2)
        seq = await publish_out(nc, outbound("out:flaky", text="after two failures"))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        assert texts(peer) == ["after two failures"]
        peer.fail(CLIENT, 2, times=-1)
        await publish_out(nc, outbound("out:down", text="never"))
        (evt,) = await wait_for(lambda: failures(nc), what="delivery_failed")
        assert "gave up after 3 attempts" in evt.reason and "API Service" in evt.reason
        rec = await record(nc, "out:down")
        assert rec is not None and rec.done and rec.failed == evt.reason


async def test_permanent_refusals_are_delivery_failed_with_a_reason_and_a_failed_mark_on_the_message(
    nc: Any, nats_server: Any
) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        window_open(peer, CLIENT, OTHER)
        peer.fail(CLIENT, 131026, times=-1)
        await publish_out(nc, outbound("out:undeliverable", text="hello?", session_id="s-undeliverable"))
        (evt,) = await wait_for(lambda: failures(nc), what="delivery_failed")
        assert evt.session_id == "s-undeliverable" and evt.chat_id == CLIENT and evt.channel == "whatsapp"
        assert "could not deliver" in evt.reason and "131026" in evt.reason
        (mark,) = await marks_of(nc, "s-undeliverable")
        assert (mark.status, mark.message_id, mark.reason) == ("failed", "out:undeliverable", evt.reason)
        peer.expire_token(PHONE)
        await publish_out(nc, outbound("out:token", chat=OTHER, text="hi", session_id="s-token"))

        async def token_failure() -> Any:
            return next((e for e in await failures(nc) if e.session_id == "s-token"), None)

        evt = await wait_for(token_failure, what="the expired token reported")
        assert "renew it in OPENLINES_WHATSAPP_ACCOUNTS" in evt.reason


async def test_a_free_form_message_after_the_clients_24_hours_fails_as_window_closed(nc: Any, nats_server: Any) -> None:
    """The Cloud API accepts the send and reports 131047 in a failed status: the operator reads why."""
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        peer.age_window(PHONE, CLIENT, hours=25)
        seq = await publish_out(nc, outbound("out:late", text="are you still there?", session_id="s-late"))
        await wait_for(lambda: acked(nc, seq), what="handed to WhatsApp")

        async def failed() -> Any:
            return next((e for e in await failures(nc) if e.session_id == "s-late"), None)

        evt = await wait_for(failed, what="the window failure reported")
        assert "24-hour window is closed" in evt.reason and "template" in evt.reason
        assert [m.status for m in await marks_of(nc, "s-late")] == ["failed"]


async def test_a_template_is_sent_by_name_with_its_variables_even_outside_the_window(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        peer.age_window(PHONE, CLIENT, hours=72)
        peer.approve_template("follow_up", "en_US", params=2)
        tpl = TemplateMessage(name="follow_up", language="en_US", params=["Ann", "A-17"])
        seq = await publish_out(nc, outbound("out:tpl", text="Hello Ann, about A-17", template=tpl, session_id="s-tpl"))
        await wait_for(lambda: acked(nc, seq), what="sent")
        (sent,) = peer.sent_to(CLIENT)
        assert sent.type == "template" and sent.payload["template"]["name"] == "follow_up"
        params = sent.payload["template"]["components"][0]["parameters"]
        assert [p["text"] for p in params] == ["Ann", "A-17"]
        await wait_for(lambda: _has_status(nc, "s-tpl", "delivered"), what="delivered")
        # A template WhatsApp does not know (not approved, or another language) is refused at once.
        bad = TemplateMessage(name="follow_up", language="de", params=["Ann", "A-17"])
        await publish_out(nc, outbound("out:tpl-de", text="Hallo", template=bad, session_id="s-tpl"))
        (evt,) = await wait_for(lambda: failures(nc), what="delivery_failed")
        assert "132001" in evt.reason


async def _has_status(nc: Any, session: str, status: str) -> bool:
    return any(m.status == status for m in await marks_of(nc, session))


async def test_operator_files_are_uploaded_and_sent_by_media_id_as_the_type_whatsapp_takes(nc: Any, nats_server: Any) -> None:
    store = await FileStore.open(nc.jetstream())
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    photo = await store.put("s-files", "photo.png", "image/png", png)
    pdf = await store.put("s-files", "invoice.pdf", "application/pdf", b"%PDF-1.4 fake")
    gif = await store.put("s-files", "funny.gif", "image/gif", b"GIF89a" + b"\x00" * 10)
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        window_open(peer)
        files = [photo.attachment("https://desk.example.com"), pdf.attachment("https://desk.example.com")]
        files.append(gif.attachment("https://desk.example.com"))
        files.append(Attachment(kind="location", name="Shop", extra={"latitude": "59.43", "longitude": "24.75"}))
        seq = await publish_out(nc, outbound("out:files", text="your documents", attachments=files))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        sent = peer.sent_to(CLIENT)
        assert [m.type for m in sent] == ["text", "image", "document", "document", "location"]
        image, document, animation = sent[1].payload["image"], sent[2].payload["document"], sent[3].payload["document"]
        assert peer.media[image["id"]].data == png and "link" not in image
        assert document["filename"] == "invoice.pdf" and peer.media[document["id"]].data == b"%PDF-1.4 fake"
        assert animation["filename"] == "funny.gif", "WhatsApp takes no GIF as an image: it goes as a file"
        assert sent[4].payload["location"] == {"latitude": 59.43, "longitude": 24.75, "name": "Shop"}
        # A link alone, or a reference to nothing in the desk's store, is refused and never fetched.
        await publish_out(nc, outbound("out:link", text="", attachments=[Attachment(kind="file", url="http://127.0.0.1:1/x")]))
        (evt,) = await wait_for(lambda: failures(nc), what="delivery_failed")
        assert "not a file uploaded to the desk" in evt.reason


async def test_a_reply_for_a_number_this_gateway_does_not_serve_is_delivery_failed(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        await publish_out(nc, outbound("out:ghost", text="hello", account="ghost_wa"))
        (evt,) = await wait_for(lambda: failures(nc), what="delivery_failed")
        assert "ghost_wa" in evt.reason and peer.sent == []


async def test_a_part_whose_send_was_cut_short_is_sent_again_and_counted(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer) as gateway:
        window_open(peer)
        kv = await open_bucket(nc.jetstream(), ttl=0, replicas=1)
        # What a gateway killed right after starting the send leaves behind: the attempt, no result.
        await kv.put(sent_key("out:cut"), msgspec.json.encode(SentRecord(id="out:cut", attempting=1)))
        seq = await publish_out(nc, outbound("out:cut", text="never lost"))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        rec = await record(nc, "out:cut")
        assert rec is not None and rec.uncertain == 1 and rec.parts == 1 and rec.done
        assert texts(peer) == ["never lost"]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as resp:
            metrics = await resp.text()
        assert 'openlines_whatsapp_uncertain_resends_total{account="shop_wa"} 1.0' in metrics
        # A redelivery of a message already recorded done sends nothing.
        await publish_out(nc, outbound("out:cut", text="never lost"))
        assert texts(peer) == ["never lost"]


async def test_a_stopping_gateway_hands_back_what_it_holds_and_the_next_one_delivers_it_once(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer:
        window_open(peer)
        peer.fail(CLIENT, 131056, times=-1)  # the chat waits out the pair rate
        async with running_gateway(nats_server.url, peer, whatsapp_backoff=5.0, whatsapp_backoff_max=30.0):
            seq = await publish_out(nc, outbound("out:handover", text="survives a restart"))
            await wait_for(lambda: peer.sent == [] and _refused_once(peer), what="the first refusal")
        started = time.monotonic()
        peer.clear(CLIENT)
        async with running_gateway(nats_server.url, peer):
            await wait_for(lambda: acked(nc, seq), what="delivered by the next gateway")
        assert time.monotonic() - started < 25  # nak'ed on stop, not left to ack_wait
        assert texts(peer) == ["survives a restart"]


def _refused_once(peer: FakeWhatsApp) -> bool:
    return any(path.endswith("/messages") for _, path in peer.calls)


async def test_each_number_sends_with_its_own_token(nc: Any, nats_server: Any) -> None:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer):
        peer.age_window(SALES["phone_number_id"], CLIENT, hours=1)
        seq = await publish_out(nc, outbound("out:sales", text="from sales", account="sales_wa"))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        (sent,) = peer.sent_to(CLIENT)
        assert sent.phone_number_id == SALES["phone_number_id"]
