"""The open session read beside the client record on this replica's hint (router/shell/hints.py), never trusted."""

from __future__ import annotations

from typing import Any

import msgspec
from support import apply_lines, client_record, history, inbound, line_block, operators_block, publish, running_router, session_of
from support.timing import wait_for

from openlines import bus, subjects
from openlines.commands import SetStatus, call
from openlines.state import ClientRecord, Session, client_key


async def test_a_message_goes_to_the_session_the_client_record_names_not_the_one_the_replica_remembers(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, operators_block("anna") + line_block(operators='"anna"', queue="wait_seconds = 600"))
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v", "first", "m1"))

        async def opened() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.operator_id else None

        first = await wait_for(opened, what="the first session offered")  # the replica now remembers it
        # Elsewhere (another replica, a merge), the chat's open session changed without this replica seeing it:
        # the first one is closed and the client record names another.
        b = await bus.Buckets(nc.jetstream()).open()
        other = msgspec.structs.replace(first, id="s-elsewhere", status="assigned")
        await b.sessions.put(other.id, msgspec.json.encode(other))
        closed = msgspec.structs.replace(first, status="closed")
        await b.sessions.put(first.id, msgspec.json.encode(closed))
        ckey = client_key("webchat", "demo", subjects.chat_key("webchat", "demo", "v"))

        def relinked(rec: ClientRecord | None) -> ClientRecord:
            assert rec is not None
            return msgspec.structs.replace(rec, open_sessions={**rec.open_sessions, "support": other.id})

        await bus.kv_update(b.clients, ckey, ClientRecord, relinked)

        await publish(nc, inbound("v", "second", "m2"))

        async def in_other() -> list[str] | None:
            texts = [h.text for h in await history(nc, other.id) if h.direction == "in"]
            return texts or None

        assert await wait_for(in_other, what="the second message in the session the record names") == ["second"]
        assert [h.text for h in await history(nc, first.id) if h.direction == "in"] == ["first"]
        rec = await client_record(nc, "v")
        assert rec is not None and "webchat:demo:v:m2" in rec.recent_msg_ids
