"""``bus.flush_all``: a subscription made just before is in place at the server when it returns.

The order the client wrote its commands in is read by a relay in front of a real nats-server
(tests/peers/natsproxy.py): the server answers a PING only after reading what came before it.
"""

from __future__ import annotations

from typing import Any

from peers.natsproxy import NatsProxy

from openlines import bus


async def _subscribed(nats_server: Any, settle: Any) -> list[str]:
    """The commands the client wrote from its SUB on, when ``settle`` (a flush) has returned."""
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    nc = await bus.connect(proxy.url, "test", first_attempts=5)
    try:
        await nc.flush()  # the connection's own start-up out of the way
        start = len(proxy.commands)

        async def ignore(_msg: Any) -> None:
            return None

        await nc.subscribe("ol.test.flush_all", cb=ignore)
        await settle(nc)
        return proxy.commands[start:]
    finally:
        await nc.close()
        await proxy.stop()


async def test_flush_all_returns_after_a_ping_written_behind_the_subscription(nats_server: Any) -> None:
    sent = await _subscribed(nats_server, bus.flush_all)
    subscribed = next(i for i, c in enumerate(sent) if c.startswith("SUB ol.test.flush_all "))
    assert sent[-1] == "PING" and subscribed < len(sent) - 1, sent


async def test_nats_py_flush_alone_writes_its_ping_ahead_of_the_subscription(nats_server: Any) -> None:
    """Why ``flush_all`` exists (nats-py 2.16): the PING of ``flush()`` goes straight to the socket, the SUB
    waits for the client's flusher, so the PONG can come before the server has the subscription. Should
    nats-py change this, this test fails, and ``flush_all`` could become one flush again."""

    async def once(nc: Any) -> None:
        await nc.flush()

    sent = await _subscribed(nats_server, once)
    assert sent and sent[0] == "PING", sent  # the SUB, made before the flush, comes after its PING (or later)
