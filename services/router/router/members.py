"""Which router replicas are alive (decision 027): each answers on its own ``ol.router.alive.<member>``
subject, which the server drops the moment the replica's connection closes, and keeps a ``member.<id>``
heartbeat in the ``ol-router`` bucket (``router.partitions`` renews it every round).

"No responders" twice, a moment apart (so a reconnect is not mistaken for a death), marks a member gone; a
probe that times out (a busy replica, NATS slow) says nothing - its leases decide.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from openlines import bus, subjects

BUCKET_STREAM = f"KV_{subjects.KV_ROUTER}"
MEMBER = "member."


class Members:
    """This replica's answer to the others' probes, and its look at the others."""

    def __init__(self, nc: NATS, js: JetStreamContext, me: str) -> None:
        self.nc = nc
        self.js = js
        self.me = me
        self._alive: Any = None

    async def answer_probes(self) -> None:
        """Answer the other replicas' probes (before the first heartbeat makes this replica a member)."""
        self._alive = await self.nc.subscribe(subjects.router_alive(self.me), cb=self._answer)
        await bus.flush_all(self.nc)

    async def close(self) -> None:
        if self._alive is not None:
            with contextlib.suppress(Exception):
                await self._alive.unsubscribe()

    @staticmethod
    async def _answer(msg: Any) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(b"")

    async def look(self, kv: KeyValue, interval: float) -> tuple[list[str], set[str]]:
        """The live members: the bucket stream's member subjects (no consumer made), less those whose last
        word was a delete (a replica that stopped) and those whose connection is gone (killed); and the
        latter apart, whose leases are taken at once. ``interval``: a round's length (a probe's timeout)."""
        prefix = f"$KV.{subjects.KV_ROUTER}.{MEMBER}"
        info = await self.js.stream_info(BUCKET_STREAM, subjects_filter=prefix + ">")
        others = [s.removeprefix(prefix) for s in (info.state.subjects or {}) if s.removeprefix(prefix) != self.me]

        async def state(member: str) -> str:
            try:
                await kv.get(f"{MEMBER}{member}")
            except (KeyNotFoundError, KeyDeletedError):
                return "stopped"
            return "gone" if await self.gone(member, interval) else "live"

        found = await asyncio.gather(*(state(m) for m in others))
        members = [self.me] + [m for m, st in zip(others, found, strict=True) if st == "live"]
        return members, {m for m, st in zip(others, found, strict=True) if st == "gone"}

    async def gone(self, member: str, interval: float) -> bool:
        """Whether ``member``'s NATS connection is gone: its probe answered "no responders" twice, half a round
        apart (longer than a dropped connection takes to come back when its NATS server is there: a few
        milliseconds). An answer, a timeout or any other failure (ours: NATS away) says it may be alive."""
        try:
            subject = subjects.router_alive(member)
        except subjects.BadToken:
            return False  # not a member id of ours: its leases decide
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(interval / 2)
            try:
                await self.nc.request(subject, b"", timeout=interval)
            except NoRespondersError:
                continue
            except Exception:
                return False
            return False
        return True
