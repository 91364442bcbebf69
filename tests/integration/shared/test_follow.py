"""``openlines.follow.Follow``: one subject of a stream, live and in order, on nats-py's public API only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.timing import wait_for

from openlines import bus, subjects
from openlines.follow import Follow

SUBJECT = "ol.out.webchat.demo.>"


def _reply(n: int) -> str:
    return f"ol.out.webchat.demo.c{n % 3}"


class Seen:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.data: list[bytes] = []

    async def __call__(self, msg: Any) -> None:
        self.seqs.append(msg.metadata.sequence.stream)
        self.data.append(msg.data)


@pytest.fixture
async def following(nc: Any) -> AsyncIterator[tuple[Follow, Seen, asyncio.Event]]:
    seen = Seen()
    js = nc.jetstream()
    await js.publish("ol.out.webchat.demo.old", b"before the start", stream=subjects.STREAM_OUT)
    follow = Follow(js, subjects.STREAM_OUT, SUBJECT, seen, name_prefix="test-live", fetch_timeout=0.5)
    await follow.start_at_end()
    stop = asyncio.Event()
    task = asyncio.create_task(follow.run(stop))
    await wait_for(lambda: follow.ready() is None, what="follower running")
    yield follow, seen, stop
    stop.set()
    await follow.close()
    await asyncio.wait({task})
    assert task.exception() is None


async def test_every_message_after_the_start_comes_once_in_order_and_nothing_before(
    nc: Any, following: tuple[Follow, Seen, asyncio.Event]
) -> None:
    follow, seen, _ = following
    js = nc.jetstream()
    published = [(await js.publish(_reply(n), str(n).encode(), stream=subjects.STREAM_OUT)).seq for n in range(600)]
    await js.publish("ol.out.telegram.demo.x", b"another channel", stream=subjects.STREAM_OUT)
    await wait_for(lambda: len(seen.seqs) >= 600, what="600 messages followed")
    assert seen.seqs == published
    assert seen.data == [str(n).encode() for n in range(600)]
    assert follow.last == published[-1]


async def test_a_lost_consumer_is_made_again_after_the_last_message_handed_over(
    nc: Any, following: tuple[Follow, Seen, asyncio.Event]
) -> None:
    follow, seen, _ = following
    js = nc.jetstream()
    first = (await js.publish(_reply(1), b"1", stream=subjects.STREAM_OUT)).seq
    await wait_for(lambda: seen.seqs == [first], what="the first message")
    lost = follow.consumer
    await js.delete_consumer(subjects.STREAM_OUT, lost)
    second = (await js.publish(_reply(2), b"2", stream=subjects.STREAM_OUT)).seq
    await wait_for(lambda: seen.seqs == [first, second], timeout=20, what="the message published while it was lost")
    assert follow.renewed >= 1 and follow.consumer != lost


async def test_a_nats_restart_loses_nothing_and_repeats_nothing(
    nats_server: Any, nc: Any, following: tuple[Follow, Seen, asyncio.Event]
) -> None:
    follow, seen, _ = following
    js = nc.jetstream()
    before = (await js.publish(_reply(1), b"before", stream=subjects.STREAM_OUT)).seq
    await wait_for(lambda: seen.seqs == [before], what="the message before the restart")
    nats_server.stop()
    await wait_for(lambda: not nc.is_connected, what="the client to notice NATS is gone")
    nats_server.start()
    await wait_for(lambda: nc.is_connected, timeout=20, what="the client to reconnect")
    checker = await bus.connect(nats_server.url, "checker", first_attempts=5)
    try:
        after = (await checker.jetstream().publish(_reply(2), b"after", stream=subjects.STREAM_OUT)).seq
    finally:
        await checker.close()
    await wait_for(lambda: seen.seqs == [before, after], timeout=30, what="the message after the restart, once")
    assert follow.renewed >= 1
