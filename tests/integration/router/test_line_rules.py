"""The line rules end to end in the router, against a real nats-server.

Each test declares a line in TOML (short waits so nothing takes long) and
drives it with client messages and operator commands.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from support import (
    apply_lines,
    events,
    history,
    inbound,
    line_block,
    operators_block,
    outbound_for,
    publish,
    running_router,
    session_of,
)
from support.timing import wait_for

from openlines import bus, subjects
from openlines.commands import Accept, CommandFailed, Intercept, Pin, Presence, Reply, SetStatus, Skip, Spam, Transfer, call
from openlines.envelopes import MSG_ID_HEADER, Attachment, utcnow
from openlines.state import ClientRecord, OperatorState, Session, client_key
from router.timers import Timer, schedule

OPS = operators_block("anna", "boris", "vera")


def line(
    queue: str = "", extra: str = "", *, line_id: str = "support", account: str = "demo", ops: str = '"anna", "boris"'
) -> str:
    return line_block(line_id, account=account, operators=ops, queue=queue, extra=extra)


async def online(nc: Any, *ops: str) -> None:
    for op in ops:
        await call(nc, "status", SetStatus(operator_id=op, status="online"))


async def held_by(nc: Any, visitor: str, *, status: str = "assigned", **kw: Any) -> Session:
    async def probe() -> Session | None:
        s = await session_of(nc, visitor, **kw)
        return s if s is not None and s.status == status and (s.operator_id or status == "waiting") else None

    return await wait_for(probe, timeout=15, what=f"{visitor} {status}")


async def operator(nc: Any, op: str) -> OperatorState:
    b = await bus.Buckets(nc.jetstream()).open()
    st, _ = await bus.kv_get(b.operators, op, OperatorState)
    assert st is not None
    return st


async def test_unanswered_offer_passes_to_the_next_operator_after_wait_seconds(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line("wait_seconds = 1"))
    async with running_router(nats_server.url):
        await online(nc, "anna", "boris")
        await publish(nc, inbound("v", "hello?", "m1"))
        first = await held_by(nc, "v")

        async def moved() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.operator_id not in ("", first.operator_id) else None

        second = await wait_for(moved, timeout=15, what="offer passed on")
        assert second.status == "assigned" and second.assignments == first.assignments + 1
        assert first.id not in (await operator(nc, first.operator_id)).sessions
        declined = await events(nc, "offer_declined")
        assert (declined[0].operator_id, declined[0].reason) == (first.operator_id, "no answer")
        # An accepted chat stays put: its timer is stale.
        await call(nc, "accept", Accept(operator_id=second.operator_id, session_id=second.id))
        notes = [h.text for h in await history(nc, second.id) if h.direction == "system"]
        assert "Passed on: no answer" in notes


async def test_strict_mode_always_offers_to_the_first_free_operator(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('mode = "strict"\nmax_chats_per_operator = 2', ops='"boris", "anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna", "boris")
        owners = []
        for i in range(4):
            await publish(nc, inbound(f"v{i}", "hi", "m1"))
            owners.append((await held_by(nc, f"v{i}")).operator_id)
        assert owners == ["boris", "boris", "anna", "anna"]


async def test_capacity_counts_only_unanswered_chats_when_the_line_says_so(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('max_chats_per_operator = 1\ncount = "unanswered"', ops='"anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("a", "hi", "m1"))
        a = await held_by(nc, "a")
        await publish(nc, inbound("b", "hi", "m1"))
        await held_by(nc, "b", status="waiting")
        await call(nc, "accept", Accept(operator_id="anna", session_id=a.id))
        b = await held_by(nc, "b")  # answering freed the unanswered slot
        assert b.operator_id == "anna" and len((await operator(nc, "anna")).sessions) == 2


async def test_crm_responsible_gets_the_chat_else_the_fallback_mode(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('mode = "crm_responsible"\nfallback_mode = "strict"', ops='"anna", "boris"'))

    async def responsible(msg: Any) -> None:
        asked = msgspec.json.decode(msg.data)
        await msg.respond(msgspec.json.encode({"operator_id": "boris" if asked["chat_id"] == "known" else ""}))

    async with running_router(nats_server.url):
        await online(nc, "anna", "boris")
        # No CRM answering at all: the fallback decides, quickly.
        await publish(nc, inbound("early", "hi", "m1"))
        assert (await held_by(nc, "early")).operator_id == "anna"
        sub = await nc.subscribe(subjects.CRM_RESPONSIBLE, cb=responsible)
        await bus.flush_all(nc)  # the server has the subscription before anything is said
        await publish(nc, inbound("known", "hi", "m1"))
        assert (await held_by(nc, "known")).operator_id == "boris"
        await publish(nc, inbound("stranger", "hi", "m1"))
        assert (await held_by(nc, "stranger")).operator_id == "anna"
        # The responsible manager away: the fallback takes over.
        await call(nc, "status", SetStatus(operator_id="boris", status="away"))
        await publish(nc, inbound("known2", "hi", "m1"))
        assert (await held_by(nc, "known2")).operator_id == "anna"
        await sub.unsubscribe()


async def test_outside_hours_reply_and_hold_until_the_line_opens(nc: Any, nats_server: Any) -> None:
    closed = '[lines.hours]\nenabled = true\ntimezone = "Europe/Riga"\noutside = "hold_until_open"\n'
    texts = '[lines.auto_replies]\noutside_hours = "We are closed, {client_name}."\nwelcome = "Welcome!"\n'
    await apply_lines(nc, OPS + line("", closed + texts, ops='"anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("night", "hello", "m1", name="Owl"))
        await held_by(nc, "night", status="waiting")

        async def is_held() -> Session | None:
            s = await session_of(nc, "night")
            return s if s is not None and s.held else None

        held = await wait_for(is_held, what="chat held until opening")
        outs = await wait_for(lambda: outbound_for(nc, "night"), what="outside-hours reply")
        assert [o.text for o in outs] == ["We are closed, Owl."]
        assert [e.session_id for e in await events(nc, "session_held")] == [held.id]
        # The line opens (here: the admin switches the hours off) and the held chat is offered.
        await apply_lines(nc, OPS + line("", texts, ops='"anna"'))
        opened = await held_by(nc, "night")
        assert opened.operator_id == "anna" and not opened.held


async def test_outside_hours_redirect_to_another_line(nc: Any, nats_server: Any) -> None:
    closed = '[lines.hours]\nenabled = true\noutside = "redirect"\nredirect_line = "night"\n'
    text = '[lines.auto_replies]\noutside_hours = "Our night team will answer."\n'
    cfg = OPS + line("", closed + text, ops='"anna"') + line("", "", line_id="night", account="night-widget", ops='"vera"')
    await apply_lines(nc, cfg)
    async with running_router(nats_server.url):
        await online(nc, "anna", "vera")
        await publish(nc, inbound("v", "help", "m1"))
        s = await held_by(nc, "v")
        assert (s.line_id, s.entry_line_id, s.operator_id) == ("night", "support", "vera")
        assert [o.text for o in await outbound_for(nc, "v")] == ["Our night team will answer."]
        # The next message continues the same session.
        await publish(nc, inbound("v", "still there?", "m2"))

        async def two_in() -> bool:
            return len([h for h in await history(nc, s.id) if h.direction == "in"]) == 2

        await wait_for(two_in, what="second message on the redirected session")


async def test_welcome_only_on_first_contact_and_queue_position(nc: Any, nats_server: Any) -> None:
    extra = '[lines.auto_replies]\nwelcome = "Hi {client_name}"\nqueue_position = "You are number {position}."\n'
    await apply_lines(nc, OPS + line("tell_position = true\nmax_chats_per_operator = 1", extra, ops='"anna"'))
    async with running_router(nats_server.url):
        await publish(nc, inbound("w1", "first", "m1", name="Ann"))
        await publish(nc, inbound("w2", "second", "m1", name="Bob"))
        await held_by(nc, "w2", status="waiting")
        assert [o.text for o in await wait_for(lambda: _two(outbound_for(nc, "w2")), what="w2 replies")] == [
            "Hi Bob",
            "You are number 2.",
        ]
        await online(nc, "anna")
        s1 = await held_by(nc, "w1")
        await call(nc, "close", _close("anna", s1.id))
        # A returning client starts a new session without a second welcome.
        await held_by(nc, "w2")
        await publish(nc, inbound("w1", "back again", "m2", name="Ann"))
        s1b = await held_by(nc, "w1", status="waiting")
        assert s1b.id != s1.id
        assert [o.text for o in await outbound_for(nc, "w1")].count("Hi Ann") == 1


async def _two(coro: Any) -> Any:
    got = await coro
    return got if len(got) >= 2 else None


def _close(op: str, sid: str) -> Any:
    from openlines.commands import Close

    return Close(operator_id=op, session_id=sid)


async def test_skip_and_transfer_to_an_operator_and_to_a_line(nc: Any, nats_server: Any) -> None:
    cfg = OPS + line('mode = "strict"') + line("", "", line_id="sales", account="sales-widget", ops='"vera"')
    await apply_lines(nc, cfg)
    async with running_router(nats_server.url):
        await online(nc, "anna", "boris", "vera")
        await publish(nc, inbound("v", "hi", "m1"))
        s = await held_by(nc, "v")
        assert s.operator_id == "anna"
        await call(nc, "skip", Skip(operator_id="anna", session_id=s.id))
        s = await held_by(nc, "v")
        assert s.operator_id == "boris"
        await call(nc, "accept", Accept(operator_id="boris", session_id=s.id))
        with pytest.raises(CommandFailed) as err:
            await call(nc, "skip", Skip(operator_id="boris", session_id=s.id))
        assert err.value.result.error == "conflict"
        # Boris hands it to Anna, who must accept it.
        res = await call(nc, "transfer", Transfer(operator_id="boris", session_id=s.id, to_operator="anna"))
        assert res.session is not None and (res.session.operator_id, res.session.status) == ("anna", "assigned")
        assert s.id not in (await operator(nc, "boris")).sessions
        # Anna sends it to the sales line, where Vera gets it.
        await call(nc, "transfer", Transfer(operator_id="anna", session_id=s.id, to_line="sales"))
        moved = await held_by(nc, "v")
        assert (moved.line_id, moved.operator_id) == ("sales", "vera")
        kinds = [e.reason for e in await events(nc, "session_transferred")]
        assert kinds == ["operator anna", "line sales"]
        with pytest.raises(CommandFailed) as err:
            await call(nc, "transfer", Transfer(operator_id="vera", session_id=s.id, to_line="nowhere"))
        assert err.value.result.error == "not_found"


async def test_going_away_moves_open_chats_except_pinned_ones(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('mode = "strict"\nreassign_on_status = "all"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        for v in ("p", "q"):
            await publish(nc, inbound(v, "hi", "m1"))
            s = await held_by(nc, v)
            await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="hello", client_msg_id="r1"))
        pinned = await held_by(nc, "p", status="answered")
        await call(nc, "pin", Pin(operator_id="anna", session_id=pinned.id))
        await online(nc, "boris")
        await call(nc, "status", SetStatus(operator_id="anna", status="away"))
        assert (await held_by(nc, "q")).operator_id == "boris"
        kept = await session_of(nc, "p")
        assert kept is not None and (kept.operator_id, kept.status, kept.pinned) == ("anna", "answered", True)


async def test_spam_closes_and_drops_further_messages(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line())
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("spammer", "BUY NOW", "m1"))
        s = await held_by(nc, "spammer")
        await call(nc, "spam", Spam(operator_id=s.operator_id, session_id=s.id))
        await publish(nc, inbound("spammer", "BUY MORE", "m2"))
        dead = await wait_for(lambda: events(nc, "dead_letter"), what="dead letter")
        assert dead[0].reason == "the client is marked as spam"
        assert await session_of(nc, "spammer") is None
        closed = (await events(nc, "session_closed"))[0]
        assert closed.reason == "marked as spam"


async def test_idle_session_closes_itself_with_the_closing_text(nc: Any, nats_server: Any) -> None:
    extra = '[lines.session]\nauto_close_minutes = 0.02\n[lines.auto_replies]\nclosing = "Bye {client_name}"\n'
    await apply_lines(nc, OPS + line("", extra))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("idle", "hi", "m1", name="Ida"))
        s = await held_by(nc, "idle")

        async def closed() -> list[Any] | None:
            evts = [e for e in await events(nc, "session_closed") if e.session_id == s.id]
            return evts or None

        evt = (await wait_for(closed, timeout=15, what="auto-close"))[0]
        assert evt.reason == "closed after no activity"
        assert (await outbound_for(nc, "idle"))[-1].text == "Bye Ida"
        assert s.id not in (await operator(nc, "anna")).sessions


async def test_operator_whose_desk_is_gone_past_the_grace_goes_offline(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line("presence_grace_seconds = 1\nwait_seconds = 600"))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await call(nc, "presence", Presence(operator_id="anna", connected=True, desk="d1"))
        await publish(nc, inbound("v", "hi", "m1"))
        s = await held_by(nc, "v")
        assert s.operator_id == "anna"
        await online(nc, "boris")
        await call(nc, "presence", Presence(operator_id="anna", connected=False, desk="d1"))

        async def offline() -> bool:
            return (await operator(nc, "anna")).status == "offline"

        await wait_for(offline, timeout=15, what="anna offline after the grace period")

        async def with_boris() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.operator_id == "boris" else None

        assert (await wait_for(with_boris, what="the chat handed to boris")).status == "assigned"


async def test_a_desk_page_back_within_the_grace_keeps_the_operator_online(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line("presence_grace_seconds = 1"))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await call(nc, "presence", Presence(operator_id="anna", connected=True, desk="d1"))
        await call(nc, "presence", Presence(operator_id="anna", connected=False, desk="d1"))
        await call(nc, "presence", Presence(operator_id="anna", connected=True, desk="d2"))
        # The stale timer fires and must do nothing: wait for it to leave the timer stream.
        js = nc.jetstream()

        async def timers_done() -> bool:
            info = await js.stream_info(subjects.STREAM_TIMER)
            return info.state.messages == 0

        await wait_for(timers_done, timeout=15, what="presence timer fired")
        assert (await operator(nc, "anna")).status == "online"


async def test_fallback_mode_all_offers_to_all_even_when_one_operator_is_free(nc: Any, nats_server: Any) -> None:
    # It used to go to the one free operator as a plain offer (capacity taken at once), while
    # mode = "all" and `lines simulate` offered it to all: the strategy now says which, for both.
    queue = 'mode = "crm_responsible"\nfallback_mode = "all"\nwait_seconds = 600'
    await apply_lines(nc, OPS + line(queue, ops='"anna", "boris"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("v", "hi", "m1"))

        async def offered() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.status == "assigned" else None

        s = await wait_for(offered, what="the offer")
        assert (s.operator_id, s.offered_to) == ("", ["anna"])
        anna = await operator(nc, "anna")
        assert s.id in anna.offers and s.id not in anna.sessions
        res = await call(nc, "accept", Accept(operator_id="anna", session_id=s.id))
        assert res.session is not None and (res.session.operator_id, res.session.status) == ("anna", "answered")


async def test_mode_all_offers_to_every_free_operator_and_the_first_to_accept_takes_it(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('mode = "all"\nwait_seconds = 600', ops='"anna", "boris", "vera"'))
    async with running_router(nats_server.url):
        await online(nc, "anna", "boris", "vera")
        await publish(nc, inbound("v", "who is there?", "m1"))

        async def offered() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.status == "assigned" and len(s.offered_to) == 3 else None

        s = await wait_for(offered, what="offer to all three")
        assert s.operator_id == ""
        for op in ("anna", "boris", "vera"):
            st = await operator(nc, op)
            assert s.id in st.offers and s.id not in st.sessions  # no capacity taken by an offer
        res = await call(nc, "accept", Accept(operator_id="boris", session_id=s.id))
        assert res.session is not None and (res.session.operator_id, res.session.status) == ("boris", "answered")
        with pytest.raises(CommandFailed) as err:
            await call(nc, "accept", Accept(operator_id="anna", session_id=s.id))
        assert err.value.result.error == "forbidden"
        for op in ("anna", "vera"):
            assert s.id not in (await operator(nc, op)).offers  # withdrawn
        boris = await operator(nc, "boris")
        assert s.id in boris.sessions and s.id not in boris.offers


async def test_mode_all_offer_nobody_accepts_is_offered_again_and_declines_pass_it_on(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line('mode = "all"\nwait_seconds = 1', ops='"anna", "boris"'))
    async with running_router(nats_server.url):
        await online(nc, "anna", "boris")
        await publish(nc, inbound("v", "hello", "m1"))

        async def round_(n: int) -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.assignments >= n and s.status == "assigned" else None

        first = await wait_for(lambda: round_(1), what="first offer")
        again = await wait_for(lambda: round_(first.assignments + 1), timeout=15, what="offered again after no answer")
        assert sorted(again.offered_to) == ["anna", "boris"]
        # Both decline in turn: the offer moves on rather than hanging on them.
        await call(nc, "skip", Skip(operator_id="anna", session_id=again.id))
        after_one = await session_of(nc, "v")
        assert after_one is not None and after_one.offered_to == ["boris"]
        assert again.id not in (await operator(nc, "anna")).offers
        # A reply from Boris takes the chat and answers it in one step.
        await call(nc, "reply", Reply(operator_id="boris", session_id=again.id, text="Here!", client_msg_id="r1"))
        taken = await session_of(nc, "v")
        assert taken is not None and (taken.operator_id, taken.status) == ("boris", "answered")


async def test_a_message_that_must_get_no_auto_reply_gets_none_but_reaches_the_operator(nc: Any, nats_server: Any) -> None:
    extra = '[lines.auto_replies]\nwelcome = "Hello!"\nclosing = "Bye"\n'
    await apply_lines(nc, OPS + line("", extra))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        robot = msgspec.structs.replace(
            inbound("robot", "Out of office", "m1"), no_auto_reply=True, no_auto_reply_reason="auto-submitted"
        )
        await publish(nc, robot)
        await publish(nc, inbound("person", "hi", "m1"))
        s = await held_by(nc, "robot")
        assert s.no_auto_reply
        await held_by(nc, "person")
        await wait_for(lambda: outbound_for(nc, "person"), what="the person's welcome")
        await call(nc, "close", _close(s.operator_id, s.id))
        assert [h.text for h in await history(nc, s.id) if h.direction == "in"] == ["Out of office"]
        assert await outbound_for(nc, "robot") == []


async def test_rating_request_on_close_and_the_clients_mark_is_recorded(nc: Any, nats_server: Any) -> None:
    extra = '[lines.session]\nrating = true\n[lines.auto_replies]\nrating_request = "Rate us from 1 to 5, {client_name}"\n'
    await apply_lines(nc, OPS + line("", extra))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("r", "help", "m1", name="Rita"))
        s = await held_by(nc, "r")
        await call(nc, "close", _close("anna", s.id))
        assert (await wait_for(lambda: outbound_for(nc, "r"), what="rating request"))[-1].text == "Rate us from 1 to 5, Rita"
        await publish(nc, inbound("r", "5/5", "m2"))
        rated = await wait_for(lambda: events(nc, "session_rated"), what="rating recorded")
        assert (rated[0].session_id, rated[0].reason) == (s.id, "5")
        b = await bus.Buckets(nc.jetstream()).open()
        stored, _ = await bus.kv_get(b.sessions, s.id, Session)
        assert stored is not None and stored.rating == 5
        assert await session_of(nc, "r") is None  # a mark opens no new conversation
        # Anything after that is a new conversation, and a bare "4" then is just text.
        await publish(nc, inbound("r", "one more question", "m3"))
        await publish(nc, inbound("r", "4", "m4"))
        again = await held_by(nc, "r")

        async def both() -> list[str] | None:
            texts = [h.text for h in await history(nc, again.id) if h.direction == "in"]
            return texts if len(texts) == 2 else None

        assert await wait_for(both, what="new session transcript") == ["one more question", "4"]
        assert len(await events(nc, "session_rated")) == 1


async def test_a_supervisor_intercepts_a_chat_and_an_operator_may_not(nc: Any, nats_server: Any) -> None:
    ops = OPS + '[operators.sue]\nname = "Sue"\nroles = ["supervisor"]\n'
    await apply_lines(nc, ops + line('mode = "strict"', ops='"boris", "anna"'))
    async with running_router(nats_server.url):
        await online(nc, "boris")
        await publish(nc, inbound("v", "help", "m1"))
        s = await held_by(nc, "v")
        assert s.operator_id == "boris"
        with pytest.raises(CommandFailed) as err:
            await call(nc, "intercept", Intercept(operator_id="anna", session_id=s.id))
        assert err.value.result.error == "forbidden"
        res = await call(nc, "intercept", Intercept(operator_id="sue", session_id=s.id))
        assert res.session is not None and (res.session.operator_id, res.session.status) == ("sue", "answered")
        assert s.id not in (await operator(nc, "boris")).sessions
        assert s.id in (await operator(nc, "sue")).sessions
        assert [e.reason for e in await events(nc, "session_transferred")] == ["intercepted by sue"]
        await call(nc, "reply", Reply(operator_id="sue", session_id=s.id, text="I am the supervisor", client_msg_id="x1"))
        assert (await outbound_for(nc, "v"))[-1].operator_name == "Sue"


async def test_welcome_each_session_greets_a_returning_client_again(nc: Any, nats_server: Any) -> None:
    extra = '[lines.auto_replies]\nwelcome = "Hi {client_name}"\nwelcome_each_session = true\n'
    await apply_lines(nc, OPS + line("", extra, ops='"anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("w", "first", "m1", name="Ann"))
        s1 = await held_by(nc, "w")
        await call(nc, "close", _close("anna", s1.id))
        await publish(nc, inbound("w", "again", "m2", name="Ann"))
        s2 = await held_by(nc, "w")
        assert s2.id != s1.id
        assert [o.text for o in await wait_for(lambda: _two(outbound_for(nc, "w")), what="two welcomes")] == ["Hi Ann", "Hi Ann"]


@pytest.mark.slow
async def test_a_held_chat_is_offered_when_the_line_opens_by_its_durable_timer(nc: Any, nats_server: Any) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    opens = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (opens - now).total_seconds() < 5:  # too close to call: take the minute after
        opens += timedelta(minutes=1)
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[opens.weekday()]
    end = "24:00" if opens.hour == 23 else f"{opens.hour + 1:02d}:{opens.minute:02d}"
    hours = (
        f'[lines.hours]\nenabled = true\ntimezone = "UTC"\noutside = "hold_until_open"\n'
        f'[lines.hours.weekly]\n{day} = ["{opens:%H:%M}-{end}"]\n'
    )
    await apply_lines(nc, OPS + line("", hours, ops='"anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        for v in ("early", "later"):
            await publish(nc, inbound(v, "are you open?", "m1"))
            await held_by(nc, v, status="waiting")

        # Nothing happens until the opening; then the held chats are offered, oldest first.
        async def offered(v: str) -> Session | None:
            s = await session_of(nc, v)
            return s if s is not None and s.status == "assigned" else None

        first = await wait_for(lambda: offered("early"), timeout=90, interval=0.2, what="the opening")
        second = await wait_for(lambda: offered("later"), timeout=10, what="the second held chat")
        assert first.assigned_at is not None and second.assigned_at is not None
        assert first.assigned_at >= opens and first.assigned_at <= second.assigned_at


async def test_a_capacity_claim_left_by_a_crash_does_not_block_the_operator(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line("max_chats_per_operator = 1", ops='"anna"'))
    b = await bus.Buckets(nc.jetstream()).open()
    async with running_router(nats_server.url, sweep_seconds=3600):
        await online(nc, "anna")
        await publish(nc, inbound("old", "hi", "m1"))
        old = await held_by(nc, "old")
        await call(nc, "close", _close("anna", old.id))
        # A router killed between claiming anna's capacity and recording the offer leaves this behind:
        st = await operator(nc, "anna")
        await b.operators.put("anna", msgspec.json.encode(msgspec.structs.replace(st, sessions=[old.id])))
        await publish(nc, inbound("new", "hello", "m1"))
        s = await held_by(nc, "new")
        assert s.operator_id == "anna"
        assert (await operator(nc, "anna")).sessions == [s.id]


async def test_a_close_cut_short_by_a_crash_is_finished_by_the_settle_timer(nc: Any, nats_server: Any) -> None:
    extra = '[lines.auto_replies]\nclosing = "Bye {client_name}"\n'
    await apply_lines(nc, OPS + line("", extra, ops='"anna"'))
    b = await bus.Buckets(nc.jetstream()).open()
    async with running_router(nats_server.url, sweep_seconds=3600):
        await online(nc, "anna")
        await publish(nc, inbound("whole", "hi", "m1", name="Wanda"))
        whole = await held_by(nc, "whole")
        await call(nc, "close", _close("anna", whole.id))
        done, _ = await bus.kv_get(b.sessions, whole.id, Session)
        assert done is not None and done.status == "closed" and done.close_finished
        await publish(nc, inbound("cut", "hi", "m1", name="Cora"))
        s = await held_by(nc, "cut")
    # A router killed right after the first write of a close leaves this behind:
    # the settle timer set, the session closed, everything else undone.
    await schedule(nc.jetstream(), Timer(kind="settle", target=s.id, due=time.time(), token="t1"))
    await bus.kv_update(
        b.sessions,
        s.id,
        Session,
        lambda cur: msgspec.structs.replace(cur, status="closed", closed_at=utcnow(), closed_by="anna", close_reason="operator"),
    )
    assert s.id in (await operator(nc, "anna")).sessions
    async with running_router(nats_server.url, sweep_seconds=3600):

        async def finished() -> Session | None:
            cur, _ = await bus.kv_get(b.sessions, s.id, Session)
            return cur if cur is not None and cur.close_finished else None

        await wait_for(finished, timeout=15, what="the close finished by its timer")
        assert await session_of(nc, "cut") is None  # the client no longer points at the closed chat
        assert s.id not in (await operator(nc, "anna")).sessions
        assert [e.reason for e in await events(nc, "session_closed") if e.session_id == s.id] == ["closed by anna"]
        assert [o.text for o in await outbound_for(nc, "cut") if o.text.startswith("Bye")] == ["Bye Cora"]


async def test_a_chat_passed_on_when_a_crash_cut_the_move_short_is_queued_and_offered(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line("wait_seconds = 600"))
    b = await bus.Buckets(nc.jetstream()).open()
    async with running_router(nats_server.url, sweep_seconds=3600):
        await online(nc, "anna")
        await publish(nc, inbound("moved", "hi", "m1"))
        s = await held_by(nc, "moved")
        await online(nc, "boris")
    # A router killed right after putting the chat back to waiting (skip, no answer,
    # transfer to a line) leaves it out of the queue: nothing would ever offer it again.
    await schedule(nc.jetstream(), Timer(kind="settle", target=s.id, due=time.time(), token="t1"))
    await bus.kv_update(
        b.sessions,
        s.id,
        Session,
        lambda cur: msgspec.structs.replace(cur, status="waiting", operator_id="", assigned_at=None, declined_by=["anna"]),
    )
    st = await operator(nc, "anna")
    await b.operators.put("anna", msgspec.json.encode(msgspec.structs.replace(st, sessions=[])))
    async with running_router(nats_server.url, sweep_seconds=3600):
        again = await held_by(nc, "moved")
        assert again.operator_id == "boris"  # anna let it pass; boris is free


async def test_the_opening_message_again_after_its_chat_closed_changes_nothing(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line(ops='"anna"'))
    b = await bus.Buckets(nc.jetstream()).open()
    ck = client_key("webchat", "demo", subjects.chat_key("webchat", "demo", "again"))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        msg = inbound("again", "hi", "m1")
        await publish(nc, msg)
        s = await held_by(nc, "again")
        await call(nc, "close", _close("anna", s.id))
        # A router that handled the message but died before acknowledging it gets it again,
        # not having recorded it among the client's recent messages (the last step).
        rec, _ = await bus.kv_get(b.clients, ck, ClientRecord)
        assert rec is not None and not rec.open_sessions
        await b.clients.put(ck, msgspec.json.encode(msgspec.structs.replace(rec, recent_msg_ids=[])))
        subject = subjects.inbound(msg.channel, msg.account, msg.chat_id)
        await nc.jetstream().publish(subject, msgspec.json.encode(msg), headers={MSG_ID_HEADER: msg.id + ":again"})

        async def remembered() -> ClientRecord | None:
            cur, _ = await bus.kv_get(b.clients, ck, ClientRecord)
            return cur if cur is not None and msg.id in cur.recent_msg_ids else None

        after = await wait_for(remembered, timeout=15, what="the message handled again")
        assert after.open_sessions == {} and after.sessions_total == 1
        closed, _ = await bus.kv_get(b.sessions, s.id, Session)
        assert closed is not None and closed.status == "closed" and closed.messages_in == 1


async def test_a_reply_may_carry_files_and_no_text(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line(ops='"anna"'))
    async with running_router(nats_server.url):
        await online(nc, "anna")
        await publish(nc, inbound("files", "send me the invoice", "m1"))
        s = await held_by(nc, "files")
        pdf = Attachment(kind="file", name="invoice.pdf", mime="application/pdf", size=1234, url="https://desk.example/f/1")
        await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="", client_msg_id="r1", attachments=[pdf]))
        sent = await wait_for(lambda: outbound_for(nc, "files"), what="the reply with the file")
        assert sent[-1].attachments == [pdf] and sent[-1].text == ""
        out = [h for h in await history(nc, s.id) if h.direction == "out"]
        assert out[-1].attachments == [pdf]
        with pytest.raises(CommandFailed, match="empty"):
            await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="  ", client_msg_id="r2"))
