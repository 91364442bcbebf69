"""Follow one subject of a stream live, in order, from a stream sequence on, with nothing skipped.

What nats-py's ordered push consumer does, on its public API only: an
ephemeral pull consumer (memory, no acks, one replica) starting right after
the last sequence handed over. When that consumer is lost - NATS restarted,
the consumer deleted, a fetch answered with an error, a gap in its delivery
sequence (a message lost on the way) - a new one, with a new name, starts
again after the last sequence handed over, and the old one is deleted (or
left to its inactivity threshold when NATS is away). A message at or below
that sequence is never handed over twice.

The consumer is named in its create request, so the request's subject carries
the filter (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<subject>``) and a NATS
identity may be allowed to follow only its own subjects (deploy/nats/auth.conf).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from openlines import bus
from openlines.consume import Fetching, pause, retrieved
from openlines.pace import backoff
from openlines.pull import Pull

log = logging.getLogger("openlines.follow")

MAX_BATCH = 256
INACTIVE = 30.0  # seconds a consumer no fetch asks of lives on (a replica that died)


class Follow:
    """Hands each message of ``subject`` in ``stream`` after ``last`` to ``handle``, in stream order.

    ``last`` is where to start (the sequence already handled); :meth:`start_at_end` sets it to the stream's
    end. ``handle`` is awaited in order, one message at a time, and should be quick: it is on the path of
    every later message; one that raises is logged and the message is not handed over again.
    ``fetch_timeout`` is how long one pull waits for a message: an idle follower asks again that often,
    and a consumer lost while waiting is noticed after it. The pull requests are :class:`openlines.pull.Pull`'s
    (decision 040): a message is handed over as it comes, whatever batch was asked for.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        name_prefix: str,
        last: int = 0,
        fetch_timeout: float = 2.0,
    ) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.handle = handle
        self.name_prefix = name_prefix
        self.last = last
        self.fetch_timeout = fetch_timeout
        self.running = False  # a consumer is made and fetched from (readiness)
        self.consumer = ""  # the name of the current consumer
        self.renewed = 0  # how many times a lost consumer was made again
        self._fetching = Fetching()

    async def start_at_end(self) -> int:
        """Start after the stream's current last sequence (deliver policy NEW, without the gap between
        reading the end and making the consumer); that sequence."""
        info = await self.js.stream_info(self.stream)
        self.last = info.state.last_seq
        return self.last

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop``; NATS away or the consumer lost only pauses it."""
        async with self._fetching.ended_by(stop, name=f"stop-{self.name_prefix}"):
            while not stop.is_set():
                pull = await self._open(stop)
                if pull is None:
                    return
                try:
                    await self._follow(pull, stop)
                finally:
                    self.running = False
                    await pull.close()  # no acks: what came and was not handed over comes to the next consumer
                    with contextlib.suppress(Exception):  # NATS away: its inactivity threshold removes it
                        await self.js.delete_consumer(self.stream, self.consumer)
                if not stop.is_set():
                    self.renewed += 1

    async def close(self) -> None:
        """End the fetch in flight now; call after setting the stop event."""
        await retrieved(self._fetching.end())

    def ready(self) -> str | None:
        return None if self.running else f"follower of {self.subject} not running"

    async def _open(self, stop: asyncio.Event) -> Pull | None:
        attempt = 0
        while not stop.is_set():
            config = js_api.ConsumerConfig(
                name=f"{self.name_prefix}-{uuid.uuid4().hex}",
                filter_subject=self.subject,
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.last + 1,
                ack_policy=js_api.AckPolicy.NONE,
                inactive_threshold=INACTIVE,
                mem_storage=True,
                num_replicas=1,
            )
            try:
                info = await self.js.add_consumer(self.stream, config)
                self.consumer = info.name
                return await Pull.open(bus.client_of(self.js), self.stream, info.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, the stream not there yet
                attempt += 1
                log.warning(
                    "follower not started, retrying", extra={"subject": self.subject, "attempt": attempt, "error": repr(exc)}
                )
                await pause(stop, backoff(attempt, 0.2, 5.0))
        return None

    async def _follow(self, pull: Pull, stop: asyncio.Event) -> None:
        """Fetch from one consumer until it is lost (return) or ``stop``."""
        delivered = 0  # the consumer's delivery sequence of the last message
        failures = 0
        while not stop.is_set():
            self.running = True
            try:
                msgs = await self._fetching.fetch(pull, MAX_BATCH, self.fetch_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the consumer is gone (NATS restarted), or NATS away
                failures += 1
                log.warning("follower fetch failed", extra={"subject": self.subject, "attempt": failures, "error": repr(exc)})
                if failures >= 3 or await pause(stop, backoff(failures, 0.2, 2.0)):
                    return  # made again, after the last sequence handed over
                continue
            failures = 0
            for m in msgs:
                meta = m.metadata
                if meta.sequence.consumer != delivered + 1:
                    log.warning("follower missed a message; starting again after the last one", extra={"subject": self.subject})
                    return
                delivered = meta.sequence.consumer
                if meta.sequence.stream <= self.last:
                    continue
                self.last = meta.sequence.stream
                try:
                    await self.handle(m)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("follower handler failed", extra={"subject": self.subject, "seq": self.last})
