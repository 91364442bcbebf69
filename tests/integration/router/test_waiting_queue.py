"""Waiting queues in ``ol-waiting`` (one key per chat) as router replicas see them, on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.state import QueuedChat, WaitingQueue, queue_key, waiting_key
from router.waiting import Waiting, move_old_queues


@contextlib.asynccontextmanager
async def replica(nc: Any) -> AsyncIterator[Waiting]:
    """One router replica's copy of the queues, fed by its own watch, on its own connection (as a replica has)."""
    url = f"nats://{nc.connected_url.hostname}:{nc.connected_url.port}"
    conn = await bus.connect(url, "replica", first_attempts=3)
    js = conn.jetstream()
    w = Waiting(js)
    task = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(w.loaded.wait(), timeout=scaled(30))
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=scaled(10))
        await conn.close()


async def test_replicas_share_each_line_queue_oldest_first_and_see_removals(nc: Any) -> None:
    async with replica(nc) as a, replica(nc) as b:
        await a.add("support", "s-late", since=300.0)
        await b.add("support", "s-early", since=100.0)
        await a.add("sales", "s-other", since=50.0)
        await a.add("support", "s-mid", since=200.0)
        for w in (a, b):
            await w.sync()
            assert w.head("support") == QueuedChat(session_id="s-early", since=100.0, line_id="support")
            assert [w.position("support", s) for s in ("s-early", "s-mid", "s-late")] == [1, 2, 3]
            assert w.count("support") == 3 and w.count("sales") == 1 and ("sales", "s-other") in w
        # Put back to waiting (an operator did not answer): the chat keeps its place.
        await b.add("support", "s-early", since=100.0)
        await b.remove("support", "s-mid")
        for w in (a, b):
            await w.sync()
            assert [w.position("support", s) for s in ("s-early", "s-mid", "s-late")] == [1, 0, 2]
        await a.remove("support", "s-early")
        await a.remove("support", "s-late")
        await a.remove("support", "never-queued")  # nothing happens
        for w in (a, b):
            await w.sync()
            assert w.head("support") is None and w.count("support") == 0
    # Only the chats that still wait are live keys.
    assert await (await nc.jetstream().key_value(subjects.KV_WAITING)).keys() == [waiting_key("sales", "s-other")]


async def test_sync_sees_every_chat_another_replica_queued_just_before(nc: Any) -> None:
    async with replica(nc) as a, replica(nc) as b:
        for i in range(200):
            await a.add("support", f"s{i}", since=float(i))
            await b.sync()
            assert b.count("support") == i + 1, f"chat {i} queued by the other replica is not seen after sync"
            assert b.position("support", f"s{i}") == i + 1


async def test_one_line_holds_more_waiting_chats_than_one_value_could(nc: Any) -> None:
    n = 20_000  # at ~60 bytes each, more than nats-server's default 1 MB max_payload as one value
    async with replica(nc) as writer:
        for start in range(0, n, 500):
            batch = range(start, min(n, start + 500))
            await asyncio.gather(*(writer.add("support", f"s{i:05d}", since=1000.0 + i) for i in batch))
    # A replica starting now loads all of them.
    async with replica(nc) as fresh:
        await wait_for(lambda: fresh.count("support") == n, what="every waiting chat loaded", timeout=60)
        assert fresh.head("support") == QueuedChat(session_id="s00000", since=1000.0, line_id="support")
        assert fresh.position("support", f"s{n - 1:05d}") == n
        assert fresh.position("support", "s10000") == 10_001


async def test_a_chat_leaves_the_queue_by_a_marker_that_expires(nc: Any) -> None:
    js = nc.jetstream()
    async with replica(nc) as w:
        await w.add("support", "s1", since=1.0)
        await w.remove("support", "s1")
    msg = await js.get_last_msg(f"KV_{subjects.KV_WAITING}", f"$KV.{subjects.KV_WAITING}.{waiting_key('support', 's1')}")
    headers = msg.headers or {}
    assert headers.get("KV-Operation") == "PURGE"
    assert headers.get("Nats-TTL") is not None, headers  # the bucket keeps no trace of a chat once the marker expires
    info = await js.stream_info(f"KV_{subjects.KV_WAITING}")
    assert info.state.messages == 1  # the purge rolled up the chat's value: only the marker is left


async def test_a_late_watch_event_never_undoes_a_newer_write_of_its_own(nc: Any) -> None:
    # The replica's own writes are applied at once; the watch may deliver older events afterwards.
    js = nc.jetstream()
    w = Waiting(js)  # its watch not started: events are handed in below
    await w.add("support", "s1", since=5.0)
    await w.remove("support", "s1")
    # The watch now brings the put that came before the removal: it must not queue the chat again.
    w._apply(waiting_key("support", "s1"), 1, msgspec.json.encode(QueuedChat(session_id="s1", since=5.0, line_id="support")))
    assert w.count("support") == 0
    await w.add("support", "s2", since=6.0)
    w._apply(waiting_key("support", "s2"), 1, None)  # an older removal arriving late
    assert w.position("support", "s2") == 1
    w._apply(waiting_key("support", "s2"), 10**9, None)  # a newer removal (another replica's) applies
    assert w.position("support", "s2") == 0


async def test_queues_of_the_earlier_layout_are_moved_once(nc: Any) -> None:
    js = nc.jetstream()
    b = await bus.Buckets(js).open()
    old = WaitingQueue(chats=[QueuedChat(session_id="s-a", since=10.0), QueuedChat(session_id="s-b", since=20.0)])
    await b.sessions.put(queue_key("support"), msgspec.json.encode(old))
    async with replica(nc) as w:
        assert await move_old_queues(b.sessions, w, ["support", "sales"]) == 2
        assert [w.position("support", s) for s in ("s-a", "s-b")] == [1, 2]
        assert await move_old_queues(b.sessions, w, ["support", "sales"]) == 0
    got, _ = await bus.kv_get(b.sessions, queue_key("support"), WaitingQueue)
    assert got is None
    assert sorted(await b.waiting.keys()) == [waiting_key("support", "s-a"), waiting_key("support", "s-b")]
