"""Which partitions of OL_IN this router replica consumes.

Gateways publish each client's messages to one of ``subjects.PARTITIONS``
partitions (``ol.in.<channel>.<account>.<p>``). Every partition has one
durable consumer (``router-p<p>``) that allows one unacknowledged message at
a time, so a client's messages are handled in order whichever replica holds
the partition — even for the moment two replicas both think they do.

Replicas share the partitions through the ``ol-router`` KV bucket, whose
entries expire after ``lease_seconds`` unless renewed: each replica keeps a
``member.<id>`` heartbeat and holds ``lease.<p>`` keys for its partitions,
taking at most its fair share (partitions / live members, rounded up). A
replica that dies stops renewing; its leases expire and the others take the
partitions over. A new replica makes the others give up their surplus.

The lease is short (1.5 s by default, renewed every third of it) so that a
replica killed -9 holds up its clients for about that long (decision 023).
So a round must never wait behind anything slow: every lease is renewed at
once (one round trip, not one per partition), before anything else, and a
partition given up or lost finishes its message in hand in the background,
its lease renewed until then. Nothing in a round creates a consumer (the
member list is the bucket stream's subject list), so a NATS cluster electing
its meta leader does not stop the renewals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field

from nats import nuid
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from openlines import bus, subjects
from router import inbound
from router.engine import Engine

log = logging.getLogger("router.partitions")

OWNED = Gauge("openlines_router_partitions_owned", "Inbound partitions this router replica consumes")
LOST = Counter("openlines_router_partition_leases_lost_total", "Partition leases this replica lost to another one")
BUCKET_STREAM = f"KV_{subjects.KV_ROUTER}"
MEMBER = "member."


@dataclass
class _Held:
    revision: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    leaving: asyncio.Task[None] | None = None  # given up: finishing its message in hand, then the lease goes


class Partitions:
    def __init__(
        self,
        js: JetStreamContext,
        engine: Engine,
        *,
        lease_seconds: float,
        ack_wait: float,
        replicas: int = 1,
        finish_timeout: float = 10.0,
    ) -> None:
        self.js = js
        self.replicas = replicas
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.ack_wait = ack_wait
        self.finish_timeout = finish_timeout  # the longest a partition given up may take over its message in hand
        self.me = nuid.NUID().next().decode()
        self.held: dict[int, _Held] = {}
        self.kv: KeyValue
        self.stopping = asyncio.Event()
        self.balanced = asyncio.Event()  # set once this replica has taken its share
        self._background: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        # replicated: a lost node must not stop the leases (and so all routing)
        self.kv = await bus.own_bucket(self.js, subjects.KV_ROUTER, ttl=self.lease_seconds, replicas=self.replicas)
        await self._match_ttl()

    async def _match_ttl(self) -> None:
        """A bucket made with another lease time (an older release: 10 s) gets ours; renewing at a third of a
        lease the bucket does not have would lose every lease, so if it cannot be changed we follow it."""
        info = await self.js.stream_info(BUCKET_STREAM)
        ttl = info.config.max_age or 0.0
        if ttl and abs(ttl - self.lease_seconds) < 0.01:
            return
        try:
            info.config.max_age = self.lease_seconds
            info.config.duplicate_window = min(info.config.duplicate_window or self.lease_seconds, self.lease_seconds)
            await self.js.update_stream(info.config)
            log.info("partition lease time changed", extra={"from_s": ttl, "to_s": self.lease_seconds})
        except Exception as exc:
            log.warning(
                "cannot change the partition lease time of the bucket; following the bucket's",
                extra={"bucket_s": ttl, "wanted_s": self.lease_seconds, "error": repr(exc)},
            )
            if ttl:
                self.lease_seconds = ttl

    @property
    def interval(self) -> float:
        return self.lease_seconds / 3

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    await self._round()
                except Exception as exc:  # NATS away: keep what we hold until the leases say otherwise
                    log.warning("partition round failed", extra={"error": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=self.interval)
        finally:
            await self._release_all()

    async def _round(self) -> None:
        self._revive()
        # First and at once: the heartbeat and every lease (a late renewal is a lost partition).
        done = await asyncio.gather(
            self.kv.put(f"{MEMBER}{self.me}", b"1"), *(self._renew(p) for p in list(self.held)), return_exceptions=True
        )
        failed = next((r for r in done if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed  # NATS not answering: this round ends here, what we hold stays until the leases say otherwise
        members = await self._members()
        share = math.ceil(subjects.PARTITIONS / max(1, len(members)))
        staying = sorted(p for p, h in self.held.items() if h.leaving is None)
        for p in staying[share:]:  # a new replica came: give up the surplus (each finishes its message in hand)
            self._give_up(p)
        staying = staying[:share]
        for p in range(subjects.PARTITIONS):
            if len(staying) >= share:
                break
            if p not in self.held and await self._claim(p):
                staying.append(p)
        OWNED.set(len(staying))
        if len(staying) >= min(share, subjects.PARTITIONS):
            self.balanced.set()

    async def _members(self) -> list[str]:
        """The live members: the bucket stream's member subjects (no consumer made), less those whose last
        word was a delete (a replica that stopped)."""
        prefix = f"$KV.{subjects.KV_ROUTER}.{MEMBER}"
        info = await self.js.stream_info(BUCKET_STREAM, subjects_filter=prefix + ">")
        others = [s.removeprefix(prefix) for s in (info.state.subjects or {}) if s.removeprefix(prefix) != self.me]

        async def live(member: str) -> bool:
            try:
                await self.kv.get(f"{MEMBER}{member}")
            except (KeyNotFoundError, KeyDeletedError):
                return False
            return True

        found = await asyncio.gather(*(live(m) for m in others))
        return [self.me] + [m for m, ok in zip(others, found, strict=True) if ok]

    async def _claim(self, p: int) -> bool:
        try:
            revision = await self.kv.create(f"lease.{p}", self.me.encode())
        except (KeyWrongLastSequenceError, BadRequestError):
            return False  # someone else holds it
        held = _Held(revision=revision)
        self._consume(p, held)
        self.held[p] = held
        log.info("partition taken", extra={"partition": p, "replica": self.me})
        return True

    def _consume(self, p: int, held: _Held) -> None:
        held.task = asyncio.create_task(
            inbound.consume(
                self.js,
                self.engine,
                durable=f"router-p{p}",
                filter_subject=subjects.inbound_partition(p),
                ack_wait=self.ack_wait,
                stop=held.stop,
            ),
            name=f"inbound-p{p}",
        )

    def _revive(self) -> None:
        """A partition we hold must never sit without its consumer: start again any that ended."""
        for p, held in self.held.items():
            task = held.task
            if task is None or not task.done() or held.stop.is_set():
                continue
            error = None if task.cancelled() else task.exception()
            log.error("inbound consumer ended; starting it again", extra={"partition": p, "error": repr(error)})
            self._consume(p, held)

    async def _renew(self, p: int) -> None:
        held = self.held.get(p)
        if held is None:
            return
        try:
            held.revision = await self.kv.update(f"lease.{p}", self.me.encode(), last=held.revision)
        except (KeyWrongLastSequenceError, BadRequestError):
            # Expired and perhaps taken by another replica: stop taking messages at once (max_ack_pending=1
            # keeps the order even while both of us still hold one), without holding up this round.
            LOST.inc()
            log.warning("partition lease lost", extra={"partition": p, "replica": self.me})
            self.held.pop(p, None)
            held.stop.set()
            if held.task is not None:
                self._in_background(self._finish(held))

    def _give_up(self, p: int) -> None:
        held = self.held[p]
        held.stop.set()
        held.leaving = self._in_background(self._leave(p, held))

    async def _leave(self, p: int, held: _Held) -> None:
        """Finish the message in hand (the lease still renewed by the rounds), then free the partition."""
        await self._finish(held)
        if self.held.get(p) is held:
            del self.held[p]
            with contextlib.suppress(Exception):
                await self.kv.delete(f"lease.{p}", last=held.revision)
        log.info("partition released", extra={"partition": p, "replica": self.me})

    async def _finish(self, held: _Held) -> None:
        if held.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(held.task), timeout=self.finish_timeout)
        except (TimeoutError, asyncio.CancelledError):
            held.task.cancel()
        except Exception:
            pass  # it ended with an error: nothing in hand any more

    def _in_background(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _release_all(self) -> None:
        """A graceful stop: every partition finishes its message in hand at the same time, then its lease is
        deleted, so the other replicas take it on their next round instead of after the lease."""
        for p, held in list(self.held.items()):
            if held.leaving is None:
                self._give_up(p)
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.kv.delete(f"{MEMBER}{self.me}")
        OWNED.set(0)

    def stop(self) -> None:
        self.stopping.set()
