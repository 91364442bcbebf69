"""A router replica started while another holds every partition waits a moment before it takes its share
(decision 036): a replica killed and started again does not pull half the partitions from the survivor while
it is still taking over the killed one's. Alone, it takes every partition at once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support import apply_lines, partition_owners, running_router
from support.timing import wait_for

from openlines import subjects

JOINING = "joining the other replicas shortly: they hold every partition"


async def test_a_replica_joining_a_replica_that_holds_everything_waits_then_takes_its_share(
    nc: Any, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.partitions")
    await apply_lines(nc)
    async with running_router(nats_server.url):

        async def one_holds_all() -> str | None:
            held = await partition_owners(nc)
            return held[0] if held[0] and len(set(held)) == 1 else None

        first = await wait_for(one_holds_all, what="the only replica holding every partition")
        async with running_router(nats_server.url):
            waiting = await wait_for(
                lambda: [r for r in caplog.records if r.getMessage() == JOINING], what="the new replica waiting to join"
            )
            assert waiting[0].__dict__["live"] == 1
            # While it waits, nothing moves: the first replica keeps every partition.
            assert set(await partition_owners(nc)) == {first}

            async def split() -> bool:
                held = await partition_owners(nc)
                return len(set(held)) == 2 and held.count(first) == subjects.PARTITIONS // 2

            await wait_for(split, timeout=30, what="the partitions split evenly once the new replica joined")
