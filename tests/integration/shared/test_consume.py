"""The one durable-consumer loop (openlines.consume) against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import api as js_api
from support.timing import wait_for

from openlines import bus, subjects
from openlines.consume import Durable, dead_letter, keep_alive
from openlines.envelopes import SessionEvent

DURABLE = "test-consume"


def config(**extra: Any) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        name=DURABLE,
        durable_name=DURABLE,
        filter_subject=subjects.history_all(),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        max_deliver=-1,
        **extra,
    )


async def publish(js: Any, n: int) -> None:
    for i in range(1, n + 1):
        await js.publish(subjects.history(f"s{i}"), str(i).encode())


async def test_a_handler_that_fails_gets_its_message_again_and_every_message_is_acked_once(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, 3)
    tries: dict[str, int] = {}
    done: list[str] = []

    async def handle(m: Msg) -> None:
        body = m.data.decode()
        tries[body] = tries.get(body, 0) + 1
        if body == "2" and tries[body] == 1:
            raise RuntimeError("the CRM is away")
        await m.ack_sync()
        done.append(body)

    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(), batch=10, retry_delay=0.05)
    task = asyncio.create_task(consumer.run(handle, stop))
    try:
        await wait_for(lambda: len(done) == 3, what="every message handled")
        assert sorted(done) == ["1", "2", "3"]
        assert tries == {"1": 1, "2": 2, "3": 1}
        info = await js.consumer_info(subjects.STREAM_HIST, DURABLE)
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        stop.set()
        await consumer.close()
        await task


async def test_keep_order_hands_back_the_rest_of_a_batch_after_a_failure(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, 3)
    seen: list[str] = []
    failed = False

    async def handle(m: Msg) -> None:
        nonlocal failed
        body = m.data.decode()
        seen.append(body)
        if body == "1" and not failed:
            failed = True
            raise RuntimeError("not now")
        await m.ack_sync()

    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(), batch=3, retry_delay=0.05, keep_order=True)
    task = asyncio.create_task(consumer.run(handle, stop))
    try:
        await wait_for(lambda: seen.count("3") == 1 and seen.count("1") == 2, what="the batch handled after the failure")
        # The first fetch brought all three; after "1" failed, "2" and "3" were not handled before it came again.
        assert seen[0] == "1" and seen.index("2") > 1
    finally:
        stop.set()
        await consumer.close()
        await task


async def test_dead_letter_keeps_the_reason_and_the_message_never_comes_again(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, 1)
    handled: list[int] = []

    async def handle(m: Msg) -> None:
        handled.append(m.metadata.num_delivered)
        await dead_letter(js, m, "unreadable transcript entry", prefix="test-dead")

    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(ack_wait=1.0), retry_delay=0.05)
    task = asyncio.create_task(consumer.run(handle, stop))
    try:
        events = await wait_for(
            lambda: bus.read_subject(js, subjects.STREAM_EVT, subjects.event("dead_letter")), what="the dead letter"
        )
        evt = msgspec.json.decode(events[0][1], type=SessionEvent)
        assert evt.id.startswith(f"test-dead:{subjects.STREAM_HIST}:") and evt.reason == "unreadable transcript entry"
        info = await wait_for(lambda: _settled(js), what="the consumer with nothing pending after the term", timeout=5.0)
        assert info.num_pending == 0 and info.num_ack_pending == 0
        assert handled == [1]
    finally:
        stop.set()
        await consumer.close()
        await task


async def _settled(js: Any) -> Any:
    info = await js.consumer_info(subjects.STREAM_HIST, DURABLE)
    return info if info.num_ack_pending == 0 else None


async def test_keep_alive_holds_a_message_past_its_ack_wait(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, 1)
    deliveries: list[int] = []
    release = asyncio.Event()

    async def handle(m: Msg) -> None:
        deliveries.append(m.metadata.num_delivered)
        async with keep_alive(m, 0.2):
            await release.wait()
        await m.ack_sync()

    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(ack_wait=2.0), batch=1)
    task = asyncio.create_task(consumer.run(handle, stop))
    try:
        await wait_for(lambda: deliveries, what="the message in hand")
        # Held for three ack waits: without the in-progress acks the server would hand it out again.
        since = time.monotonic()

        async def held_long_enough() -> bool:
            info = await js.consumer_info(subjects.STREAM_HIST, DURABLE)
            assert info.num_redelivered == 0, "handed out again while in hand"
            return time.monotonic() - since > 6.0

        await wait_for(held_long_enough, timeout=20.0, what="three ack waits in hand")
        release.set()
        await wait_for(lambda: _settled(js), what="the ack")
        assert deliveries == [1]
    finally:
        release.set()
        stop.set()
        await consumer.close()
        await task


async def test_a_stop_ends_the_loop_and_says_not_ready(nc: Any) -> None:
    js = nc.jetstream()
    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(), fetch_timeout=30.0)

    async def handle(m: Msg) -> None:
        await m.ack_sync()

    task = asyncio.create_task(consumer.run(handle, stop))
    await wait_for(lambda: consumer.ready() is None, what="the consumer running")
    stop.set()
    await consumer.close()  # ends the 30-second fetch at once
    await wait_for(task.done, what="the loop ended")
    assert task.exception() is None
    assert consumer.ready() is not None


async def test_a_consumer_deleted_under_a_running_loop_is_made_again_and_its_messages_handled(nc: Any) -> None:
    js = nc.jetstream()
    done: list[str] = []

    async def handle(m: Msg) -> None:
        await m.ack_sync()
        done.append(m.data.decode())

    stop = asyncio.Event()
    consumer = Durable(js, subjects.STREAM_HIST, config(), fetch_timeout=0.2)
    task = asyncio.create_task(consumer.run(handle, stop))
    try:
        await publish(js, 1)
        await wait_for(lambda: done == ["1"], what="the first message handled")
        # An operator's `nats consumer rm`, or a stream made again: every fetch is refused from now on.
        await js.delete_consumer(subjects.STREAM_HIST, DURABLE)
        await js.publish(subjects.history("s2"), b"2")
        await wait_for(lambda: "2" in done, timeout=15, what="the consumer made again and the new message handled")
        info = await js.consumer_info(subjects.STREAM_HIST, DURABLE)
        assert info.num_ack_pending == 0
    finally:
        stop.set()
        await consumer.close()
        await task
