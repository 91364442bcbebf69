"""Telegram end to end with the real router, a real nats-server and the fake
Bot API: client writes -> operator replies -> the reply reaches Telegram
exactly once; flood control, blocked users, splitting, files, idempotent resends."""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web
from peers.telegram_api import FakeTelegram, message_update
from support import apply_lines, events, history, marks_of, running_router, session_of
from support.telegram import SUPPORT, fake_telegram, running_gateway, telegram_line
from support.timing import wait_for

from desk.files import FileStore
from openlines import subjects
from openlines.commands import Reply, SetStatus, call
from openlines.envelopes import MSG_ID_HEADER, Attachment, Outbound, encode, utcnow
from openlines.state import Session

TOKEN = SUPPORT["token"]
ACCOUNT = "support_bot"


async def session_for(nc: Any, chat: int, line: str = "tg") -> Session | None:
    s = await session_of(nc, str(chat), channel="telegram", account=ACCOUNT, line=line)
    return s if s is not None and s.operator_id == "anna" else None


async def client_writes(nc: Any, peer: FakeTelegram, update_id: int, chat: int, text: str) -> Session:
    status, _ = await peer.deliver(TOKEN, message_update(update_id, chat, text))
    assert status == 200
    return await wait_for(lambda: session_for(nc, chat), timeout=15, what=f"chat {chat} assigned to anna")


async def drained(nc: Any) -> bool:
    info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, "gateway-telegram")
    return info.num_pending == 0 and info.num_ack_pending == 0


def texts(peer: FakeTelegram, chat: int) -> list[str]:
    return [c.params["text"] for c in peer.sent(chat, "sendMessage")]


async def reply(nc: Any, session: Session, text: str, msg_id: str) -> None:
    await call(nc, "reply", Reply(operator_id="anna", session_id=session.id, text=text, client_msg_id=msg_id))


async def publish_out(nc: Any, out: Outbound, msg_id: str | None = None) -> int:
    """Publish like the router does; the stream sequence."""
    subject = subjects.outbound("telegram", out.account, subjects.chat_key("telegram", out.account, out.chat_id))
    ack = await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: msg_id or out.id})
    return int(ack.seq)


async def acked(nc: Any, seq: int) -> bool:
    """The gateway acked everything up to stream sequence ``seq`` (delivered or given up)."""
    info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, "gateway-telegram")
    return info.ack_floor.stream_seq >= seq


def outbound(out_id: str, chat: int | str, text: str = "", attachments: list[Attachment] | None = None, **kw: Any) -> Outbound:
    return Outbound(
        id=out_id,
        session_id=kw.pop("session_id", "s-test"),
        channel="telegram",
        account=kw.pop("account", ACCOUNT),
        chat_id=str(chat),
        text=text,
        attachments=attachments or [],
        created_at=utcnow(),
        **kw,
    )


async def test_client_and_operator_talk_and_the_reply_reaches_telegram_exactly_once(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, telegram_line())
    async with fake_telegram() as peer, running_router(nats_server.url), running_gateway(nats_server.url, peer):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        session = await client_writes(nc, peer, 1, 777, "Hi, my parcel is late")
        assert (session.channel, session.account, session.chat_id) == ("telegram", ACCOUNT, "777")
        await reply(nc, session, "Sorry! Let me check.", "r1")
        await wait_for(lambda: texts(peer, 777), what="the reply at the Bot API")
        await wait_for(lambda: drained(nc), what="the outbound acked")
        assert texts(peer, 777) == ["Sorry! Let me check."]
        transcript = await history(nc, session.id)
        assert [(h.direction, h.text) for h in transcript if h.direction != "system"] == [
            ("in", "Hi, my parcel is late"),
            ("out", "Sorry! Let me check."),
        ]


async def test_the_same_update_twice_and_after_a_gateway_restart_is_one_message_in_the_transcript(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, telegram_line())
    update = message_update(5, 777, "hello once")
    async with fake_telegram() as peer, running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        async with running_gateway(nats_server.url, peer):
            session = await client_writes(nc, peer, 5, 777, "hello once")
            assert (await peer.deliver(TOKEN, update))[0] == 200
        async with running_gateway(nats_server.url, peer):
            assert (await peer.deliver(TOKEN, update))[0] == 200
            assert (await peer.deliver(TOKEN, message_update(6, 777, "second")))[0] == 200

            async def both() -> list[str] | None:
                got = [h.text for h in await history(nc, session.id) if h.direction == "in"]
                return got if "second" in got else None

            assert await wait_for(both, what="the second message in the transcript") == ["hello once", "second"]


