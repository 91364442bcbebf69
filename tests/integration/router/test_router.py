"""The minimal router against a real nats-server: sessions, round robin, commands."""

from __future__ import annotations

from typing import Any

import pytest
from support import (
    apply_lines,
    client_record,
    events,
    held_session,
    history,
    inbound,
    line_block,
    operators_block,
    outbound_for,
    publish,
    running_router,
    session_of,
)
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.commands import Accept, Close, CommandFailed, Reply, SetStatus, call
from openlines.envelopes import encode
from openlines.state import OperatorState


async def buckets(nc):  # type: ignore[no-untyped-def]
    return await bus.Buckets(nc.jetstream()).open()


async def test_two_online_operators_alternate_on_new_visitors(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        owners = []
        for i in range(4):
            await publish(nc, inbound(f"v{i}", "hello", "m1"))
            owners.append((await held_session(nc, f"v{i}")).operator_id)
        assert owners in (["anna", "boris", "anna", "boris"], ["boris", "anna", "boris", "anna"])


async def test_first_message_opens_session_welcomes_and_records_transcript(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("vis", "Do you ship to Riga?", "m1", name="Ilze"))
        s = await held_session(nc, "vis")
        assert (s.operator_id, s.status, s.client_name) == ("anna", "assigned", "Ilze")
        out = await wait_for(lambda: outbound_for(nc, "vis"), what="welcome")
        assert out[0].auto and out[0].text.startswith("Hello Ilze! You have reached Customer support")
        hist = await wait_for(lambda: history(nc, s.id), what="transcript")
        said = [h.direction for h in hist if h.direction != "system"][:2]  # system lines: the trail of transitions
        assert said in (["out", "in"], ["in", "out"])
        assert [h.text for h in hist if h.direction == "system"][:1] == ["Opened on Customer support"]
        assert any(h.text == "Do you ship to Riga?" and h.direction == "in" for h in hist)
        # a second message continues the same session
        await publish(nc, inbound("vis", "And to Tallinn?", "m2"))
        await wait_for(lambda: _count_in(nc, s.id, 2), what="second message in transcript")
        assert (await session_of(nc, "vis")).id == s.id  # type: ignore[union-attr]


async def _count_in(nc, sid: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len([h for h in await history(nc, sid) if h.direction == "in"]) == n


async def test_same_message_id_after_dedup_window_reaches_transcript_once(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("dup", "once", "m1"))
        s = await held_session(nc, "dup")
        # Past JetStream's dedup window the stream stores a resend again: play that
        # by publishing the same envelope without its Nats-Msg-Id.
        again = inbound("dup", "once", "m1")
        await nc.jetstream().publish(subjects.inbound("webchat", "demo", again.chat_id), encode(again))
        await publish(nc, inbound("dup", "marker", "m2"))
        await wait_for(lambda: _count_in(nc, s.id, 2), what="marker message")
        texts = [h.text for h in await history(nc, s.id) if h.direction == "in"]
        assert texts == ["once", "marker"]


async def test_reply_accept_and_close(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v", "hi", "m1"))
        s = await held_session(nc, "v")
        res = await call(nc, "accept", Accept(operator_id="anna", session_id=s.id))
        assert res.session is not None and res.session.status == "answered"
        r1 = await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="Yes we do", client_msg_id="r1"))
        r2 = await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="Yes we do", client_msg_id="r1"))
        assert r1.message_id == r2.message_id
        outs = await outbound_for(nc, "v")
        assert [o.text for o in outs if not o.auto] == ["Yes we do"]  # the retried reply is not doubled
        assert outs[-1].operator_name == "Anna Petrova"
        closed = await call(nc, "close", Close(operator_id="anna", session_id=s.id))
        assert closed.session is not None and closed.session.status == "closed"
        b = await buckets(nc)
        anna, _ = await bus.kv_get(b.operators, "anna", OperatorState)
        assert anna is not None and s.id not in anna.sessions
        assert (await outbound_for(nc, "v"))[-1].text.startswith("Thank you")
        assert [e.session_id for e in await events(nc, "session_closed")] == [s.id]
        # writing again opens a new session
        await publish(nc, inbound("v", "one more thing", "m2"))
        s2 = await held_session(nc, "v")
        assert s2.id != s.id


