"""Pull requests to a durable consumer, each answered on a reply subject of its own.

nats-py's ``fetch`` sends every pull request of a subscription to one inbox.
The 408 that ends a request at its expiry can come after that fetch stopped
waiting (a busy moment of the event loop); the next fetch then reads it as its
own answer, sends a request that waits for a full batch, and returns early on
the next stale 408, leaving that request open at the server. The request takes
the next message and holds the fetch that gets it until the request expires:
an idle consumer, once out of step, handed a lone message over 0.2-1 s late
(a new chat on a quiet router partition; decision 040). A :class:`Pull`:

- answers each request on ``<inbox>.<n>``: a status ends only the request it
  answers, so one that comes late is harmless;
- hands a message over as soon as it comes;
- keeps one request open at a time, so what a consumer has in hand, in its
  queue and asked for stays within what it had room for when it asked.

The protocol is JetStream's pull API (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``
with ``batch`` and ``expires``, ADR-13), on nats-py's public core API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api

ENDED = ("404", "408")  # no messages, the request expired: over, and nothing wrong
HEARTBEAT = "100"
# Seconds after its expiry a request with no word from the server is taken as over: its 408 was lost with
# the server that had it (a NATS node killed, a consumer's leader gone). The server expires it a moment after
# the client's own count (it got the request later), so this is only the way there.
FORGET_AFTER = 0.1

_PULLS: weakref.WeakSet[Pull] = weakref.WeakSet()


def forget_requests(nc: NATS) -> int:
    """The connection was lost: every open request of ``nc``'s pulls is over (the server that had it may be
    gone, and a reconnect finds another); their fetches ask again at once. How many there were."""
    forgot = 0
    for pull in list(_PULLS):
        if pull.nc is nc and pull._reply:
            pull._reply = ""
            pull._arrived.set()
            forgot += 1
    return forgot


class PullRefused(Exception):
    """The server ended a pull request with an error (409 consumer deleted, leadership change, ...; 503)."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"{status} {description}".strip())
        self.status = status
        self.description = description


class _Request(msgspec.Struct):
    batch: int
    expires: int  # nanoseconds


_encode = msgspec.json.Encoder().encode


class Pull:
    """Pull requests to ``consumer`` of ``stream``, one open at a time; :meth:`fetch` hands over what they bring.

    A delivered message names the stream's subject, not the request it answers, so there is one request
    at a time: every message is the open request's, and a new one is sent only when it is over (all of
    its batch came, the server ended it, its expiry passed with no word, or the connection was lost).
    Anything from an earlier request (none is expected) is handed over all the same.
    """

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"{js_api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.requests_sent = 0
        self._sub: Subscription | None = None
        self._reply = ""  # the open request's reply subject ("" when none is open)
        self._left = 0  # messages it may still bring
        self._over_by = 0.0  # loop time after which it is taken as over though the server never said
        self._queue: collections.deque[Msg] = collections.deque()
        self._refused: PullRefused | None = None
        self._arrived = asyncio.Event()

    @classmethod
    async def open(cls, nc: NATS, stream: str, consumer: str) -> Pull:
        pull = cls(nc, stream, consumer)
        pull._sub = await nc.subscribe(f"{pull.inbox}.*", cb=pull._on_msg)
        _PULLS.add(pull)
        return pull

    async def _on_msg(self, msg: Msg) -> None:
        status = JetStreamContext.is_status_msg(msg)
        if status is None:
            self._queue.append(msg)
            if self._reply:
                self._left -= 1
                if self._left <= 0:
                    self._reply = ""  # all of its batch came: the server ends it without a word
        elif status == HEARTBEAT or msg.subject != self._reply:
            return  # an idle heartbeat, or the late end of a request already over: nothing to do
        else:
            self._reply = ""
            if status not in ENDED:
                self._refused = PullRefused(status, (msg.headers or {}).get("Description", ""))
        self._arrived.set()

    def queued(self) -> int:
        """Messages that came and wait to be handed over."""
        return len(self._queue)

    def asked(self) -> int:
        """Messages the open request may still bring (0: none is open)."""
        if self._reply and self._over_by < asyncio.get_running_loop().time():
            self._reply = ""  # its end never came: lost with the server that had it
        return self._left if self._reply else 0

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages, as soon as there is one; [] when none came within ``timeout``.

        Raises :class:`PullRefused` when the server refused a request and nothing is waiting to be handed over.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._arrived.clear()  # before looking: what comes while a request is sent sets it again
            if self._queue:
                return [self._queue.popleft() for _ in range(min(batch, len(self._queue)))]
            if self._refused is not None:
                refused, self._refused = self._refused, None
                raise refused
            if not self.asked():
                self.requests_sent += 1
                self._reply = f"{self.inbox}.{self.requests_sent}"
                self._left = batch
                self._over_by = loop.time() + timeout + FORGET_AFTER
                await self.nc.publish(self.subject, _encode(_Request(batch=batch, expires=int(timeout * 1e9))), reply=self._reply)
            left = deadline - loop.time()
            if left <= 0:
                return []
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return []

    async def close(self) -> list[Msg]:
        """Stop receiving; the messages that came and were not handed over (for the caller to nak or leave)."""
        left = list(self._queue)
        self._queue.clear()
        self._reply = ""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        return left