async def test_flood_control_delays_only_that_chat_and_other_chats_are_not_held_up(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, telegram_line())
    async with fake_telegram() as peer, running_router(nats_server.url), running_gateway(nats_server.url, peer):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        slow = await client_writes(nc, peer, 1, 777, "first client")
        fast = await client_writes(nc, peer, 2, 888, "second client")
        peer.rate_limit(777, retry_after=2)
        await reply(nc, slow, "to the flooded chat", "r1")
        await wait_for(lambda: peer.sent(777, ok_only=False), what="the 429")
        await reply(nc, fast, "to the other chat", "r2")
        await wait_for(lambda: texts(peer, 888), what="the other chat's reply")
        assert texts(peer, 777) == []  # still waiting out retry_after
        await wait_for(lambda: texts(peer, 777), timeout=10, what="the delayed reply")
        [limited, delivered] = peer.sent(777, ok_only=False)
        assert limited.status == 429 and delivered.status == 200
        assert delivered.at - limited.at >= 2.0 - 0.05
        assert peer.sent(888)[0].at < delivered.at
        await wait_for(lambda: drained(nc), what="both acked")
        assert texts(peer, 777) == ["to the flooded chat"] and texts(peer, 888) == ["to the other chat"]


async def test_a_user_who_blocked_the_bot_gives_delivery_failed_and_the_message_is_acked(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, telegram_line())
    async with fake_telegram() as peer, running_router(nats_server.url), running_gateway(nats_server.url, peer):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        session = await client_writes(nc, peer, 1, 999, "bye")
        peer.block(999)
        await reply(nc, session, "are you there?", "r1")
        [evt] = await wait_for(lambda: events(nc, "delivery_failed"), what="delivery_failed")
        assert evt.session_id == session.id and (evt.channel, evt.account, evt.chat_id) == ("telegram", ACCOUNT, "999")
        assert "bot was blocked by the user" in evt.reason
        # ... and the operator sees it under the message itself: "Not delivered", with Telegram's reason
        [mark] = await wait_for(lambda: marks_of(nc, session.id), what="the failed mark")
        assert (mark.status, mark.channel, mark.reason) == ("failed", "telegram", evt.reason)
        assert evt.id == f"delivery_failed:{mark.message_id}"
        await wait_for(lambda: drained(nc), what="the failed outbound acked")
        assert len(peer.sent(999, ok_only=False)) == 1  # a permanent error is not retried


async def test_long_text_is_split_on_line_boundaries_under_4096(nc: Any, nats_server: Any) -> None:
    para = "\n".join(f"line {i} " + " ".join(["word"] * 30) for i in range(60))  # ~9.5k characters
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        seq = await publish_out(nc, outbound("out:long", 777, para))
        await wait_for(lambda: acked(nc, seq), what="delivered")
        parts = texts(peer, 777)
        assert len(parts) == 3 and all(len(p) <= 4096 for p in parts)
        assert "\n".join(parts) == para.strip()


