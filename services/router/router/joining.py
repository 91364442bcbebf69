"""When a router replica that just started becomes a member and is given its share of the partitions.

A replica that starts while the others hold every partition waits ``JOIN_AFTER`` before it becomes a member
and they give it its share (decision 036). After a replica is killed and started again, the survivor has
just taken the killed one's partitions and works off what it had in hand; giving half of them away again
at that moment stacks a second hand-over on the first. The wait ends at once if a partition is free or
held by a replica that is not live (then every replica is needed now).
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.kv import KeyValue

from openlines import subjects
from router.leases import Leases
from router.members import Members

log = logging.getLogger("router.partitions")

JOIN_AFTER = 5.0


class Joining:
    def __init__(self, members: Members, leases: Leases, after: float = JOIN_AFTER) -> None:
        self.members = members
        self.leases = leases
        self.after = after
        self.joined = False
        self._by: float | None = None  # (loop time) when this replica joins even if the others hold everything
        self._logged = False

    async def stay_out(self, kv: KeyValue, interval: float) -> bool:
        """Whether to stay out this round: other replicas are live and hold every partition, and the wait is not
        over. Once it says no, it never says yes again."""
        if self.joined:
            return False
        self.joined = not await self._wait(kv, interval)
        return not self.joined

    async def _wait(self, kv: KeyValue, interval: float) -> bool:
        loop = asyncio.get_running_loop()
        if self._by is None:
            self._by = loop.time() + self.after
        if loop.time() >= self._by:
            return False
        members, _ = await self.members.look(kv, interval)  # not a member yet: the others
        live = set(members) - {self.members.me}
        if not live:
            return False
        holders = await asyncio.gather(*(self.leases.holder(p) for p in range(subjects.PARTITIONS)))
        if not all(h is not None and h[0] in live for h in holders):
            return False
        if not self._logged:
            self._logged = True
            log.info(
                "joining the other replicas shortly: they hold every partition",
                extra={"replica": self.members.me, "join_in_s": round(self._by - loop.time(), 1), "live": len(live)},
            )
        return True
