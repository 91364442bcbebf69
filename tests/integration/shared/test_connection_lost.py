"""A connection to NATS lost while requests wait for their answers: they fail at once as timed out (decision 035),
instead of waiting out their whole timeout for an answer the dead connection took with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from peers.natsproxy import NatsProxy
from support.timing import wait_for

from openlines import bus, subjects

LONG = 600.0  # a request's own timeout, far longer than the test may take


async def test_requests_and_acknowledgements_in_flight_fail_at_once_when_the_connection_is_lost(
    nc: Any, nats_server: Any
) -> None:
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    client = await bus.connect(proxy.url, "test-lost", first_attempts=3)
    silent = await nc.subscribe("test.silent")  # takes the requests, never answers (a server that died with them)
    await nc.flush()
    try:
        asked = asyncio.create_task(client.request("test.silent", b"?", timeout=LONG))
        acks = bus.AckInbox(client)
        ack = await acks.publish("test.silent", b"stored?", headers={})
        await client.flush()
        await wait_for(lambda: silent.pending_msgs >= 2, what="both at the silent responder")
        assert not asked.done() and not ack.done()

        assert proxy.drop_connections() >= 1
        with pytest.raises(NatsTimeoutError):
            await asyncio.wait_for(asked, 30)  # not the request's own 600 s
        with pytest.raises(NatsTimeoutError):
            await asyncio.wait_for(ack, 30)

        # The client reconnected, and what is asked now is answered as before.
        await wait_for(lambda: client.is_connected, what="reconnected")
        stored = await bus.publish_inbound(client, client.jetstream(), _envelope(), timeout=10)
        assert stored.stream == subjects.STREAM_IN
    finally:
        await silent.unsubscribe()
        await client.close()
        await proxy.stop()


async def test_a_connection_closed_on_purpose_fails_nothing(nc: Any, nats_server: Any) -> None:
    client = await bus.connect(nats_server.url, "test-close", first_attempts=3)
    silent = await nc.subscribe("test.silent")
    await nc.flush()
    try:
        asked = asyncio.create_task(client.request("test.silent", b"?", timeout=1.0))
        await wait_for(lambda: client.stats["out_msgs"] >= 1 or asked.done(), what="the request written")
        assert not asked.done(), f"the request ended before it was waited on: {asked!r}"
        await client.flush()  # the server has routed it to the silent responder,
        await nc.flush()  # and the responder's connection has read it
        assert silent.pending_msgs >= 1
        assert bus.drop_answers(nc) == 0  # another connection's requests are not touched
        with pytest.raises(NatsTimeoutError):
            await asyncio.wait_for(asked, 30)  # its own timeout, as before
    finally:
        await silent.unsubscribe()
        await client.close()


def _envelope() -> Any:
    from support import inbound

    return inbound("v-lost", "hello after the drop", "m1")