async def test_transient_errors_are_retried_and_a_redelivered_outbound_is_not_sent_twice(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        peer.fail(777, times=2)  # two 500s, then it works
        out = outbound("out:s1:m1", 777, "after two failures")
        seq = await publish_out(nc, out)
        await wait_for(lambda: acked(nc, seq), what="delivered")
        assert [c.status for c in peer.sent(777, ok_only=False)] == [500, 500, 200]
        # The same outbound again (e.g. the router redoing a publish after the dedup window).
        seq = await publish_out(nc, out, msg_id="a-later-copy")
        await wait_for(lambda: acked(nc, seq), what="the copy acked")
        assert texts(peer, 777) == ["after two failures"]


async def test_attachments_reuse_file_ids_and_operator_files_are_uploaded_from_the_desk_store(nc: Any, nats_server: Any) -> None:
    store = await FileStore.open(nc.jetstream())
    stored = await store.put("s-files", "invoice.pdf", "application/pdf", b"%PDF-1.4 fake")
    # An internal address a hostile link would point at (crm-sync's API, the NATS monitor): never fetched.
    internal = web.Application()
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=b"internal data", content_type="application/pdf")

    internal.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(internal, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
            seq = await publish_out(
                nc,
                outbound(
                    "out:files",
                    777,
                    "your documents",
                    [Attachment(kind="image", ref="AgACAgIAAxkBAAI"), stored.attachment("https://desk.example.com")],
                ),
            )
            await wait_for(lambda: acked(nc, seq), what="delivered")
            assert [c.method for c in peer.sent(777)] == ["sendMessage", "sendPhoto", "sendDocument"]
            photo, doc = peer.sent(777)[1:]
            assert photo.params["photo"] == "AgACAgIAAxkBAAI" and not photo.files
            assert doc.files["document"].filename == "invoice.pdf" and doc.files["document"].data == b"%PDF-1.4 fake"

            # A link alone (what a forged Host header once made of an operator's file) is refused, not fetched.
            await publish_out(nc, outbound("out:link", 778, "", [Attachment(kind="file", url=f"{base}/crm/leads")]))
            [evt] = await wait_for(lambda: events(nc, "delivery_failed"), what="delivery_failed")
            assert "not a file uploaded to the desk" in evt.reason and evt.chat_id == "778"
            forged = Attachment(kind="file", name="x.pdf", ref="ol-desk-files:s-files/nope", url=f"{base}/varz")
            await publish_out(nc, outbound("out:gone", 779, "", [forged]))

            async def failed_779() -> list[Any]:
                return [e for e in await events(nc, "delivery_failed") if e.chat_id == "779"]

            [gone] = await wait_for(failed_779, what="the forged reference delivery_failed")
            assert "no longer in the desk's file store" in gone.reason
            assert asked == [] and peer.sent(778) == [] and peer.sent(779) == []
    finally:
        await runner.cleanup()


async def test_outbound_for_an_account_without_a_bot_is_delivery_failed(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        await publish_out(nc, outbound("out:nobot", 777, "hello", account="ghost_bot"))
        [evt] = await wait_for(lambda: events(nc, "delivery_failed"), what="delivery_failed")
        assert "ghost_bot" in evt.reason
        assert peer.sent() == []


async def test_the_per_chat_pace_spaces_messages_to_one_chat(nc: Any, nats_server: Any) -> None:
    # One a second: the gaps are long beside the scheduling jitter of a loaded machine, which the peer's
    # arrival times include (a request delayed on its way makes the next gap look shorter).
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer, telegram_chat_rate=1.0, telegram_chat_burst=1):
        for i in range(4):
            await publish_out(nc, outbound(f"out:pace:{i}", 777, f"m{i}"))
        await wait_for(lambda: len(texts(peer, 777)) == 4, timeout=60, what="four messages")
        assert texts(peer, 777) == ["m0", "m1", "m2", "m3"]  # in order
        at = [c.at for c in peer.sent(777)]
        assert all(b - a >= 0.5 for a, b in itertools.pairwise(at)), at  # never a burst: about a second apart
        assert at[-1] - at[0] >= 2.5, at  # three gaps of a second


async def test_a_stopping_gateway_hands_back_what_it_holds_and_the_next_one_delivers_it_once(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer:
        peer.rate_limit(777, retry_after=60)
        async with running_gateway(nats_server.url, peer):
            seq = await publish_out(nc, outbound("out:handover", 777, "survives a restart"))
            await wait_for(lambda: peer.sent(777, ok_only=False), what="the 429")
        started = time.monotonic()
        peer.clear(777)
        async with running_gateway(nats_server.url, peer):
            await wait_for(lambda: acked(nc, seq), what="delivered by the next gateway")
        # nak'ed on stop: not left to ack_wait (30 s) or retry_after (60 s), either of which would take 30 s or more
        assert time.monotonic() - started < 25
        assert texts(peer, 777) == ["survives a restart"]


async def test_an_operator_typing_shows_typing_in_the_clients_chat_and_a_forged_chat_gets_nothing(
    nc: Any, nats_server: Any
) -> None:
    from openlines.envelopes import Typing

    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):

        async def operator_types(key_of: str, chat_id: str) -> None:
            typing = Typing(chat_id=chat_id, operator_name="Anna")
            await nc.publish(
                subjects.typing_out("telegram", ACCOUNT, subjects.chat_key("telegram", ACCOUNT, key_of)), encode(typing)
            )

        # The subject names chat 777 by its key; a body naming another chat is not believed.
        await operator_types("777", "888")
        await operator_types("777", "777")
        await wait_for(lambda: peer.chat_actions, what="sendChatAction")
        assert peer.chat_actions == [("777", "typing")]
        # A chat that blocked the bot: Telegram refuses the action, the gateway shrugs (nothing to retry).
        peer.block(999)
        await operator_types("999", "999")
        await operator_types("555", "555")
        await wait_for(lambda: ("555", "typing") in peer.chat_actions, what="the next chat's action")
        assert ("999", "typing") not in peer.chat_actions
