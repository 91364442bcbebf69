"""The shell of :class:`router.core.partition_order.PartitionOrder` for one partition consumer (decision 033):
reads the consumer (and the partition's new messages, by sequence) when the rule needs it, and wakes the lanes
of :mod:`router.inbound` that wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from openlines import subjects
from openlines.consume import pause
from openlines.envelopes import Inbound
from openlines.pace import backoff
from router.core.partition_order import Client, PartitionOrder, Read, Scan

log = logging.getLogger("router.inbound")

HELD_BACK = Counter(
    "openlines_router_inbound_held_back_total",
    "Inbound messages that waited before starting: an earlier message of their client might be in another holder's hand",
)
READS = Counter(
    "openlines_router_inbound_partition_reads_total",
    "Looks at a partition consumer and its new messages because a delivery went to another holder (or a take-over)",
)
READ_BY_SEQUENCE = Counter(
    "openlines_router_inbound_read_by_sequence_total", "Partition messages read from OL_IN to learn their client"
)

# The most partition messages one look reads from the stream to learn their clients; a client's message after
# the unread ones waits for the acknowledgement floor to pass them, or for the next look to read on.
READ_AT_MOST = 512
ORDER_POLL = 0.05  # seconds between looks at the ack floor while a message waits for another holder's
ORDER_RECHECK = 1.0  # a waiting message looks again at least this often, woken or not
# A look at the consumer sent while it has no leader (a NATS node's election) is never answered: waiting 1 s
# instead of the JetStream API's 5 s, and trying again paced up to 1 s, the partition goes on within about a
# second of its new leader (decision 035).
READ_TIMEOUT = 1.0
UNREAD_WARN = 6  # failed reads by sequence in a row (paced 0.05 s doubling to 2 s) before a warning

_decode = msgspec.json.Decoder(Inbound)


class Order:
    """The shell of :class:`PartitionOrder` for one partition consumer: reads the consumer (and the partition's
    new messages) when the rule needs it, and wakes the lanes that wait."""

    def __init__(self, js: JetStreamContext, durable: str, filter_subject: str, stop: asyncio.Event) -> None:
        self.js = js
        self.durable = durable
        self.filter_subject = filter_subject
        self.stop = stop
        self.core = PartitionOrder()
        # lanes whose first message waits, by what for: a look (a delivery went elsewhere), the ack floor
        self.waiting: dict[str, int] = {"look": 0, "floor": 0}
        self._wake = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    def holding(self) -> bool:
        return self.waiting["look"] + self.waiting["floor"] > 0 or self.core.needs_read()

    def received(self, seq: int, delivery: int) -> None:
        if self.core.received(seq, delivery):
            self.changed()

    async def read(self) -> Read | None:
        """Look at the consumer; when the rule needs it (first, or a delivery went elsewhere), also read the
        partition's messages between what is known and its last delivery. None: no consumer yet."""
        try:
            info = await self.js.consumer_info(subjects.STREAM_IN, self.durable, timeout=READ_TIMEOUT)
        except NotFoundError:
            info = None
        if info is None:
            read = Read(floor=0, last=0, delivery=0)
        else:
            read = Read(
                floor=(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
                last=(info.delivered.stream_seq or 0) if info.delivered else 0,
                delivery=(info.delivered.consumer_seq or 0) if info.delivered else 0,
            )
        if self.core.floor_read(read.floor):
            self.changed()
        if not self.core.needs_read():
            return read
        READS.inc()
        scan = Scan(self.core, read, READ_AT_MOST)
        while (seq := scan.next()) is not None:
            try:  # the stream leader's copy (a direct get may answer from a replica that lags)
                raw: Any = await self.js.get_msg(subjects.STREAM_IN, seq=seq, subject=self.filter_subject, next=True)
            except NotFoundError:
                scan.found(None, None)  # no message of the partition from here on
                continue
            except Exception as exc:  # NATS slow or away, the grant missing: the rest counts as not read
                log.info("partition messages not read", extra={"consumer": self.durable, "error": repr(exc)})
                scan.failed()
                continue
            scan.found(raw.seq, client_of(raw.data) if raw.seq else None)
        READ_BY_SEQUENCE.inc(scan.reads)
        scan.done()
        self.changed()
        return None if info is None else read

    async def wait(self, reason: str) -> None:
        """Wait for a change that may let a message waiting for ``reason`` start (a look, the floor moving, a
        message given here): the caller looks again at what its lane starts with - an older message of its
        client may have come meanwhile and must go first."""
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_consumer(), name=f"order-{self.durable}")
        wake = self._wake
        self.waiting[reason] += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=ORDER_RECHECK)
        finally:
            self.waiting[reason] -= 1

    def changed(self) -> None:
        """Wake every waiting lane to look again."""
        self._wake.set()
        self._wake = asyncio.Event()

    async def _watch_consumer(self) -> None:
        """Looks at the consumer while a message waits: at once while a delivery is not accounted for, again and
        again (paced) while partition messages are left unread, every ``ORDER_POLL`` while one waits for the
        floor; ends when nothing waits."""
        attempt = unread = 0
        try:
            while not self.stop.is_set():
                known = self.core.known_to
                try:
                    await self.read()
                    attempt = 0
                except Exception as exc:
                    attempt += 1
                    log.info("partition consumer not read", extra={"consumer": self.durable, "error": repr(exc)})
                    await pause(self.stop, backoff(attempt, 0.1, READ_TIMEOUT))
                    continue
                if self.core.unread():  # more than one read takes (it got on: at once), or a read failed (paced)
                    unread = 0 if self.core.known_to > known else unread + 1
                    if unread == UNREAD_WARN:  # ~3 s: the grant missing (docs/operations.md), or NATS away
                        log.warning(
                            "partition messages still not read: messages of the partition wait for them",
                            extra={"consumer": self.durable, "known_to": self.core.known_to},
                        )
                    if unread:
                        await pause(self.stop, backoff(unread, ORDER_POLL, 2.0))
                    continue
                unread = 0
                if self.core.needs_read():
                    continue  # another delivery went elsewhere meanwhile
                if not self.waiting["floor"]:
                    break  # what waited for the look was woken by it
                await pause(self.stop, ORDER_POLL)
        finally:
            self._watch = None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


def client_of(data: bytes | None) -> Client | None:
    try:
        envelope = _decode.decode(data or b"")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None  # not a client message: dead-lettered when delivered, nobody waits for it
    return (envelope.channel, envelope.account, envelope.chat_id)
