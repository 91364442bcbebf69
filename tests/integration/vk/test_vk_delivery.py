"""Operator replies to VK: the gateway's durable consumer, messages.send on the fake VK API, retries and failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from peers.vk_api import FakeVk
from support import marks_of
from support.timing import wait_for
from support.vk import ACCOUNT, GROUP_ID, OTHER_ACCOUNT, OTHER_GROUP, connections, failures, fake_vk, running_gateway, sender

from gateway_vk.core.outbound import random_id
from gateway_vk.service import VK
from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, Attachment, Outbound, encode, utcnow


@pytest.fixture
async def vk() -> AsyncIterator[FakeVk]:
    fake = fake_vk()
    await fake.start()
    yield fake
    await fake.stop()


def reply(out_id: str, peer: int, text: str, account: str = ACCOUNT, **kw: Any) -> Outbound:
    return Outbound(
        id=out_id,
        session_id="s-1",
        channel="vk",
        account=account,
        chat_id=str(peer),
        text=text,
        operator_id="anna",
        operator_name="Anna",
        created_at=utcnow(),
        **kw,
    )


async def put(nc: Any, out: Outbound, *, msg_id: str | None = None) -> None:
    subject = subjects.outbound("vk", out.account, subjects.chat_key("vk", out.account, out.chat_id))
    await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: msg_id or out.id})


async def test_a_reply_is_sent_once_with_a_random_id_derived_from_its_id(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    async with running_gateway(nats_server.url, vk.url):
        await put(nc, reply("out:s-1:r1", 1001, "Your order ships today"))
        sent = await wait_for(lambda: vk.sent_to(1001), what="message sent")
        assert [(s.group_id, s.random_id, s.message) for s in sent] == [
            (GROUP_ID, random_id("out:s-1:r1", 0), "Your order ships today")
        ]
        [call] = vk.calls_of("messages.send")
        assert call.params["v"] == "5.199" and call.params["peer_id"] == "1001"
        # The same reply again (a redelivery after the dedup window, another replica...) is not a second message.
        await put(nc, reply("out:s-1:r1", 1001, "Your order ships today"), msg_id="again")
        await wait_for(lambda: len(vk.calls_of("messages.send")) == 2, what="second send attempt")
        assert len(vk.sent_to(1001)) == 1


async def test_too_many_requests_is_retried_and_delivered_once(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    vk.fail_next("messages.send", 6, times=3)
    async with running_gateway(nats_server.url, vk.url, retry_attempts=2):
        await put(nc, reply("out:s-1:r2", 1001, "hello"))
        await wait_for(lambda: vk.sent_to(1001), what="delivered after retries")
        assert len(vk.calls_of("messages.send")) == 4  # 3 refusals (one redelivery in between), then the send
        assert [s.random_id for s in vk.sent_to(1001)] == [random_id("out:s-1:r2", 0)]
        assert {c.params["random_id"] for c in vk.calls_of("messages.send")} == {str(random_id("out:s-1:r2", 0))}
    assert await failures(nc) == []


async def test_a_peer_without_permission_gives_a_delivery_failed_event(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    vk.deny_peer(2002, 901)
    async with running_gateway(nats_server.url, vk.url):
        await put(nc, reply("out:s-1:r3", 2002, "hello"))
        [event] = await wait_for(lambda: failures(nc), what="delivery_failed event")
        assert (event.kind, event.session_id, event.channel, event.account, event.chat_id) == (
            "delivery_failed",
            "s-1",
            "vk",
            ACCOUNT,
            "2002",
        )
        assert "901" in event.reason and "permission" in event.reason
        # ... and the operator sees it under the message: "Not delivered", with VK's reason
        [mark] = await wait_for(lambda: marks_of(nc, "s-1"), what="the failed mark")
        assert (mark.status, mark.message_id, mark.channel, mark.reason) == ("failed", "out:s-1:r3", "vk", event.reason)
        # acked: a later reply to someone else is not stuck behind it
        await put(nc, reply("out:s-2:r1", 1001, "next"))
        await wait_for(lambda: vk.sent_to(1001), what="next reply")
        assert len(vk.calls_of("messages.send")) == 2


async def test_a_long_reply_is_split_and_each_part_has_its_own_random_id(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    text = ("word " * 2500).strip()  # 12 499 characters
    async with running_gateway(nats_server.url, vk.url):
        # A file named only by a link is neither fetched nor pasted into the text: it is left out, and said so.
        link_only = Attachment(kind="file", name="invoice.pdf", url="https://x/i.pdf")
        await put(nc, reply("out:s-1:long", 1001, text, attachments=[link_only]))
        sent = await wait_for(lambda: len(vk.sent_to(1001)) == 2 and vk.sent_to(1001), what="two parts")
        [event] = await wait_for(lambda: failures(nc), what="the file reported as left out")
    assert all(len(s.message) <= 9000 for s in sent)
    assert " ".join(s.message for s in sent) == text
    assert [s.random_id for s in sent] == [random_id("out:s-1:long", 0), random_id("out:s-1:long", 1)]
    assert "invoice.pdf" in event.reason and "not a file uploaded to the desk" in event.reason


async def test_a_throttled_community_does_not_hold_up_another(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    vk.failing_groups[GROUP_ID] = 6  # the first community is refused for as long as the test runs
    async with running_gateway(nats_server.url, vk.url, retry_base=30.0, retry_max=30.0) as svc:
        await put(nc, reply("out:a:1", 1001, "to the busy one"))
        await wait_for(lambda: vk.calls_of("messages.send"), what="first community trying")
        await put(nc, reply("out:b:1", 3003, "to the other one", account=OTHER_ACCOUNT))
        sent = await wait_for(lambda: vk.sent_to(3003), timeout=5, what="other community delivered")
        assert sent[0].group_id == OTHER_GROUP and vk.sent_to(1001) == []
        assert svc.app[VK].deliverer.ready() is None


async def test_the_rate_per_token_is_honoured(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    async with running_gateway(nats_server.url, vk.url, vk_rate=10.0) as svc:
        for i in range(15):
            await put(nc, reply(f"out:s-{i}:r", 4000 + i, f"m{i}"))
        await wait_for(lambda: len(vk.sent) == 15, timeout=10, what="all sent")
        assert svc.app[VK].deliverer.ready() is None
    stamps = sorted(c.at for c in vk.calls_of("messages.send"))
    # a burst of 10, then 10 per second: 15 calls take at least 0.5 s
    assert stamps[-1] - stamps[0] >= 0.45


async def test_an_operator_typing_sets_typing_in_the_clients_dialog_and_a_forged_chat_gets_nothing(
    nats_server: Any, nc: Any, vk: FakeVk
) -> None:
    from openlines.envelopes import Typing

    async def operator_types(key_of: str, chat_id: str) -> None:
        typing = Typing(chat_id=chat_id, operator_name="Anna")
        await nc.publish(subjects.typing_out("vk", ACCOUNT, subjects.chat_key("vk", ACCOUNT, key_of)), encode(typing))

    vk.deny_peer(2002, 901)
    async with running_gateway(nats_server.url, vk.url) as gw:
        await operator_types("1001", "3003")  # the body names another dialog than the subject: not believed
        await operator_types("2002", "2002")  # VK refuses it (no permission): nothing to retry
        await operator_types("1001", "1001")
        try:
            await wait_for(lambda: vk.activities, what="messages.setActivity")
        except AssertionError as failed:  # core NATS, never stored: say which end was away
            raise AssertionError(f"{failed}; calls at VK: {vk.calls[-5:]}; {connections(gw, nc, nats_server)}") from failed
        assert vk.activities == [(GROUP_ID, 1001, "typing")]


async def test_a_client_reading_the_dialog_marks_our_replies_up_to_that_message_read(
    nats_server: Any, nc: Any, vk: FakeVk
) -> None:
    import aiohttp

    from gateway_vk.reads import Unread, dialog_key

    async with running_gateway(nats_server.url, vk.url) as gw, aiohttp.ClientSession() as http:
        await put(nc, reply("out:s-1:r1", 1001, "Your order is packed"))
        await put(nc, reply("out:s-1:r2", 1001, "It ships today"))
        kv = await nc.jetstream().key_value(subjects.KV_VK_SENT)

        async def remembered() -> Unread | None:
            try:
                got = msgspec.json.decode((await kv.get(dialog_key(ACCOUNT, 1001))).value or b"{}", type=Unread)
            except Exception:
                return None
            return got if len(got.replies) == 2 else None

        await wait_for(remembered, what="both replies remembered as unread")
        first, second = sorted(vk.sent_to(1001), key=lambda s: s.message_id)
        assert (first.message, second.message) == ("Your order is packed", "It ships today")
        cb = sender(http, gw)

        async def read_marks() -> list[tuple[str, str]]:
            return [(m.message_id, m.status) for m in await marks_of(nc, "s-1") if m.status == "read"]

        # The client reads the first reply only: only it is marked read.
        assert await cb.post(cb.message_read(1001, first.message_id)) == (200, "ok")
        assert await wait_for(read_marks, what="first reply read") == [("out:s-1:r1", "read")]
        # A forged callback (wrong secret) marks nothing.
        forged = cb.message_read(1001, second.message_id)
        forged["secret"] = "not-the-secret"
        status, _ = await cb.post(forged)
        assert status in (401, 403)
        # Then the whole dialog, twice (VK retried the callback): the second reply once, nothing twice.
        again = cb.message_read(1001, second.message_id + 5, event_id="e-read-2")
        assert await cb.post(again) == (200, "ok")
        assert await cb.post(again, retry=1) == (200, "ok")
        assert await wait_for(lambda: _two(read_marks()), what="second reply read") == [
            ("out:s-1:r1", "read"),
            ("out:s-1:r2", "read"),
        ]
        # Another dialog's reading marks nothing of this one; a malformed object is answered "ok" and ignored.
        assert await cb.post(cb.message_read(2002, second.message_id)) == (200, "ok")
        assert await cb.post(cb.event("message_read", {"peer_id": "1001", "read_message_id": None})) == (200, "ok")
        assert await read_marks() == [("out:s-1:r1", "read"), ("out:s-1:r2", "read")]
        assert (await remembered()) is None  # nothing left to mark in this dialog


async def _two(coro: Any) -> Any:
    got = await coro
    return got if len(got) >= 2 else None
