"""The socket registry's replay/live merge: nothing lost, nothing doubled, in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway_webchat.push import Hub, Socket


class RecordingWs:
    """Stands in for aiohttp's WebSocketResponse: records what would go on the wire."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, bytes] | None = None
        self.changed = asyncio.Event()

    async def send_str(self, data: str) -> None:
        self.sent.append(data)
        self.changed.set()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = (code, message)
        self.changed.set()
        return True


def reply(seq: int) -> str:
    return json.dumps({"type": "reply", "seq": seq})


async def sent_seqs(ws: RecordingWs, count: int) -> list[int]:
    async with asyncio.timeout(5):
        while len(ws.sent) < count:
            ws.changed.clear()
            await ws.changed.wait()
    return [json.loads(s)["seq"] for s in ws.sent]


def make(ws: RecordingWs, since: int = 0, max_queue: int = 100, visitor: str = "V" * 22) -> Socket:
    ws_any: Any = ws
    return Socket(ws_any, "demo", visitor, since=since, max_queue=max_queue)


async def test_live_pushes_during_replay_are_held_then_sent_once_in_order() -> None:
    hub = Hub()
    ws = RecordingWs()
    sock = make(ws, since=3)
    hub.add(sock)
    # Live messages arrive while the replay reads the stream: 6 and 7 are in
    # the replay too (the stream had them), 8 is only live.
    for seq in (6, 7, 8):
        hub.push(sock.chat, seq, reply(seq))
    assert ws.sent == []
    sock.finish_replay([(4, reply(4)), (5, reply(5)), (6, reply(6)), (7, reply(7))])
    hub.push(sock.chat, 8, reply(8))  # the consumer may deliver again after a reset
    hub.push(sock.chat, 9, reply(9))
    assert await sent_seqs(ws, 6) == [4, 5, 6, 7, 8, 9]
    hub.remove(sock)
    sock.close(1000, "bye")
    await sock.drained(5)


async def test_replies_at_or_below_since_are_never_sent() -> None:
    ws = RecordingWs()
    sock = make(ws, since=10)
    sock.finish_replay([])
    sock.push_reply(9, reply(9))
    sock.push_reply(10, reply(10))
    sock.push_reply(11, reply(11))
    assert await sent_seqs(ws, 1) == [11]
    sock.close(1000, "bye")
    await sock.drained(5)


async def test_pushes_go_only_to_that_visitors_sockets() -> None:
    hub = Hub()
    ws_a1, ws_a2, ws_b = RecordingWs(), RecordingWs(), RecordingWs()
    a1, a2 = make(ws_a1), make(ws_a2)
    b = make(ws_b, visitor="W" * 22)
    for s in (a1, a2, b):
        hub.add(s)
        s.finish_replay([])
    assert hub.push(a1.chat, 1, reply(1)) == 2
    assert await sent_seqs(ws_a1, 1) == [1] and await sent_seqs(ws_a2, 1) == [1]
    assert ws_b.sent == []
    for s in (a1, a2, b):
        hub.remove(s)
        s.close(1000, "bye")
        await s.drained(5)
    assert hub.sockets() == []


async def test_close_sends_queued_frames_first() -> None:
    ws = RecordingWs()
    sock = make(ws)
    sock.send("a")
    sock.send("b")
    sock.close(1001, "going away")
    sock.send("after close is dropped")
    await sock.drained(5)
    assert ws.sent == ["a", "b"] and ws.closed == (1001, b"going away")


async def test_a_socket_that_cannot_keep_up_is_closed_instead_of_queueing_forever() -> None:
    ws = RecordingWs()
    sock = make(ws, max_queue=3)
    for i in range(10):  # no await in between: the writer never gets to run
        sock.send(str(i))
    async with asyncio.timeout(5):
        while ws.closed is None:
            ws.changed.clear()
            await ws.changed.wait()
    assert ws.closed[0] == 1013


async def test_an_idle_socket_holds_no_writer_task_and_no_queue() -> None:
    ws = RecordingWs()
    sock = make(ws)
    sock.finish_replay([(1, reply(1))])
    await sock.drained(5)
    assert ws.sent == [reply(1)]
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("ws-")}
    assert before == set()
    assert sock._pending is None and sock._writer is None and sock._held is None  # what an idle socket keeps


async def test_the_readers_own_answers_queue_behind_pending_pushes_in_order() -> None:
    ws = RecordingWs()
    sock = make(ws)
    sock.finish_replay([])
    sock.push_reply(1, reply(1))  # a writer task now owns the socket
    sock.push_reply(2, reply(2))
    await sock.write(json.dumps({"type": "ack", "seq": 3}))  # must not overtake 1 and 2
    sock.push_reply(4, reply(4))
    await sock.drained(5)
    assert [json.loads(s)["seq"] for s in ws.sent] == [1, 2, 3, 4]


async def test_an_inline_write_in_progress_keeps_pushes_behind_it() -> None:
    class SlowWs(RecordingWs):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.blocked = asyncio.Event()

        async def send_str(self, data: str) -> None:
            if not self.sent:
                self.blocked.set()
                await self.gate.wait()  # the first frame is slow to go out
            await super().send_str(data)

    ws = SlowWs()
    sock = make(ws)
    sock.finish_replay([])
    inline = asyncio.create_task(sock.write(json.dumps({"type": "ack", "seq": 1})))
    await ws.blocked.wait()  # the inline write is now waiting on the wire
    sock.push_reply(2, reply(2))
    sock.close(1000, "bye")
    ws.gate.set()
    await inline
    await sock.drained(5)
    assert [json.loads(s)["seq"] for s in ws.sent] == [1, 2] and ws.closed == (1000, b"bye")
