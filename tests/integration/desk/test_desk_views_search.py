"""Views (queue, all my lines, closed), search and tags through the desk's API, with the real router and NATS.

Two lines: "support" (webchat account demo; boris and carol) and "vip" (webchat
account vip; carol and anna). Anna is a supervisor. Everyone starts offline, so
clients wait in the queues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from support import apply_lines, client_writes, running_router
from support.desk import http_session, running_desk, sign_in
from support.timing import wait_for
from support.views import LINES

from desk.settings import Settings
from openlines import subjects
from openlines.bus import read_subject
from openlines.commands import SetStatus, call
from openlines.envelopes import HistoryEntry, SessionEvent
from openlines.runner import Service


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url), running_desk(nats_server.url) as svc:
        yield svc


async def conversations(http: Any, **params: str) -> dict[str, Any]:
    async with http.get("/api/conversations", params=params) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def names_in(http: Any, **params: str) -> list[str]:
    return [c["client_name"] for c in (await conversations(http, **params))["chats"]]


async def until_listed(http: Any, expected: list[str], **params: str) -> list[str]:
    async def listed() -> tuple[list[str]] | None:
        found = await names_in(http, **params)
        return (found,) if sorted(found) == sorted(expected) else None  # a tuple: an empty list is an answer too

    return (await wait_for(listed, what=f"{expected} in {params}"))[0]


async def clients(nc: Any) -> None:
    """Two clients on support, one on vip, all waiting (nobody is online)."""
    await client_writes(nc, "Alice Parker", "1", "Where is my parcel? Order 5521", phone="+371 2000 0001")
    await client_writes(nc, "Bob Stone", "1", "I want a refund", email="Bob.Stone@Example.com")
    await client_writes(nc, "Sam Secret", "1", "About the confidential merger", account="vip", phone="+44 7700 900123")


async def test_the_queue_lists_waiting_chats_of_my_lines_only_and_take_makes_one_mine(nc: Any, desk: Service[Settings]) -> None:
    await clients(nc)
    async with http_session(desk) as boris, http_session(desk) as carol, http_session(desk) as anna:
        hb = await sign_in(boris, "boris")
        hc = await sign_in(carol, "carol")
        await sign_in(anna, "anna")
        await until_listed(boris, ["Alice Parker", "Bob Stone"], view="queue")  # not vip's Sam
        await until_listed(carol, ["Alice Parker", "Bob Stone", "Sam Secret"], view="queue")
        await until_listed(anna, ["Alice Parker", "Bob Stone", "Sam Secret"], view="lines")  # a supervisor sees every line
        queue = (await conversations(boris, view="queue"))["chats"]
        assert all(c["can_take"] for c in queue) and [c["status"] for c in queue] == ["waiting", "waiting"]
        alice = next(c["id"] for c in queue if c["client_name"] == "Alice Parker")
        sam = next(c["id"] for c in (await conversations(carol, view="queue"))["chats"] if c["client_name"] == "Sam Secret")

        # Offline: no taking. Not on the line: no taking, whatever the status.
        async with boris.post(f"/api/sessions/{alice}/take", headers=hb) as r:
            assert r.status == 409 and "offline" in (await r.json())["detail"]
        await call(nc, "status", SetStatus(operator_id="boris", status="away"))  # away: no offers, but may take
        async with boris.post(f"/api/sessions/{sam}/take", headers=hb) as r:
            assert r.status == 403 and "queue of the chat's line" in (await r.json())["detail"]
        async with boris.post(f"/api/sessions/{alice}/take", headers={}) as r:
            assert r.status == 403  # no CSRF header
        async with boris.post(f"/api/sessions/{alice}/take", headers=hb) as r:
            assert r.status == 200, await r.text()
            taken = (await r.json())["session"]
        assert taken["operator_id"] == "boris" and taken["status"] == "answered"
        await until_listed(boris, ["Bob Stone"], view="queue")
        await until_listed(boris, ["Alice Parker"], view="mine")
        async with boris.get("/api/chats") as r:
            assert [c["client_name"] for c in (await r.json())["chats"]] == ["Alice Parker"]
        # Taken is taken: carol cannot take it again.
        await call(nc, "status", SetStatus(operator_id="carol", status="away"))
        async with carol.post(f"/api/sessions/{alice}/take", headers=hc) as r:
            assert r.status == 409 and "no longer waiting" in (await r.json())["detail"]
        # The trail says who took it.
        notes = [e.text for e in await history(nc, alice)]
        assert "Taken from the queue by Boris Ivanov" in notes and "Answered by Boris Ivanov" in notes, notes
        # All my lines: carol sees boris's chat with its operator; closed after boris closes it.
        lines = (await conversations(carol, view="lines"))["chats"]
        assert {c["client_name"]: c["operator_name"] for c in lines}["Alice Parker"] == "Boris Ivanov"
        async with boris.post(f"/api/sessions/{alice}/close", headers=hb) as r:
            assert r.status == 200
        await until_listed(carol, ["Alice Parker"], view="closed")
        await until_listed(boris, ["Alice Parker"], view="closed", status="closed", line="support")
        # Carol (same line) may read it now; a stranger to the line may not.
        async with carol.get(f"/api/sessions/{alice}/history") as r:
            assert r.status == 200
        async with boris.get(f"/api/sessions/{sam}/history") as r:
            assert r.status == 403


async def test_search_finds_clients_by_name_phone_email_and_words_but_never_a_chat_of_another_line(
    nc: Any, desk: Service[Settings]
) -> None:
    await clients(nc)
    async with http_session(desk) as boris, http_session(desk) as carol:
        await sign_in(boris, "boris")
        await sign_in(carol, "carol")
        await until_listed(boris, ["Alice Parker"], q="parcel")  # a word of a message
        found = (await conversations(boris, q="parcel"))["chats"][0]
        assert found["matched"] == "message" and "parcel" in found["snippet"]
        assert await names_in(boris, q="parc") == ["Alice Parker"]  # words by their beginning
        assert await names_in(boris, q="alice") == ["Alice Parker"]  # the name, any case
        assert await names_in(boris, q="2000 0001") == ["Alice Parker"]  # phone digits, however written
        assert await names_in(boris, q="+371 20000001") == ["Alice Parker"]
        assert await names_in(boris, q="bob.stone@example") == ["Bob Stone"]  # e-mail, any case
        assert await names_in(boris, q="refund") == ["Bob Stone"]
        assert await names_in(boris, q="refund parcel") == []  # every word must match
        # Sam is on the vip line: boris finds nothing of him, by any of his data; carol does.
        await until_listed(carol, ["Sam Secret"], q="merger")
        for q in ("merger", "confidential", "Sam", "Secret", "7700 900123"):
            assert await names_in(boris, q=q) == [], q
            assert await names_in(boris, q=q, view="all", line="vip") == [], q
        assert await names_in(carol, q="7700900123") == ["Sam Secret"]
        # Filters narrow it down.
        assert sorted(await names_in(carol, channel="webchat", view="lines")) == ["Alice Parker", "Bob Stone", "Sam Secret"]
        assert await names_in(carol, line="vip", view="lines") == ["Sam Secret"]
        assert await names_in(carol, channel="telegram", view="lines") == []
        # Odd input is no error: quotes, FTS syntax, very short words.
        for q in ('"', "AND OR NOT", "a*", "(x", "p"):
            await conversations(boris, q=q)
        async with boris.get("/api/conversations", params={"view": "everything"}) as r:
            assert r.status == 400 and "view must be one of" in (await r.json())["detail"]
        async with boris.get("/api/conversations", params={"q": "x" * 201}) as r:
            assert r.status == 400
        async with boris.get("/api/conversations", params={"status": "gone"}) as r:
            assert r.status == 400


async def test_tags_are_added_and_removed_stored_filtered_and_in_the_trail(nc: Any, desk: Service[Settings]) -> None:
    await clients(nc)
    async with http_session(desk) as boris, http_session(desk) as carol, http_session(desk) as anna:
        hb = await sign_in(boris, "boris")
        hc = await sign_in(carol, "carol")
        ha = await sign_in(anna, "anna")
        await until_listed(boris, ["Alice Parker", "Bob Stone"], view="queue")
        bob = next(c["id"] for c in (await conversations(boris, view="queue"))["chats"] if c["client_name"] == "Bob Stone")
        await until_listed(carol, ["Sam Secret"], view="queue", line="vip")
        sam = (await conversations(carol, view="queue", line="vip"))["chats"][0]["id"]
        async with boris.post(f"/api/sessions/{bob}/tags", json={"add": ["Refund", "urgent"]}, headers=hb) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["session"]["tags"] == ["refund", "urgent"]
        await until_listed(boris, ["Bob Stone"], tag="refund", view="queue")
        assert (await conversations(boris, view="queue"))["filters"]["tags"] == ["refund", "urgent"]
        async with carol.post(f"/api/sessions/{bob}/tags", json={"remove": ["urgent"]}, headers=hc) as r:
            assert r.status == 200 and (await r.json())["session"]["tags"] == ["refund"]
        await until_listed(boris, [], tag="urgent")
        # The trail: one event and one transcript line per change, naming who.
        events = [e for e in await tag_events(nc) if e.session_id == bob]
        assert [e.reason for e in events] == ["+refund +urgent", "-urgent"]
        notes = [e.text for e in await history(nc, bob) if e.direction == "system"]
        assert "Boris Ivanov added the tag refund, added the tag urgent" in notes
        assert "Carol Smith removed the tag urgent" in notes
        # Refused: another line's chat, bad tags, too many; a supervisor may tag any chat.
        async with boris.post(f"/api/sessions/{sam}/tags", json={"add": ["x"]}, headers=hb) as r:
            assert r.status == 403
        for bad in (["two words"], [""], ["<b>"], ["x" * 33], "vip"):
            async with boris.post(f"/api/sessions/{bob}/tags", json={"add": bad}, headers=hb) as r:
                assert r.status == 400, bad
        async with boris.post(f"/api/sessions/{bob}/tags", json={"add": [f"t{i}" for i in range(20)]}, headers=hb) as r:
            assert r.status == 400 and "at most 20" in (await r.json())["detail"]
        async with anna.post(f"/api/sessions/{sam}/tags", json={"add": ["vip"]}, headers=ha) as r:
            assert r.status == 200
        assert await names_in(boris, tag="vip") == []  # still not boris's to see
        await until_listed(carol, ["Sam Secret"], tag="vip")


async def history(nc: Any, session_id: str) -> list[HistoryEntry]:
    raw = await read_subject(nc.jetstream(), subjects.STREAM_HIST, subjects.history(session_id))
    return [msgspec.json.decode(d, type=HistoryEntry) for _, d in raw]


async def tag_events(nc: Any) -> list[SessionEvent]:
    raw = await read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event("session_tagged"))
    return [msgspec.json.decode(d, type=SessionEvent) for _, d in raw]


async def test_every_desk_replica_answers_the_same_and_a_replica_started_later_rebuilds_its_index(
    nc: Any, nats_server: Any, desk: Service[Settings]
) -> None:
    await clients(nc)
    async with http_session(desk) as first:
        await sign_in(first, "carol")
        await until_listed(first, ["Sam Secret"], q="merger")
    # A second replica, started after the messages: it reads them from the streams.
    async with running_desk(nats_server.url) as second, http_session(second) as other, http_session(desk) as first:
        await sign_in(other, "carol")
        await sign_in(first, "carol")
        await until_listed(other, ["Sam Secret"], q="merger")
        await until_listed(other, ["Alice Parker"], q="20000001")
        assert (await conversations(other, q="merger"))["ready"] is True
        # What arrives now reaches both.
        await client_writes(nc, "Alice Parker", "2", "The courier never came")
        for http in (first, other):
            await until_listed(http, ["Alice Parker"], q="courier")


async def test_two_operators_taking_the_same_chat_at_once_one_gets_it_and_the_other_keeps_no_claim(
    nc: Any, desk: Service[Settings]
) -> None:
    from openlines import bus
    from openlines.commands import CommandFailed, Take
    from openlines.state import OperatorState, Session

    await client_writes(nc, "Alice Parker", "1", "Anyone there?")
    for op in ("boris", "carol"):
        await call(nc, "status", SetStatus(operator_id=op, status="away"))
    async with http_session(desk) as boris:
        await sign_in(boris, "boris")
        await until_listed(boris, ["Alice Parker"], view="queue")
        sid = (await conversations(boris, view="queue"))["chats"][0]["id"]
    results = await asyncio.gather(
        *(call(nc, "take", Take(operator_id=op, session_id=sid)) for op in ("boris", "carol")), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, CommandFailed)]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0].result.error == "conflict"
    winner = won[0].session
    assert winner is not None
    b = await bus.Buckets(nc.jetstream()).open()
    stored, _ = await bus.kv_get(b.sessions, sid, Session)
    assert stored is not None and stored.operator_id == winner.operator_id and stored.status == "answered"
    loser = "carol" if winner.operator_id == "boris" else "boris"
    state, _ = await bus.kv_get(b.operators, loser, OperatorState)
    assert state is not None and sid not in state.sessions  # its claim on the loser was given back
