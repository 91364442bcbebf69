"""Which partitions of OL_IN this router replica consumes.

Gateways publish each client's messages to one of ``subjects.PARTITIONS``
partitions (``ol.in.<channel>.<account>.<p>``). Every partition has one
durable consumer (``router-p<p>``); a replica holds up to ``in_hand`` of its
messages at once, one client's in order (``router.inbound``, decision 029), and
a partition's new holder starts nothing newer until all its previous holder
had in hand is acknowledged, so a client's messages are handled in order
whichever replica holds the partition — even for the moment two replicas both
think they do.

Replicas share the partitions through the ``ol-router`` KV bucket, whose
entries expire after ``lease_seconds`` unless renewed: each replica keeps a
``member.<id>`` heartbeat and holds ``lease.<p>`` keys for its partitions,
taking at most its fair share (partitions / live members, rounded up). A
replica that dies stops renewing; its leases expire and the others take the
partitions over. A new replica makes the others give up their surplus; one that
starts while the others hold every partition waits a moment first (``router.joining``).

NATS away for longer than a lease (a restart, or the election after a node of a
cluster died) lets every lease and heartbeat of the bucket expire at once. A
replica keeps each of its leases that nobody wrote since (``router.leases``)
and takes no partition for a lease's time after a failed round, so the others
renew theirs first (decision 037). Otherwise the first replica back took every
partition, alone among the heartbeats, and gave half back a round later.

A replica killed -9 is not waited for (decision 027): ``router.members`` sees its
connection gone; it no longer counts for the fair share, and its leases are taken
at once with compare-and-set on their revision. The message it had in hand is
handed back (nak'd) by the new holder instead of waiting out ``ack_wait``.

The lease is short (``router.leases``, decision 023), so a round must never
wait behind anything slow: every lease is renewed at
once (one round trip, not one per partition), before anything else, and a
partition given up or lost finishes its message in hand in the background;
one given up is freed first (its next holder keeps a client's order, decision
033). Nothing in a round creates a consumer (the
member list is the bucket stream's subject list), so a NATS cluster electing
its meta leader does not stop the renewals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass, field

from nats import nuid
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from openlines import subjects
from router import inbound
from router.engine import Engine
from router.joining import JOIN_AFTER, Joining
from router.leases import LeaseLost, Leases
from router.members import MEMBER, Members

log = logging.getLogger("router.partitions")

OWNED = Gauge("openlines_router_partitions_owned", "Inbound partitions this router replica consumes")
LOST = Counter("openlines_router_partition_leases_lost_total", "Partition leases this replica lost to another one")
GONE = Counter(
    "openlines_router_partitions_taken_from_gone_total",
    "Partition leases taken at once from a replica whose connection was gone (no responders)",
)


@dataclass
class _Held:
    revision: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Partitions:
    def __init__(
        self,
        js: JetStreamContext,
        engine: Engine,
        *,
        nc: NATS,
        lease_seconds: float,
        ack_wait: float,
        in_hand: int = 1,
        replicas: int = 1,
        finish_timeout: float = 10.0,
        join_after: float = JOIN_AFTER,
    ) -> None:
        self.js = js
        self.nc = nc
        self.replicas = replicas
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.ack_wait = ack_wait
        self.in_hand = in_hand
        self.finish_timeout = finish_timeout  # the longest a partition given up may take over its message in hand
        self.me = nuid.NUID().next().decode()
        self.members = Members(nc, js, self.me)
        self.leases = Leases(js, self.me, lease_seconds)
        self.held: dict[int, _Held] = {}
        self.kv: KeyValue
        self.stopping = asyncio.Event()
        self.balanced = asyncio.Event()  # set once this replica has taken its share
        self._background: set[asyncio.Task[None]] = set()
        self._last_members: set[str] = set()
        self._eager_until = 0.0  # until when (loop time) rounds come sooner while short of our share
        self._short = False
        self.joining = Joining(self.members, self.leases, join_after)
        self._claim_after = 0.0  # (loop time) no partition is claimed before: a round failed not long ago

    async def open(self) -> None:
        # Answer the other replicas' probes before the first heartbeat makes us a member.
        await self.members.answer_probes()
        self.kv = await self.leases.open(self.replicas)
        self.lease_seconds = self.leases.lease_seconds  # the bucket's, if it could not be given ours

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
                    # The others' leases may run out meanwhile as ours do: give them a lease's time to renew
                    # theirs once NATS answers again before taking any (see ``_round``).
                    self._claim_after = asyncio.get_running_loop().time() + self.lease_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=self._pause())
        finally:
            await self._release_all()

    def _pause(self) -> float:
        """The wait before the next round: a fifth of the usual while this replica is short of its share
        soon after the members changed (it joined; the others give up their surplus one by one, each
        free as soon as its message in hand is done), so it does not leave a freed partition waiting for
        a whole round. Bounded in time: a replica may stay below its share (16 over 3 is 6, 6 and 4)."""
        loop = asyncio.get_running_loop()
        return self.interval / 5 if self._short and loop.time() < self._eager_until else self.interval

    async def _round(self) -> None:
        self._revive()
        if await self.joining.stay_out(self.kv, self.interval):
            return
        # First and at once: the heartbeat and every lease (a late renewal is a lost partition).
        done = await asyncio.gather(
            self.kv.put(f"{MEMBER}{self.me}", b"1"), *(self._renew(p) for p in list(self.held)), return_exceptions=True
        )
        failed = next((r for r in done if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed  # NATS not answering: this round ends here, what we hold stays until the leases say otherwise
        members, gone = await self.members.look(self.kv, self.interval)
        if set(members) != self._last_members:
            self._last_members = set(members)
            self._eager_until = asyncio.get_running_loop().time() + self.lease_seconds
        share = math.ceil(subjects.PARTITIONS / max(1, len(members)))
        staying = sorted(self.held)
        for p in staying[share:]:  # a new replica came: give up the surplus (freed at once)
            self._give_up(p)
        staying = staying[:share]
        if asyncio.get_running_loop().time() < self._claim_after:
            # Just back from NATS being away: every lease may have expired with nobody to blame, the members'
            # heartbeats too (so every replica counts itself alone). Taking what looks free now would take the
            # others' partitions before they renew them, and give them back a round later: two hand-overs
            # of half the partitions for nothing. A partition that is still free after this is taken then.
            OWNED.set(len(staying))
            return
        if gone and len(staying) < share:  # first what a replica that is gone held: its clients wait
            staying += await self._take_from(gone, share - len(staying))
        for p in range(subjects.PARTITIONS):
            if len(staying) >= share:
                break
            if p not in self.held and await self._claim(p):
                staying.append(p)
        OWNED.set(len(staying))
        self._short = len(staying) < share
        if len(staying) >= min(share, subjects.PARTITIONS):
            self.balanced.set()

    async def _take_from(self, gone: set[str], wanted: int) -> list[int]:
        """Take up to ``wanted`` partitions leased by replicas that are gone, all at once: compare-and-set on
        the revision read, so a lease renewed or taken by someone else meanwhile is left alone."""

        free = [p for p in range(subjects.PARTITIONS) if p not in self.held]
        holders = await asyncio.gather(*(self.leases.holder(p) for p in free))
        found = [(p, h[1]) for p, h in zip(free, holders, strict=True) if h is not None and h[0] in gone]
        random.shuffle(found)  # several survivors: each tries others first, fewer lose the compare-and-set
        found = found[:wanted]
        taken = await asyncio.gather(*(self._claim(p, revision=r) for p, r in found))
        GONE.inc(sum(taken))
        return [p for (p, _), ok in zip(found, taken, strict=True) if ok]

    async def _claim(self, p: int, *, revision: int | None = None) -> bool:
        """Take a free partition, or (``revision``) one leased by a replica that is gone."""
        from_gone = revision is not None
        taken = await self.leases.claim(p, revision=revision)
        if taken is None:
            return False
        held = _Held(revision=taken)
        self._consume(p, held)
        self.held[p] = held
        log.info("partition taken", extra={"partition": p, "replica": self.me, "from_gone": from_gone})
        return True

    def _consume(self, p: int, held: _Held) -> None:
        held.task = asyncio.create_task(
            inbound.consume(
                self.js,
                self.engine,
                durable=f"router-p{p}",
                filter_subject=subjects.inbound_partition(p),
                ack_wait=self.ack_wait,
                in_hand=self.in_hand,
                stop=held.stop,
                nc=self.nc,  # the message its previous holder left in hand comes again at once
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
            held.revision = await self.leases.renew(p, held.revision)
        except LeaseLost:
            # Taken by another replica (or freed): stop taking messages at once (the next holder starts
            # nothing newer until what we hold is acked: decision 029), without holding up this round.
            LOST.inc()
            log.warning("partition lease lost", extra={"partition": p, "replica": self.me})
            self.held.pop(p, None)
            held.stop.set()
            if held.task is not None:
                self._in_background(self._finish(held))

    def _give_up(self, p: int) -> None:
        held = self.held.pop(p)
        held.stop.set()
        self._in_background(self._leave(p, held))

    async def _leave(self, p: int, held: _Held) -> None:
        """Free the partition at once, then finish what this replica has in hand of it, in the background.

        The next holder starts every other client's messages at once, and nothing of a client whose message
        is still being handled here before that one is acknowledged (the partition order, decision 033); what
        was fetched here and not started it hands back. Finishing first, with the lease kept, held the whole
        partition up to ``finish_timeout`` whenever a message in hand was slow (decision 023, amended)."""
        with contextlib.suppress(Exception):
            await self.leases.release(p, held.revision)
        log.info("partition released", extra={"partition": p, "replica": self.me})
        await self._finish(held)

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
        """A graceful stop: every lease is deleted at once, so the other replicas take the partitions on their
        next round instead of after the lease, and what is in hand finishes here meanwhile."""
        for p in list(self.held):
            self._give_up(p)
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.kv.delete(f"{MEMBER}{self.me}")
        await self.members.close()
        OWNED.set(0)

    def stop(self) -> None:
        self.stopping.set()
