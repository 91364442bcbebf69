"""NATS away for longer than a partition lease (a restart; on a cluster, the election after a node died): every
lease and heartbeat of the router bucket expires with nobody to take them. Each replica keeps its own partitions
(decision 037) instead of the first one back taking all sixteen and giving half back a round later."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support import apply_lines, partition_owners, running_router
from support.timing import wait_for

from openlines import subjects
from router.members import MEMBER

KEPT = "partition lease renewed after it expired untaken"
MOVED = ("partition lease lost", "partition taken", "partition released")
LEASE = 1.5  # the routers' partition lease (their default)


async def test_two_replicas_keep_their_partitions_through_a_nats_restart_longer_than_a_lease(
    nc: Any, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.partitions")
    await apply_lines(nc)
    async with (
        running_router(nats_server.url, partition_lease_seconds=LEASE),
        running_router(nats_server.url, partition_lease_seconds=LEASE),
    ):
        kv = await nc.jetstream().key_value(subjects.KV_ROUTER)

        async def split() -> list[str] | None:
            held = await partition_owners(nc)
            return held if "" not in held and len(set(held)) == 2 and held.count(held[0]) == 8 else None

        before = await wait_for(split, timeout=30, what="the partitions split evenly between the two replicas")
        caplog.clear()

        nats_server.stop(kill=True)
        await asyncio.sleep(LEASE * 2)  # the fault: down for two leases, so every lease has expired on its return
        nats_server.start()

        # Some rounds after NATS is back, past the lease's time a replica claims nothing after an outage: each
        # replica's heartbeat written six more times (a round's length is a third of a lease).
        async def heartbeats() -> dict[str, int]:
            got = {}
            for member in set(before):
                try:
                    got[member] = (await kv.get(f"{MEMBER}{member}")).revision
                except Exception:
                    return {}
            return got

        start = await wait_for(heartbeats, timeout=30, what="both replicas' heartbeats back")

        async def rounds_later() -> bool:
            now = await heartbeats()
            return bool(now) and all(now[m] >= start[m] + 2 * 3 for m in start)

        await wait_for(rounds_later, timeout=30, what="six more rounds of each replica")
        assert await partition_owners(nc) == before
        kept = [r for r in caplog.records if r.getMessage() == KEPT]
        assert {(r.__dict__["partition"], r.__dict__["replica"]) for r in kept} == set(enumerate(before))
        moved = [(r.getMessage(), r.__dict__.get("partition")) for r in caplog.records if r.getMessage() in MOVED]
        assert moved == [], f"partitions changed hands over the restart: {moved}"
