"""Pull requests on reply subjects of their own (openlines.pull, decision 040) against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from nats.js import api as js_api
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.pull import Pull, PullRefused, forget_requests

DURABLE = "test-pull"
LONG = 60.0  # a pull request's expiry no test waits for: a message handed over is handed over well before it


async def consumer(js: Any) -> None:
    await js.add_consumer(
        subjects.STREAM_HIST,
        js_api.ConsumerConfig(
            name=DURABLE, durable_name=DURABLE, filter_subject=subjects.history_all(), ack_policy=js_api.AckPolicy.EXPLICIT
        ),
    )


async def waiting_requests(js: Any) -> int:
    return int((await js.consumer_info(subjects.STREAM_HIST, DURABLE)).num_waiting or 0)


async def opened(nc: Any, messages: int = 0) -> tuple[Any, Pull]:
    """The test's consumer with ``messages`` stored for it ("0", "1", ...), and a Pull on it."""
    js = nc.jetstream()
    await consumer(js)
    for i in range(messages):
        await js.publish(subjects.history(f"s{i}"), str(i).encode())
    return js, await Pull.open(nc, subjects.STREAM_HIST, DURABLE)


async def test_a_message_brought_by_the_request_of_a_fetch_that_ended_early_is_handed_over_at_once(nc: Any) -> None:
    js, pull = await opened(nc)
    first = asyncio.ensure_future(pull.fetch(32, LONG))
    await wait_for(lambda: waiting_requests(js), what="the first fetch's request waiting at the server")
    first.cancel()  # a fetch ended by a stop: its request stays open at the server
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert pull.asked() == 32  # and is still counted: the next fetch sends no other
    second = asyncio.ensure_future(pull.fetch(32, LONG))
    await js.publish(subjects.history("s1"), b"1")
    [msg] = await asyncio.wait_for(second, scaled(10))  # not after the first request's expiry (LONG)
    assert msg.data == b"1"
    assert pull.asked() == 31
    await msg.ack()
    await pull.close()


async def test_a_request_ended_by_its_expiry_is_asked_again_within_the_same_fetch(nc: Any) -> None:
    js, pull = await opened(nc)
    short = asyncio.ensure_future(pull.fetch(8, 0.3))  # its request expires in 0.3 s
    await wait_for(lambda: waiting_requests(js), what="the short request waiting at the server")
    short.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await short
    fetch = asyncio.ensure_future(pull.fetch(8, LONG))  # sends nothing while the short one is open
    # The short request's 408 ends it: the fetch asks again, and a message published after is handed over at
    # once (with one inbox for every request, that late 408 ended the next fetch and left its request open).
    await wait_for(lambda: pull.requests_sent == 2 and pull.asked() == 8, what="a second request, for 8")
    await js.publish(subjects.history("s1"), b"1")
    [msg] = await asyncio.wait_for(fetch, scaled(10))
    assert msg.data == b"1"
    await pull.close()


async def test_what_is_asked_for_stays_within_the_batch(nc: Any) -> None:
    js, pull = await opened(nc, 10)
    got = await pull.fetch(3, LONG)
    assert [m.data for m in got] == [b"0", b"1", b"2"]
    assert pull.asked() == 0  # the request brought all it asked for
    info = await js.consumer_info(subjects.STREAM_HIST, DURABLE)
    assert info.num_ack_pending == 3 and info.num_pending == 7  # nothing more was delivered than asked
    more = await pull.fetch(5, LONG)
    assert [m.data for m in more] == [b"3", b"4", b"5", b"6", b"7"]
    for m in got + more:
        await m.ack()
    await pull.close()


async def test_a_deleted_consumer_refuses_the_fetch_with_the_servers_reason(nc: Any) -> None:
    js, pull = await opened(nc)
    fetch = asyncio.ensure_future(pull.fetch(4, LONG))
    await wait_for(lambda: waiting_requests(js), what="the request waiting at the server")
    await js.delete_consumer(subjects.STREAM_HIST, DURABLE)
    with pytest.raises(PullRefused) as refused:
        await asyncio.wait_for(fetch, scaled(10))
    assert refused.value.status == "409" and "deleted" in refused.value.description.lower()
    await pull.close()


async def test_what_came_and_was_not_handed_over_is_returned_on_close(nc: Any) -> None:
    _, pull = await opened(nc, 4)
    [first] = await pull.fetch(1, LONG)
    assert first.data == b"0"
    got = await pull.fetch(4, LONG)  # as soon as the first of the three comes
    await wait_for(lambda: len(got) + pull.queued() == 3, what="the other two received")
    left = await pull.close()
    assert [m.data for m in got] + [m.data for m in left] == [b"1", b"2", b"3"]


async def test_a_context_of_a_plain_nats_py_client_is_refused_with_the_reason(nats_server: Any) -> None:
    import nats

    plain = await nats.connect(nats_server.url, **bus.NatsAuth.from_env().connect_options())
    try:
        with pytest.raises(TypeError, match=r"openlines\.bus\.connect"):
            bus.client_of(plain.jetstream())
    finally:
        await plain.close()


async def test_a_lost_connection_forgets_the_open_request_and_the_fetch_asks_again(nc: Any) -> None:
    js, pull = await opened(nc)
    fetch = asyncio.ensure_future(pull.fetch(4, LONG))
    await wait_for(lambda: waiting_requests(js), what="the request waiting at the server")
    # What bus.connect's disconnect handler does: the server that had the request may be gone (a NATS node
    # killed); without this the fetch would wait for its expiry (LONG) before asking anyone else.
    assert forget_requests(nc) == 1
    await wait_for(lambda: pull.requests_sent == 2, what="the fetch asking again")
    assert forget_requests(nc) == 1 and pull.asked() == 0
    await wait_for(lambda: pull.requests_sent == 3, what="and again")
    fetch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fetch
    await pull.close()
