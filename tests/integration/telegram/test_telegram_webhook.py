"""The Telegram webhook edge against a real nats-server and the fake Bot API:
secret check, parsing, limits, dedup, acknowledgement only after the PubAck."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from peers.telegram_api import message_update, user
from support.telegram import SALES, SUPPORT, fake_telegram, inbound_of, running_gateway, stream_size
from support.timing import wait_for

from openlines import bus, subjects
from openlines.envelopes import SessionEvent

TOKEN = SUPPORT["token"]


async def post(svc: Any, path: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{svc.port}{path}", data=data, headers=headers or {}) as resp,
    ):
        body = await resp.json(content_type=None)
        return resp.status, body


async def test_text_message_is_published_with_the_update_id_as_msg_id_and_answered_200(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        update = message_update(
            9001, 777, "Where is my order?", from_user=user(777, "Olga", last_name="P", username="olga_p", language_code="ru")
        )
        status, body = await peer.deliver(TOKEN, update)
        assert (status, body) == (200, {"ok": True, "duplicate": False})
        [env] = await inbound_of(nc)
        assert env.id == "telegram:support_bot:111111:9001"
        assert (env.channel, env.account, env.chat_id, env.user_id) == ("telegram", "support_bot", "777", "777")
        assert env.text == "Where is my order?"
        assert (env.profile.name, env.profile.username, env.profile.language) == ("Olga P", "olga_p", "ru")
        msg = await nc.jetstream().get_last_msg("OL_IN", subjects.inbound("telegram", "support_bot", "777"))
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == env.id


async def test_each_bot_has_its_own_path_and_account(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        assert (await peer.deliver(SALES["token"], message_update(1, 55, "hi sales")))[0] == 200
        assert (await peer.deliver(TOKEN, message_update(1, 55, "hi support")))[0] == 200
        assert [e.text for e in await inbound_of(nc, "sales_bot")] == ["hi sales"]
        assert [e.text for e in await inbound_of(nc, "support_bot")] == ["hi support"]


async def test_wrong_or_missing_secret_is_401_and_nothing_is_published(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer) as svc:
        status, body = await peer.deliver(TOKEN, message_update(2, 777), secret="not-the-secret-at-all")
        assert status == 401 and body["error"] == "bad_secret"
        # Another bot's secret is not this bot's secret.
        assert (await peer.deliver(TOKEN, message_update(3, 777), secret=SALES["secret"]))[0] == 401
        status, _ = await post(svc, "/telegram/support_bot", b'{"update_id": 4}')
        assert status == 401
        assert await stream_size(nc) == 0


async def test_unknown_bot_path_is_404(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer) as svc:
        status, body = await post(svc, "/telegram/nobody", b"{}", {"X-Telegram-Bot-Api-Secret-Token": SUPPORT["secret"]})
        assert status == 404 and body["error"] == "unknown_bot"


async def test_malformed_json_missing_fields_and_oversize_bodies_are_refused_with_a_reason(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer) as svc:
        # Signed by Telegram (the secret matched) but unreadable: answered 200 (a 4xx would make Telegram
        # retry it for a day, holding back the updates behind it) and kept as a dead letter with the reason.
        cases = {
            b"{not json": "not valid JSON",
            b"[1, 2]": "JSON object",
            b'{"message": {"text": "hi"}}': "update_id",
            b'{"update_id": "x"}': "update_id",
            b'{"update_id": 5, "message": {"message_id": 1, "text": "no chat"}}': "message.chat",
            b'{"update_id": 6, "message": {"message_id": 1, "date": 1, "chat": {"type": "private"}}}': "message.chat.id",
        }
        for body, want_detail in cases.items():
            status, answer = await peer.deliver(TOKEN, body)
            assert status == 200, body
            assert want_detail in answer["dead_letter"], (body, answer)
        dead = await wait_for(lambda: dead_letters(nc, len(cases)), what="a dead letter per unreadable update")
        assert all(e.channel == "telegram" and e.account == "support_bot" and e.reason for e in dead)
        big = b'{"update_id": 7, "message": {"text": "' + b"x" * (1024 * 1024) + b'"}}'
        status, answer = await peer.deliver(TOKEN, big)
        assert status == 413 and answer["error"] == "too_large"
        # A chunked body with no Content-Length is cut off as well.

        async def chunks() -> Any:
            for _ in range(20):
                yield b"x" * 65536

        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{svc.port}/telegram/support_bot",
                data=chunks(),
                headers={"X-Telegram-Bot-Api-Secret-Token": SUPPORT["secret"]},
            ) as resp,
        ):
            assert resp.status == 413
        assert await stream_size(nc) == 0


async def test_the_same_update_twice_and_after_a_restart_is_stored_once(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer:
        update = message_update(42, 777, "only once")
        async with running_gateway(nats_server.url, peer):
            assert await peer.deliver(TOKEN, update) == (200, {"ok": True, "duplicate": False})
            assert await peer.deliver(TOKEN, update) == (200, {"ok": True, "duplicate": True})
        async with running_gateway(nats_server.url, peer):
            assert await peer.deliver(TOKEN, update) == (200, {"ok": True, "duplicate": True})
        assert [e.text for e in await inbound_of(nc)] == ["only once"]


async def test_nats_down_answers_503_and_telegrams_retry_succeeds_once(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer) as svc:
        update = message_update(77, 777, "sent while the bus was down")
        nats_server.stop()
        await wait_for(lambda: not svc.nc.is_connected, what="gateway notices NATS is gone")
        status, body = await peer.deliver(TOKEN, update)
        assert status == 503 and body["error"] == "unavailable"
        assert peer.webhooks[TOKEN].last_error_message.startswith("Wrong response from the webhook: 503")
        nats_server.start()

        async def retried() -> bool:  # Telegram retries until it gets a 2xx
            status, _ = await peer.deliver(TOKEN, update)
            return status == 200

        await wait_for(retried, timeout=20, interval=0.2, what="a retried update to be accepted")
        await peer.deliver(TOKEN, update)
        assert [e.text for e in await inbound_of(nc)] == ["sent while the bus was down"]


async def test_edited_message_is_a_new_inbound_marked_as_edited(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        original = message_update(10, 777, "helo", message_id=5)
        edited = {"update_id": 11, "edited_message": {**original["message"], "text": "hello", "edit_date": 2}}
        assert (await peer.deliver(TOKEN, original))[0] == 200
        assert (await peer.deliver(TOKEN, edited))[0] == 200
        envs = await inbound_of(nc)
        assert [e.text for e in envs] == ["helo", "(edited) hello"]
        assert [e.channel_msg_id for e in envs] == ["5", "5"]


async def test_callback_query_is_answered_and_its_data_published_as_text(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        update = {
            "update_id": 12,
            "callback_query": {
                "id": "cbq-1",
                "from": user(777),
                "chat_instance": "ci",
                "data": "order:status",
                "message": {"message_id": 3, "date": 1, "chat": {"id": 777, "type": "private"}, "text": "pick one"},
            },
        }
        assert (await peer.deliver(TOKEN, update))[0] == 200
        [env] = await inbound_of(nc)
        assert (env.text, env.chat_id, env.user_id) == ("order:status", "777", "777")
        answered = await wait_for(lambda: peer.called("answerCallbackQuery"), what="answerCallbackQuery")
        assert answered[0].params["callback_query_id"] == "cbq-1"


async def test_unknown_update_types_and_service_messages_are_acknowledged_and_dropped(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        unknown = [
            {"update_id": 20, "some_future_update": {"x": 1}},
            {"update_id": 21, "poll_answer": {"poll_id": "p", "option_ids": [0], "user": user(777)}},
            message_update(22, 777, None, new_chat_title="renamed"),
            {"update_id": 23},
        ]
        for u in unknown:
            assert (await peer.deliver(TOKEN, u))[0] == 200, u
        assert await stream_size(nc) == 0


async def test_media_location_and_contact_become_attachments_and_own_contact_gives_the_phone(nc: Any, nats_server: Any) -> None:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        photo = [
            {"file_id": "small", "file_unique_id": "u1", "width": 90, "height": 90},
            {"file_id": "big", "file_unique_id": "u2", "width": 1280, "height": 960, "file_size": 123456},
        ]
        updates = [
            message_update(30, 777, None, photo=photo, caption="broken box"),
            message_update(
                31,
                777,
                None,
                document={"file_id": "doc1", "file_unique_id": "d1", "file_name": "invoice.pdf", "mime_type": "application/pdf"},
            ),
            message_update(
                32, 777, None, voice={"file_id": "v1", "file_unique_id": "vu", "duration": 3, "mime_type": "audio/ogg"}
            ),
            message_update(33, 777, None, location={"latitude": 55.75, "longitude": 37.62}),
            message_update(34, 777, None, contact={"phone_number": "+79991234567", "first_name": "Ivan", "user_id": 777}),
        ]
        for u in updates:
            assert (await peer.deliver(TOKEN, u))[0] == 200
        envs = await inbound_of(nc)
        assert envs[0].text == "broken box"
        assert (envs[0].attachments[0].kind, envs[0].attachments[0].ref, envs[0].attachments[0].size) == ("image", "big", 123456)
        doc = envs[1].attachments[0]
        assert (doc.kind, doc.ref, doc.name, doc.mime) == ("file", "doc1", "invoice.pdf", "application/pdf")
        assert envs[2].attachments[0].kind == "voice" and envs[2].attachments[0].extra["duration"] == "3"
        assert envs[3].attachments[0].extra == {"latitude": "55.75", "longitude": "37.62"}
        assert envs[4].attachments[0].kind == "contact" and envs[4].profile.phone == "+79991234567"


async def dead_letters(nc: Any, at_least: int) -> list[SessionEvent] | None:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event("dead_letter"))
    found = [msgspec.json.decode(d, type=SessionEvent) for _, d in rows]
    return found if len(found) >= at_least else None
