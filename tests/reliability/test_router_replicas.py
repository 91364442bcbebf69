"""Two router replicas under a burst of new clients on one line.

Checks the promises of partitioned routing: no operator ever holds more than
max_chats_per_operator, every client is served exactly once, and each
client's messages reach the transcript in the order they were sent.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import REGISTRY
from support import apply_lines, history, inbound, publish, running_router
from support.timing import wait_for

from openlines import bus, subjects
from openlines.commands import Close, CommandFailed, Reply, SetStatus, call
from openlines.state import ClientRecord, OperatorState, Session, client_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = int(os.environ.get("OPENLINES_BURST_CLIENTS", "1000"))
# Messages of a partition in hand at once (decision 029): the shipped default unless the environment says.
IN_HAND = {"in_hand": int(os.environ["OPENLINES_IN_HAND"])} if os.environ.get("OPENLINES_IN_HAND") else {}
OPERATORS = [f"op{i}" for i in range(1, 6)]
MAX_CHATS = 3

LINES = (
    "".join(f'[operators.{op}]\nname = "Operator {op}"\n' for op in OPERATORS)
    + '[[lines]]\nid = "support"\nname = "Support"\nchannels = [{ channel = "webchat", account = "demo" }]\n'
    + f"[lines.queue]\noperators = {msgspec.json.encode(OPERATORS).decode()}\n"
    + f"max_chats_per_operator = {MAX_CHATS}\nwait_seconds = 3600\n"
)


async def test_two_replicas_burst_of_new_clients_capacity_order_and_exactly_once(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    b = await bus.Buckets(nc.jetstream()).open()
    most = {op: 0 for op in OPERATORS}
    changed = {op: asyncio.Event() for op in OPERATORS}

    watcher = await b.operators.watchall()

    async def watch() -> None:
        async for entry in watcher:
            if entry is None or not entry.value:
                continue
            st = msgspec.json.decode(entry.value, type=OperatorState)
            most[st.id] = max(most[st.id], len(st.sessions))
            changed[st.id].set()

    closed: set[str] = set()

    unsure: set[str] = set()  # closes whose answer did not come in time: done or not, looked at again

    async def operator(op: str) -> None:
        while len(closed) < CLIENTS:
            changed[op].clear()
            try:
                for sid in list(unsure):
                    s, _ = await bus.kv_get(b.sessions, sid, Session)
                    if s is not None and s.status == "closed":
                        closed.add(sid)
                        unsure.discard(sid)
                st, _ = await bus.kv_get(b.operators, op, OperatorState)
                for sid in st.sessions if st else []:
                    session, _ = await bus.kv_get(b.sessions, sid, Session)
                    if session is None:
                        continue
                    try:
                        if session.status == "assigned":
                            await call(nc, "reply", Reply(operator_id=op, session_id=sid, text="hello", client_msg_id="r1"))
                        if session.messages_in >= 2:  # the client has said all it will: done
                            unsure.add(sid)
                            await call(nc, "close", Close(operator_id=op, session_id=sid))
                            closed.add(sid)
                            unsure.discard(sid)
                    except CommandFailed:
                        pass  # moved on meanwhile
            except (NatsTimeout, TimeoutError):
                pass  # a loaded machine: a request went unanswered in time; the next round tries again (same ids)
            try:
                await asyncio.wait_for(changed[op].wait(), timeout=0.2)
            except TimeoutError:
                pass

    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(running_router(nats_server.url, **IN_HAND))
        leases = await nc.jetstream().key_value(subjects.KV_ROUTER)

        async def split() -> bool:
            owners = []
            for p in range(subjects.PARTITIONS):
                try:
                    owners.append((await leases.get(f"lease.{p}")).value)
                except Exception:
                    return False
            return len(set(owners)) == 2 and max(owners.count(o) for o in set(owners)) == subjects.PARTITIONS // 2

        await wait_for(split, timeout=60, what="the partitions split evenly between the two replicas")
        for op in OPERATORS:
            await call(nc, "status", SetStatus(operator_id=op, status="online"))
        tasks = [asyncio.create_task(watch())] + [asyncio.create_task(operator(op)) for op in OPERATORS]
        # The burst: every client writes twice, all at once.
        visitors = [f"burst{i}" for i in range(CLIENTS)]
        for start in range(0, CLIENTS, 100):
            chunk = visitors[start : start + 100]
            await asyncio.gather(*(publish(nc, inbound(v, "first", "m1")) for v in chunk))
            await asyncio.gather(*(publish(nc, inbound(v, "second", "m2")) for v in chunk))

        try:
            await wait_for(lambda: len(closed) >= CLIENTS, timeout=600, interval=0.5, what=f"all {CLIENTS} chats answered")
        except AssertionError as exc:  # say whether it was slow or stuck: how far it got, and where the rest are
            states: Counter[str] = Counter()
            for v in visitors:
                rec, _ = await bus.kv_get(
                    b.clients, client_key("webchat", "demo", subjects.chat_key("webchat", "demo", v)), ClientRecord
                )
                sid = rec.open_sessions.get("support", "") if rec else ""
                s, _ = await bus.kv_get(b.sessions, sid, Session) if sid else (None, None)
                states[
                    f"{s.status}/{s.operator_id or '-'}/in={s.messages_in}" if s else ("no client" if rec is None else "closed")
                ] += 1
            raise AssertionError(f"{exc}: {len(closed)} closed; the others: {states.most_common(8)}") from None
        # The replicas' lease rounds (every few seconds) read the members without leaving consumers behind:
        # only the durable ones stay (nats-server refuses more than 1,000 per stream).
        for stream in (f"KV_{subjects.KV_ROUTER}", f"KV_{subjects.KV_LINES}", f"KV_{subjects.KV_OPERATORS}"):
            assert (await nc.jetstream().stream_info(stream)).state.consumer_count <= 4, stream
        for t in tasks:
            t.cancel()
        await watcher.stop()

    print(  # how often two replicas held a partition at once, and what that cost (decisions 029, 033)
        "\nleases lost: {:.0f}, partition consumers read again: {:.0f}, messages held back: {:.0f}".format(
            *(
                REGISTRY.get_sample_value(name) or 0.0
                for name in (
                    "openlines_router_partition_leases_lost_total",
                    "openlines_router_inbound_partition_reads_total",
                    "openlines_router_inbound_held_back_total",
                )
            )
        )
    )
    assert max(most.values()) <= MAX_CHATS, most
    assert all(most[op] > 0 for op in OPERATORS), most  # everyone took part
    for v in visitors:
        rec, _ = await bus.kv_get(b.clients, client_key("webchat", "demo", subjects.chat_key("webchat", "demo", v)), ClientRecord)
        assert rec is not None and rec.sessions_total == 1, (v, rec)
    assert len(closed) == CLIENTS
    for sid in closed:
        s, _ = await bus.kv_get(b.sessions, sid, Session)
        assert s is not None and s.status == "closed"
        texts = [h.text for h in await history(nc, s.id) if h.direction == "in"]
        assert texts == ["first", "second"], (s.chat_id, texts)
