"""A client message that stays in the router's hand for seconds is logged while it is still there, with the await it
is stuck at: "inbound slow" comes only when it ends, and a partition given up or a kill may end it first, unlogged."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from peers.natsproxy import NatsProxy
from support import apply_lines, inbound, publish, running_router
from support.timing import wait_for

from openlines import subjects
from router.lanes import STUCK
from router.shell.base import session_id_for


async def test_a_message_stuck_in_hand_is_logged_with_the_await_it_is_at(
    nc: Any, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.inbound")
    await apply_lines(nc)
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        # The message's transcript line never reaches the server and the router waits long for its answer.
        async with running_router(proxy.url, nats_request_timeout=4 * STUCK):
            lost = proxy.drop(subjects.history(session_id_for("webchat:demo:v-stuck:1", "support")))
            await publish(nc, inbound("v-stuck", "hello", "1"))
            await wait_for(lambda: lost.fired, what="the transcript line dropped on its way")

            def told() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.getMessage() == "inbound still in hand"]

            [record] = await wait_for(told, timeout=4 * STUCK, what="the message logged while still in hand")
            assert record.__dict__["in_hand_seconds"] >= STUCK
            # The step it is at: the end of the block that writes the message's trail, waiting for the answers.
            assert "shell/inbound_flow.py" in record.__dict__["at"] and "_take_message" in record.__dict__["at"]
    finally:
        await proxy.stop()
