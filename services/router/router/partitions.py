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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field

from nats import nuid
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from openlines import subjects
from openlines.bus import kv_entries
from router import inbound
from router.engine import Engine

log = logging.getLogger("router.partitions")

OWNED = Gauge("openlines_router_partitions_owned", "Inbound partitions this router replica consumes")


@dataclass
class _Held:
    revision: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Partitions:
    def __init__(self, js: JetStreamContext, engine: Engine, *, lease_seconds: float, ack_wait: float, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.ack_wait = ack_wait
        self.me = nuid.NUID().next().decode()
        self.held: dict[int, _Held] = {}
        self.kv: KeyValue
        self.stopping = asyncio.Event()
        self.balanced = asyncio.Event()  # set once this replica has taken its share

    async def open(self) -> None:
        try:
            self.kv = await self.js.key_value(subjects.KV_ROUTER)
        except (NotFoundError, BadRequestError):
            self.kv = await self.js.create_key_value(
                bucket=subjects.KV_ROUTER,
                history=1,
                ttl=self.lease_seconds,
                replicas=self.replicas,  # a lost node must not stop the leases (and so all routing)
                storage=js_api.StorageType.FILE,
            )

    async def run(self) -> None:
        interval = self.lease_seconds / 3
        try:
            while not self.stopping.is_set():
                try:
                    await self._round()
                except Exception as exc:  # NATS away: keep what we hold until the leases say otherwise
                    log.warning("partition round failed", extra={"error": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=interval)
        finally:
            await self._release_all()

    async def _round(self) -> None:
        self._revive()
        await self.kv.put(f"member.{self.me}", b"1")
        members = await self._members()
        share = math.ceil(subjects.PARTITIONS / max(1, len(members)))
        for p in list(self.held):
            await self._renew(p)
        surplus = sorted(self.held, reverse=True)[: max(0, len(self.held) - share)]
        if surplus:  # a new replica came: give up the surplus, all at once (each finishes its message in hand)
            for p in surplus:
                self.held[p].stop.set()
            await asyncio.gather(*(self._release(p) for p in surplus))
            for p in list(self.held):
                await self._renew(p)  # releasing took a while: keep the others fresh
        for p in range(subjects.PARTITIONS):
            if len(self.held) >= share:
                break
            if p not in self.held:
                await self._claim(p)
        OWNED.set(len(self.held))
        if len(self.held) >= min(share, subjects.PARTITIONS):
            self.balanced.set()

    async def _members(self) -> list[str]:
        # A one-off read that removes its consumer (keys() would leave one per round for 5 minutes).
        keys = await kv_entries(self.js, subjects.KV_ROUTER)
        found = [k.removeprefix("member.") for k in keys if k.startswith("member.")]
        return found or [self.me]

    async def _claim(self, p: int) -> None:
        try:
            revision = await self.kv.create(f"lease.{p}", self.me.encode())
        except (KeyWrongLastSequenceError, BadRequestError):
            return  # someone else holds it
        held = _Held(revision=revision)
        self._consume(p, held)
        self.held[p] = held
        log.info("partition taken", extra={"partition": p, "replica": self.me})

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
        held = self.held[p]
        try:
            held.revision = await self.kv.update(f"lease.{p}", self.me.encode(), last=held.revision)
        except (KeyWrongLastSequenceError, BadRequestError):
            # Expired and taken by another replica: stop at once (max_ack_pending=1
            # keeps the order even while both of us still hold a message).
            log.warning("partition lease lost", extra={"partition": p, "replica": self.me})
            await self._stop_consumer(p)

    async def _release(self, p: int) -> None:
        held = self.held.get(p)
        await self._stop_consumer(p)
        if held is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"lease.{p}", last=held.revision)
        log.info("partition released", extra={"partition": p, "replica": self.me})

    async def _stop_consumer(self, p: int) -> None:
        held = self.held.pop(p, None)
        if held is None or held.task is None:
            return
        held.stop.set()  # finish the message in hand, take no other
        try:
            await asyncio.wait_for(asyncio.shield(held.task), timeout=self.ack_wait)
        except (TimeoutError, asyncio.CancelledError):
            held.task.cancel()

    async def _release_all(self) -> None:
        for held in self.held.values():
            held.stop.set()  # every partition finishes its message in hand at the same time
        await asyncio.gather(*(self._release(p) for p in list(self.held)))
        with contextlib.suppress(Exception):
            await self.kv.delete(f"member.{self.me}")
        OWNED.set(0)

    def stop(self) -> None:
        self.stopping.set()
