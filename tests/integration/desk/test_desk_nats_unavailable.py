"""A desk request that meets NATS away for a moment answers 503 with the reason and a Retry-After, not 500.

Found by the fault suite at full size: an operator's close, done by the router, answered 500 by the desk when
the read it made for the answer met a dropped connection; the page took it for a desk fault and reopened.
"""

from __future__ import annotations

from typing import Any

from peers.natsproxy import NatsProxy
from support import apply_lines
from support.desk import http_session, running_desk, sign_in

# Every read of a KV key or a stream message, as nats-py asks for it (direct get, or the stream leader's).
READS = ("$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>")


async def test_a_read_that_meets_nats_away_answers_503_with_a_retry_after_and_the_next_one_works(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc)  # deploy/lines.example.toml
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        async with running_desk(proxy.url) as desk, http_session(desk) as http:
            await sign_in(http, "anna")
            assert (await http.get("/api/chats")).status == 200
            lost = proxy.drop(READS, times=1_000_000)  # from now on no read reaches the server: each times out
            answer = await http.get("/api/chats")
            assert lost.fired >= 1, "no read was dropped: the test did not test"
            assert answer.status == 503, await answer.text()
            assert answer.headers["Retry-After"] == "2"
            body = await answer.json()
            assert body["error"] == "unavailable"
            assert body["detail"].startswith("the message bus did not answer in time; asking again is safe"), body
            lost.fired = lost.times  # the connection is back
            again = await http.get("/api/chats")
            assert again.status == 200, await again.text()
    finally:
        await proxy.stop()
