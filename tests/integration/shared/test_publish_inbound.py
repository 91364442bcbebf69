"""bus.publish_inbound, the gateways' one way in: stored once, a repeat answered as a duplicate, a publish stuck
before its request is out cut off by the backstop deadline, and a cancellation from outside left a cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.js import JetStreamContext
from support import inbound
from support.timing import wait_for

from openlines import bus, subjects


@pytest.mark.parametrize("way", ["lean", "nats-py"])
async def test_a_client_message_is_stored_once_and_its_repeat_is_answered_as_a_duplicate(nc: Any, way: str) -> None:
    env = inbound("v1", "hello", "m1")
    first = await bus.publish_inbound(nc, _context(nc, way), env, timeout=5)
    again = await bus.publish_inbound(nc, _context(nc, way), env, timeout=5)
    assert first.stream == subjects.STREAM_IN and not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert (await nc.jetstream().stream_info(subjects.STREAM_IN)).state.messages == 1


# How the publish is written: through the JetStream context's inbox (decision 042), or - a context with another
# API prefix or domain, or nats-py's own - as nats-py's request.
WAYS = [("lean", "publish"), ("nats-py", "request")]


def _context(nc: Any, way: str) -> Any:
    return nc.jetstream() if way == "lean" else JetStreamContext(nc)


@pytest.mark.parametrize(("way", "written_by"), WAYS)
async def test_a_publish_stuck_before_its_request_is_out_ends_unavailable_at_its_deadline(
    nc: Any, monkeypatch: pytest.MonkeyPatch, way: str, written_by: str
) -> None:
    async def stuck(*_args: Any, **_kwargs: Any) -> Any:
        await asyncio.get_running_loop().create_future()  # nats-py waiting for a full pending buffer, for ever

    js = _context(nc, way)
    monkeypatch.setattr(nc, written_by, stuck)
    started = time.monotonic()
    with pytest.raises(bus.BusUnavailable) as failed:
        await bus.publish_inbound(nc, js, inbound("v1", "hello", "m1"), timeout=1.0)
    assert failed.value.reason == "TimeoutError"
    assert time.monotonic() - started < 10  # the backstop (attempt + 0.5 s, checked every 0.25 s), not never


@pytest.mark.parametrize(("way", "written_by"), WAYS)
async def test_a_publish_cancelled_from_outside_stays_cancelled(
    nc: Any, monkeypatch: pytest.MonkeyPatch, way: str, written_by: str
) -> None:
    waiting = asyncio.Event()

    async def stuck(*_args: Any, **_kwargs: Any) -> Any:
        waiting.set()
        await asyncio.get_running_loop().create_future()

    js = _context(nc, way)
    monkeypatch.setattr(nc, written_by, stuck)
    task = asyncio.create_task(bus.publish_inbound(nc, js, inbound("v1", "hello", "m1"), timeout=30))
    await wait_for(waiting.is_set, what="the publish in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
