"""Who may act on a client's CRM records right now: a claim per client in
``ol-crm-links`` (``claim.<client id>``), held by one replica while it applies
an event, kept alive by heartbeats, and checked (fenced) before every create.

Why: an event is redelivered to another replica when its ack deadline passes
- a long CRM outage or throttling, a replica cut off from NATS for a while.
Two replicas then work on the same client at once, and each may create what
the other is creating. With a claim the second one waits for the first (the
claim's revision moving = the holder is alive) and takes over only when the
claim stood still for a whole lease; the first one, if it comes back,
finds its claim gone at its next fence and stops before creating anything.

No clocks are compared between machines: a waiter measures on its own clock
how long the claim has not changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines.bus import kv_get

log = logging.getLogger("crm_sync.claims")

TAKEN_OVER = Counter(
    "openlines_crm_claims_taken_over_total", "Claims on a client taken over from a replica that stopped renewing them"
)
LOST = Counter("openlines_crm_claims_lost_total", "Events left to another replica that took the claim over")


class ClaimLost(Exception):
    """Another replica holds the claim now: stop applying this event, create nothing more."""


class ClaimValue(msgspec.Struct, kw_only=True):
    holder: str  # host:pid:<random>, for the logs
    token: str  # one per acquisition: a renewal is ours only if the token is
    event: str = ""  # stream sequence of the event being applied
    beats: int = 0


def claim_key(unit: str) -> str:
    return f"claim.{unit}"


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _conflict(exc: Exception) -> bool:
    return isinstance(exc, KeyWrongLastSequenceError) or (
        isinstance(exc, BadRequestError) and "wrong last sequence" in str(exc).lower()
    )


class Claim:
    """A held claim: renewed by :meth:`renew` (heartbeat and fence), given up by :meth:`release`."""

    def __init__(self, kv: KeyValue, key: str, value: ClaimValue, revision: int) -> None:
        self.kv = kv
        self.key = key
        self.value = value
        self.revision = revision
        self.lost = False
        self._lock = asyncio.Lock()

    async def renew(self) -> None:
        """Move the claim's revision on (proof of life); raise ClaimLost if it is no longer ours.

        Called as a heartbeat and as the fence before every create: a replica that was
        cut off long enough for another to take over learns it here, before it creates.
        """
        async with self._lock:
            for _ in range(5):
                if self.lost:
                    raise ClaimLost(self.key)
                new = msgspec.structs.replace(self.value, beats=self.value.beats + 1)
                try:
                    self.revision = await self.kv.update(self.key, msgspec.json.encode(new), last=self.revision)
                    self.value = new
                    return
                except Exception as exc:
                    if not _conflict(exc):
                        raise  # NATS unreachable: not known to be lost, the caller retries
                # The revision moved: a renewal of ours whose answer was lost (adopt it, renew
                # again), or a takeover.
                current, revision = await kv_get(self.kv, self.key, ClaimValue)
                if current is None or revision is None or current.token != self.value.token:
                    self.lost = True
                    LOST.inc()
                    log.warning("claim taken over by another replica", extra={"claim": self.key})
                    raise ClaimLost(self.key)
                self.value, self.revision = current, revision
            raise RuntimeError(f"claim {self.key}: too much contention")

    async def release(self) -> None:
        """Give the claim up (only if still ours): the next event of the client needs no wait."""
        async with self._lock:
            if self.lost:
                return
            self.lost = True
            try:
                await self.kv.delete(self.key, last=self.revision)
            except Exception as exc:  # taken over meanwhile, or NATS away: a stale claim only costs a lease of waiting
                log.info("claim not released", extra={"claim": self.key, "error": repr(exc)[:200]})


class Claims:
    def __init__(self, kv: KeyValue, lease: float, holder: str | None = None) -> None:
        self.kv = kv
        self.lease = lease
        self.holder = holder or replica_id()

    async def acquire(
        self,
        unit: str,
        event: str,
        stop: asyncio.Event | None = None,
        *,
        redelivered: bool = False,
        acked: Callable[[int], Awaitable[bool]] | None = None,
    ) -> Claim | None:
        """The claim on ``unit``, waiting while another replica holds it and keeps it alive.

        How long a claim must stand still before it is taken over: a whole lease,
        or half of one for a *redelivered* event - JetStream redelivers only after
        the holder's in-progress acks, sent in the same heartbeat as its claim
        renewals, stopped reaching the server for a whole ack_wait (= the lease),
        so the holder's last renewal is already that old but for one heartbeat
        (a third of the lease), which half a lease of stillness covers.
        Returns None if ``stop`` is set meanwhile. (The caller keeps its event
        alive meanwhile with in-progress acks.)

        A claim held for an event already acknowledged (``acked(stream seq)``) is
        taken over at once, renewed or not: that event's work is done, and a
        holder still renewing it is stuck (it learns at its next fence that the
        claim is gone). Without this, one stuck holder held up its client for as
        long as it lived - and, each client's events in order, every event behind
        that client's next one.
        """
        patience = self.lease / 2 if redelivered else self.lease
        key = claim_key(unit)
        mine = ClaimValue(holder=self.holder, token=uuid.uuid4().hex, event=event)
        seen: tuple[str, int] | None = None  # (token, revision) of the other holder's claim last seen
        still_since = 0.0
        poll = min(0.5, max(0.05, self.lease / 10))
        while stop is None or not stop.is_set():
            current, revision = await kv_get(self.kv, key, ClaimValue)
            now = time.monotonic()
            try:
                if current is None:
                    rev = await self.kv.create(key, msgspec.json.encode(mine))
                    return Claim(self.kv, key, mine, rev)
                assert revision is not None
                if current.holder == self.holder:
                    # Ours from an earlier event this process gave up on (a stop): take it back at once.
                    rev = await self.kv.update(key, msgspec.json.encode(mine), last=revision)
                    return Claim(self.kv, key, mine, rev)
                if acked is not None and await _done_with(acked, current.event):
                    rev = await self.kv.update(key, msgspec.json.encode(mine), last=revision)
                    TAKEN_OVER.inc()
                    log.warning(
                        "claim taken over: the event it was held for is acknowledged already",
                        extra={"claim": key, "holder": current.holder, "held_for": current.event, "seq": event},
                    )
                    return Claim(self.kv, key, mine, rev)
                if seen != (current.token, revision):
                    if seen is None:
                        log.info(
                            "event waits for the replica holding its client",
                            extra={"claim": key, "holder": current.holder, "seq": event},
                        )
                    seen, still_since = (current.token, revision), now
                elif now - still_since >= patience:
                    rev = await self.kv.update(key, msgspec.json.encode(mine), last=revision)
                    TAKEN_OVER.inc()
                    log.warning(
                        "claim taken over: its holder stopped renewing it",
                        extra={"claim": key, "holder": current.holder, "seq": event},
                    )
                    return Claim(self.kv, key, mine, rev)
            except Exception as exc:
                if not _conflict(exc):
                    raise
                continue  # someone else moved first: look again
            await asyncio.sleep(poll)
        return None


async def _done_with(acked: Callable[[int], Awaitable[bool]], event: str) -> bool:
    """Whether the event a claim was held for is known to be acknowledged."""
    return event.isdigit() and await acked(int(event))
