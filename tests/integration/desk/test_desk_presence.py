"""What a desk replica tells the router about operators' pages, and its heartbeat in ``ol-desk-presence``.

The router and the desk run in this process over real sockets; operators' pages are real WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from support import apply_lines, running_router
from support.desk import http_session, running_desk, sign_in
from support.desk_admin import DEMO_HASH
from support.servers import free_port
from support.timing import wait_for

from desk.http import DESK
from openlines import bus, subjects
from openlines.state import DeskHeartbeat, OperatorState

LINES = f"""
[operators.anna]
name = "Anna"
password_hash = "{DEMO_HASH}"

[[lines]]
id = "support"
name = "Support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
operators = ["anna"]
presence_grace_seconds = 300
"""


class CuttableLink:
    """A TCP relay to nats-server that can be cut (every connection dropped, new ones refused) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut_off = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._writers):
            w.close()

    def restore(self) -> None:
        self.cut_off = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _desks(nc: Any, op_id: str) -> list[str]:
    b = await bus.Buckets(nc.jetstream()).open()
    st, _ = await bus.kv_get(b.operators, op_id, OperatorState)
    return list(st.desks) if st else []


async def test_the_desk_heartbeat_names_the_operators_with_a_page_open(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    # 1 s renewals (the key lives 3 s): shorter ones can run out between two renewals on a loaded machine.
    async with running_router(nats_server.url), running_desk(nats_server.url, desk_heartbeat_seconds=1.0) as svc:
        desk_id = svc.app[DESK].hub.desk_id
        kv = await nc.jetstream().key_value(subjects.KV_DESK_PRESENCE)

        async def beat() -> DeskHeartbeat:
            return msgspec.json.decode((await kv.get(desk_id)).value or b"{}", type=DeskHeartbeat)

        assert (await beat()).operators == []
        async with http_session(svc) as h:
            await sign_in(h, "anna")
            async with h.ws_connect("/ws") as ws:
                await ws.receive_json()

                async def listed() -> bool:
                    return (await beat()).operators == ["anna"]

                await wait_for(listed, what="anna in the desk's heartbeat")
                assert await _desks(nc, "anna") == [desk_id]
    # A graceful stop removes the key: the router need not wait for it to run out.
    assert desk_id not in await bus.kv_entries(nc.jetstream(), subjects.KV_DESK_PRESENCE)


async def test_a_desk_cut_off_from_nats_past_its_heartbeat_reports_its_open_pages_again(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    link = CuttableLink(nats_server.port)
    await link.start()
    try:
        async with (
            running_router(nats_server.url, desk_sweep_seconds=0.2),
            running_desk(link.url, desk_heartbeat_seconds=0.3) as svc,
            http_session(svc) as h,
        ):
            desk_id = svc.app[DESK].hub.desk_id
            await sign_in(h, "anna")
            async with h.ws_connect("/ws") as ws:
                await ws.receive_json()
                await wait_for(lambda: _desks(nc, "anna"), what="anna's page reported")
                assert await _desks(nc, "anna") == [desk_id]
                # The desk loses NATS: no renewals; its key runs out and the router counts the page closed.
                link.cut()

                async def reaped() -> bool:
                    return await _desks(nc, "anna") == []

                await wait_for(reaped, timeout=15, what="the router counting the cut-off desk's page closed")
                # NATS comes back: the desk finds its key gone and reports the page it still holds.
                link.restore()

                async def back() -> bool:
                    return await _desks(nc, "anna") == [desk_id]

                await wait_for(back, timeout=20, what="the page reported again after the desk reconnected")
                assert not ws.closed
    finally:
        await link.stop()


async def test_pages_closed_and_opened_in_quick_succession_leave_the_last_word_with_the_router(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url), running_desk(nats_server.url) as svc, http_session(svc) as h:
        hub = svc.app[DESK].hub
        await sign_in(h, "anna")
        for _ in range(10):  # a page reloaded again and again: closed, opened, closed...
            ws = await h.ws_connect("/ws")
            await ws.receive_json()
            await ws.close()
        last = await h.ws_connect("/ws")
        await last.receive_json()

        async def settled() -> list[str] | None:
            desks = await _desks(nc, "anna")
            return desks if hub.reporter.idle.is_set() and "anna" in hub.conns else None

        assert await wait_for(settled, what="every report heard") == [hub.desk_id]
        await last.close()

        async def closed() -> bool:
            return hub.reporter.idle.is_set() and "anna" not in hub.conns and await _desks(nc, "anna") == []

        await wait_for(closed, what="the last page's closing reported")


async def test_a_desk_whose_first_heartbeat_gets_no_answer_waits_and_starts(nc: Any, nats_server: Any) -> None:
    """A replica started with a cluster that is still electing the bucket's leader (or whose first write is
    lost) keeps trying: before, it exited at start-up and stayed down (found by the fault suite)."""
    from peers.natsproxy import NatsProxy

    await apply_lines(nc, LINES)
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        first = proxy.drop("$KV.ol-desk-presence.>")  # never reaches the server: the write times out
        # Renewals far apart enough that a loaded machine does not let the key run out between them; and
        # the key looked for until it is seen: on a busy host a renewal may still come late now and then.
        async with running_desk(proxy.url, desk_heartbeat_seconds=2.0) as svc:
            assert first.fired == 1
            desk_id = svc.app[DESK].hub.desk_id

            async def written() -> bool:
                return desk_id in await bus.kv_entries(nc.jetstream(), subjects.KV_DESK_PRESENCE)

            await wait_for(written, what="the desk's heartbeat written after the lost first one")
    finally:
        await proxy.stop()