async def test_commands_are_validated(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v", "hi", "m1"))
        s = await held_session(nc, "v")
        with pytest.raises(CommandFailed) as err:
            await call(nc, "reply", Reply(operator_id="boris", session_id=s.id, text="mine now", client_msg_id="x"))
        assert err.value.result.error == "forbidden"
        with pytest.raises(CommandFailed) as err:
            await call(nc, "status", SetStatus(operator_id="ghost", status="online"))
        assert err.value.result.error == "not_found"
        with pytest.raises(CommandFailed) as err:
            await call(nc, "status", SetStatus(operator_id="admin", status="online"))
        assert err.value.result.error == "forbidden" and "permission" in err.value.result.detail
        with pytest.raises(CommandFailed) as err:
            await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="   ", client_msg_id="x"))
        assert err.value.result.error == "invalid"
        raw = await nc.request("ol.cmd.reply", b'{"operator_id": 5}', timeout=scaled(5))
        assert b'"error":"invalid"' in raw.data
        raw = await nc.request("ol.cmd.reply", b'{"operator_id": "\x8f"}', timeout=scaled(5))  # not UTF-8
        assert b'"error":"invalid"' in raw.data
        assert [o.text for o in await outbound_for(nc, "v") if not o.auto] == []


async def test_chats_wait_fifo_until_an_operator_comes_online(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        for v in ("first", "second"):
            await publish(nc, inbound(v, "anyone?", "m1"))
            await wait_for(lambda v=v: session_of(nc, v), what=f"{v} session")
        assert (await session_of(nc, "first")).status == "waiting"  # type: ignore[union-attr]
        assert len(await wait_for(lambda: events(nc, "session_waiting"), what="waiting events")) >= 1
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        first = await held_session(nc, "first")
        second = await held_session(nc, "second")
        assert first.operator_id == second.operator_id == "anna"
        assert first.assigned_at is not None and second.assigned_at is not None
        assert first.assigned_at <= second.assigned_at


async def test_operator_going_away_hands_unanswered_chats_to_the_next(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v", "hi", "m1"))
        s = await held_session(nc, "v")
        assert s.operator_id == "anna"
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await call(nc, "status", SetStatus(operator_id="anna", status="away"))
        moved = await session_of(nc, "v")
        assert moved is not None and (moved.operator_id, moved.status) == ("boris", "assigned")


async def test_message_for_an_unbound_account_is_dead_lettered(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await publish(nc, inbound("v", "hi", "m1", account="nowhere"))
        dead = await wait_for(lambda: events(nc, "dead_letter"), what="dead letter")
        assert "no line is bound to webchat/nowhere" in dead[0].reason


async def test_line_config_hot_reloads(nc, nats_server) -> None:  # type: ignore[no-untyped-def]
    await apply_lines(nc)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        text = operators_block("anna") + line_block(account="other", operators='"anna"')
        await apply_lines(nc, text)
        await publish(nc, inbound("v2", "hi", "m1", account="other"))

        async def probe() -> bool:
            return await client_record(nc, "v2", account="other") is not None

        await wait_for(probe, what="message on the newly bound account handled")


async def test_a_partition_whose_consumer_vanished_is_consumed_again(nc: Any, nats_server: Any) -> None:
    """A cluster that lost a durable consumer (or a consumer deleted by hand) must not leave a partition unread."""
    await apply_lines(nc)
    js = nc.jetstream()
    async with running_router(nats_server.url):
        p = subjects.partition_of("webchat", "demo", "lost-visitor")

        async def consuming() -> bool:
            try:
                return (await js.consumer_info(subjects.STREAM_IN, f"router-p{p}")).num_waiting > 0
            except Exception:
                return False

        await wait_for(consuming, timeout=15, what=f"partition {p} consumed")
        await js.delete_consumer(subjects.STREAM_IN, f"router-p{p}")
        await publish(nc, inbound("lost-visitor", "anyone there?", "m1"))

        async def routed() -> bool:
            return bool(await events(nc, "session_opened"))

        await wait_for(routed, timeout=30, what="the message routed after the consumer came back")
