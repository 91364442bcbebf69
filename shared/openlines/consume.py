"""The durable pull-consumer loop every service runs, written once.

A :class:`Durable` opens its consumer (creating it, or binding the one another
replica or an earlier start made), fetches until asked to stop, and opens it
again after NATS went away or the consumer was lost. What a message means is
the handler's: it acks, naks with a delay, or terms it (:func:`dead_letter`
keeps the reason as a ``dead_letter`` event first). A handler that raises has
its message nak'd with ``retry_delay``: it comes back, nothing is lost.
:func:`keep_alive` sends in-progress acks while a long handler works, so
``ack_wait`` does not hand the message to another replica meanwhile.

A stop is clean: the loop ends between messages (a handler in progress
finishes), the subscription is closed, and what was not acked is redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from openlines import bus, subjects
from openlines.envelopes import SessionEvent, utcnow
from openlines.pace import backoff
from openlines.pull import Pull

log = logging.getLogger("openlines.consume")

# A fetch refused (the consumer between two leaders, NATS away) is asked again at this pace, so that it resumes
# within a fraction of a second of its new leader (decision 035); the first open of a consumer uses it too.
REFUSED_PACE = bus.REFUSED_PACE
LOOK_AFTER = 3.0  # refused this long: look whether the consumer still exists (deleted: it is made again)
OPEN_TIMEOUT = 2.0  # the wait for a consumer's create; one sent during an election is sent again, not waited 5 s for


class Durable:
    """One durable pull consumer on ``stream`` with ``config`` (its ``durable_name`` names it).

    ``batch`` is how many messages one fetch asks for, or a callable saying how
    many there is room for now (0: wait for :meth:`room_freed`). ``keep_order``
    naks the rest of a batch after a handler failed, so they come back after it.
    ``back_on_stop`` naks what a fetch brings while stopping (back at once for
    another replica); without it they stay unacknowledged until ``ack_wait``.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        config: js_api.ConsumerConfig,
        *,
        batch: int | Callable[[], int] = 1,
        fetch_timeout: float = 1.0,
        retry_delay: float = 1.0,
        keep_order: bool = False,
        back_on_stop: bool = True,
    ) -> None:
        if not config.durable_name:
            raise ValueError("a durable consumer needs a durable_name")
        self.js = js
        self.stream = stream
        self.config = config
        self.name: str = config.durable_name
        self._batch = batch
        self.fetch_timeout = fetch_timeout
        self.retry_delay = retry_delay
        self.keep_order = keep_order
        self.back_on_stop = back_on_stop
        self.running = False  # bound and fetching (readiness)
        self._room = asyncio.Event()
        self._pull: Pull | None = None
        self._fetching = Fetching(self._room)

    def ready(self) -> str | None:
        return None if self.running else f"consumer {self.name} not running"

    def room_freed(self) -> None:
        """Wake a loop that waits for room (``batch`` said 0)."""
        self._room.set()

    async def close(self) -> None:
        """Close the subscription now (a fetch waiting for messages ends); call after setting the stop event."""
        fetching = self._fetching.end()
        pull, self._pull = self._pull, None
        if pull is not None:
            await self._let_go(pull)
        await retrieved(fetching)

    async def create(self) -> None:
        """Create the consumer, or update it to ``config``; one that exists with settings that cannot change is kept."""
        with contextlib.suppress(BadRequestError):  # it exists already (another replica, an earlier start)
            await self.js.add_consumer(self.stream, self.config, timeout=OPEN_TIMEOUT)

    async def open(self, stop: asyncio.Event) -> Pull | None:
        """Create the consumer (:meth:`create`) and bind to it; retried until it works or ``stop``."""
        nc = bus.client_of(self.js)  # pull requests are core publishes (openlines.pull); refused at once if not
        attempt = 0
        while not stop.is_set():
            try:
                await self.create()
                pull = await Pull.open(nc, self.stream, self.name)
                log.info("consuming", extra={"consumer": self.name, "stream": self.stream})
                return pull
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, or a cluster electing the stream's leader: try again
                attempt += 1
                log.warning(
                    "consumer not opened yet, retrying", extra={"consumer": self.name, "attempt": attempt, "error": repr(exc)}
                )
                await pause(stop, backoff(attempt, REFUSED_PACE, 1.0))
        return None

    async def run(self, handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event) -> None:
        """Fetch and hand each message to ``handle`` until ``stop``; a NATS outage only pauses it."""
        async with self._fetching.ended_by(stop, name=f"stop-{self.name}"):
            while not stop.is_set():
                pull = await self.open(stop)
                if pull is None:
                    return
                self.running = True
                self._pull = pull
                try:
                    await self._fetch_until_failure(pull, handle, stop)
                finally:
                    self.running = False
                    self._pull = None
                    await self._let_go(pull)

    async def _let_go(self, pull: Pull) -> None:
        """Stop receiving; what came and was not handed over goes back at once (``back_on_stop``), or waits
        for ``ack_wait``."""
        for m in await pull.close():
            if self.back_on_stop:
                with contextlib.suppress(Exception):
                    await m.nak()

    async def _fetch_until_failure(self, pull: Pull, handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None  # when fetches began to fail (loop time)
        looked = 0.0
        while not stop.is_set():
            want = self._batch() if callable(self._batch) else self._batch
            if want <= 0:
                self._room.clear()  # stop is not set (checked just above): the stop watcher sets room when it is
                await self._room.wait()
                continue
            try:
                msgs = await self._fetching.fetch(pull, want, self.fetch_timeout)  # [] when nothing came in time
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no leader (an election), disconnected, or the consumer is gone
                if stop.is_set():
                    return  # closed by a stop
                now = loop.time()
                if failing_since is None:
                    failing_since = looked = now
                    log.warning("fetch failed, asking again", extra={"consumer": self.name, "error": repr(exc)})
                # Not a growing back-off: the consumer's new leader answers the next fetch (decision 035).
                await pause(stop, REFUSED_PACE)
                if now - looked >= LOOK_AFTER:
                    looked = now
                    if await self._gone():
                        log.warning("consumer gone, making it again", extra={"consumer": self.name})
                        return
                continue
            if failing_since is not None:
                log.info("fetching again", extra={"consumer": self.name, "after_seconds": round(loop.time() - failing_since, 2)})
                failing_since = None
            if msgs:
                await self._hand_over(msgs, handle, stop)

    async def _gone(self) -> bool:
        """Whether the consumer no longer exists (deleted, its stream made again); any other answer or none: no."""
        try:
            await self.js.consumer_info(self.stream, self.name, timeout=OPEN_TIMEOUT)
        except NotFoundError:
            return True
        except Exception:  # no leader yet, NATS away, slow: fetching goes on
            return False
        return False

    async def _hand_over(self, msgs: list[Msg], handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event) -> None:
        failed = False
        for m in msgs:
            if stop.is_set():
                if self.back_on_stop:
                    with contextlib.suppress(Exception):  # fetched while stopping: back at once, for another replica
                        await m.nak()
                continue
            if failed:
                with contextlib.suppress(Exception):
                    await m.nak(delay=self.retry_delay)
                continue
            try:
                await handle(m)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("message not handled, it comes again", extra={"consumer": self.name, "error": repr(exc)[:300]})
                with contextlib.suppress(Exception):  # NATS away: ack_wait redelivers it
                    await m.nak(delay=self.retry_delay)
                failed = self.keep_order


class Fetching:
    """The one fetch a consumer loop has in flight - the only task a fetch makes - and what ends it.

    A stop (:meth:`ended_by`, one watcher per run, or :meth:`end`) cancels it: a stop that comes while the pull
    request is being sent, before nats-py waits for the answer, would otherwise leave it waiting out the whole
    fetch timeout. The loop's own task cancelled (the service stopping) cancels it too. However it ends, its
    end is retrieved (never "exception was never retrieved" at shutdown). ``wake`` is set by a stop as well,
    for a loop that waits on it.
    """

    def __init__(self, wake: asyncio.Event | None = None) -> None:
        self._task: asyncio.Future[list[Msg]] | None = None
        self._wake = wake

    async def fetch(self, source: Pull, batch: int, timeout: float) -> list[Msg]:
        """``source.fetch``; [] when a stop ended it (what it might have had comes again: ack_wait, or a re-read)."""
        fetch = asyncio.ensure_future(source.fetch(batch=batch, timeout=timeout))
        fetch.add_done_callback(_retrieve)
        self._task = fetch
        try:
            return await fetch
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fetch.cancelled() and (task is None or not task.cancelling()):
                return []  # ended by a stop, not this task cancelled
            raise
        finally:
            self._task = None
            if not fetch.done():
                fetch.cancel()

    def end(self) -> asyncio.Future[list[Msg]] | None:
        """Cancel the fetch in flight (and set ``wake``); that fetch, for :func:`retrieved`, if there was one."""
        if self._wake is not None:
            self._wake.set()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        return task

    @contextlib.asynccontextmanager
    async def ended_by(self, stop: asyncio.Event, name: str) -> AsyncIterator[None]:
        """While the block runs (a consumer's whole run, not one fetch), ``stop`` ends the fetch in flight."""

        async def watch() -> None:
            await stop.wait()
            self.end()

        watcher = asyncio.create_task(watch(), name=name)
        try:
            yield
        finally:
            watcher.cancel()
            watcher.add_done_callback(_retrieve)


async def retrieved(fetch: asyncio.Future[Any] | None) -> None:
    """Wait for an ended fetch to finish, whatever its end."""
    if fetch is not None:
        await asyncio.wait({fetch})  # its result or error is retrieved by its done callback; a cancel of ours still raises


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def outbound_consumer(channel: str, durable: str, *, ack_wait: float, max_ack_pending: int) -> js_api.ConsumerConfig:
    """A channel gateway's durable consumer on ``ol.out.<channel>.>``, shared by its replicas.

    Named, so the create request's subject carries the filter and a gateway's NATS
    identity may create its own channel's consumer and no other (deploy/nats/auth.conf).
    ALL: when the durable is first made, whatever waits for the channel was never
    delivered by anyone; afterwards the durable's position rules.
    """
    return js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subjects.outbound_channel(channel),
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; whether stop was asked."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


@contextlib.asynccontextmanager
async def keep_alive(m: Msg, every: float, also: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[None]:
    """Send an in-progress ack for ``m`` every ``every`` seconds while the block runs.

    ``also`` runs after each beat (e.g. renewing a claim on what the message is
    about); when it answers False the beats stop.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await m.in_progress()
            except Exception as exc:
                log.info("in-progress ack not sent", extra={"error": repr(exc)[:200]})
            if also is not None and not await also():
                return

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def dead_letter(js: JetStreamContext, m: Msg, reason: str, *, prefix: str = "dead") -> SessionEvent:
    """Keep why ``m`` cannot be handled as a ``dead_letter`` event, then term it (it is never delivered again).

    The event's id is ``<prefix>:<stream>:<sequence>``: a redelivered message is dead-lettered once.
    """
    meta = m.metadata
    evt = SessionEvent(id=f"{prefix}:{meta.stream}:{meta.sequence.stream}", kind="dead_letter", at=utcnow(), reason=reason[:1000])
    await bus.publish_event(js, evt)
    await m.term()
    return evt
