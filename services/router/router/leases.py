"""The partition leases: ``lease.<p>`` keys of the ``ol-router`` bucket, each naming the replica that holds ``p``.

The bucket's entries expire after the lease time unless renewed, so a replica that dies stops holding its
partitions by itself (decision 009). Every write is a compare-and-set: a free partition is claimed by creating
its key, one leased by a replica that is gone is taken on the revision read (decision 027), a lease is renewed
on the revision its holder wrote, and released (deleted) on it, so two replicas never both write a lease.

The lease is short (1.5 s by default, renewed every third of it) so that a replica whose death is not seen by
``router.members`` (its host gone without closing the connection) holds up its clients for about that long
(decision 023).

NATS away for longer than a lease (a restart, or the election after a node of a cluster died) lets every lease
expire at once, with nobody to take them meanwhile. A refused renewal is then tried once more on "no entry":
it succeeds only if nobody wrote the key since it expired (another replica's claim or release is a later
entry), and the holder keeps the partition, consumer and all (decision 037).
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import bus, subjects
from router.members import BUCKET_STREAM

log = logging.getLogger("router.partitions")

KEPT = Counter(
    "openlines_router_partition_leases_kept_total",
    "Partition leases that expired with nobody taking them (NATS away longer than a lease) and were renewed",
)

# What a compare-and-set that lost says: someone else wrote the key (or it is gone, or expired meanwhile).
_REFUSED = (KeyWrongLastSequenceError, BadRequestError, KeyNotFoundError, KeyDeletedError)


class LeaseLost(Exception):
    """The lease was taken by another replica, or freed: its holder must stop taking the partition's messages."""


class Leases:
    def __init__(self, js: JetStreamContext, me: str, lease_seconds: float) -> None:
        self.js = js
        self.me = me
        self.lease_seconds = lease_seconds  # the bucket's, once opened (it may be an older release's)
        self.kv: KeyValue

    async def open(self, replicas: int) -> KeyValue:
        # replicated: a lost node must not stop the leases (and so all routing)
        self.kv = await bus.own_bucket(self.js, subjects.KV_ROUTER, ttl=self.lease_seconds, replicas=replicas)
        await self._match_ttl()
        return self.kv

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

    async def holder(self, p: int) -> tuple[str, int] | None:
        """Who holds partition ``p`` and the lease's revision; None if nobody does."""
        try:
            entry = await self.kv.get(f"lease.{p}")
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return (entry.value or b"").decode(), entry.revision or 0

    async def claim(self, p: int, *, revision: int | None = None) -> int | None:
        """Take a free partition, or (``revision``) one leased by a replica that is gone; its revision, or None
        if someone else holds it (or a gone replica's lease ran out meanwhile: free next round)."""
        try:
            if revision is None:
                return await self.kv.create(f"lease.{p}", self.me.encode())
            return await self.kv.update(f"lease.{p}", self.me.encode(), last=revision)
        except _REFUSED:
            return None

    async def renew(self, p: int, revision: int) -> int:
        """The lease renewed; raises :class:`LeaseLost` if another replica took it or it was freed."""
        try:
            return await self.kv.update(f"lease.{p}", self.me.encode(), last=revision)
        except (KeyWrongLastSequenceError, BadRequestError):
            pass
        try:
            # Expired with nothing written since (the bucket was away longer than a lease - a NATS restart or
            # an election - or this round came late): nobody took it, so it is still ours, consumer and all.
            # Any other holder's claim or release is a later entry for the key, and this fails.
            kept = await self.kv.update(f"lease.{p}", self.me.encode(), last=0)
        except (KeyWrongLastSequenceError, BadRequestError) as exc:
            raise LeaseLost(p) from exc
        KEPT.inc()
        log.info("partition lease renewed after it expired untaken", extra={"partition": p, "replica": self.me})
        return kept

    async def release(self, p: int, revision: int) -> None:
        """Free the partition for the next holder (unless someone wrote the lease since ``revision``)."""
        await self.kv.delete(f"lease.{p}", last=revision)
