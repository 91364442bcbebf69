"""crm-sync's claims on a client (decision 015) against a real nats-server: a
second replica waits while the holder renews its claim, takes it over only
when it stood still for a whole lease, and the old holder learns it at its
next renewal - the fence before every create."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from support.timing import wait_for

from crm_sync.claims import ClaimLost, Claims, ClaimValue, claim_key
from crm_sync.links import open_links


async def test_a_claim_is_waited_for_while_its_holder_renews_it_and_taken_over_once_it_stops(nc: Any) -> None:
    links = await open_links(nc.jetstream())
    a, b = Claims(links, lease=2.0, holder="a"), Claims(links, lease=2.0, holder="b")
    held = await a.acquire("c1", "1")
    assert held is not None
    waiting = asyncio.create_task(b.acquire("c1", "1"))
    for _ in range(20):  # 4 s of renewals, twice the lease: b keeps waiting
        await held.renew()
        await asyncio.sleep(0.2)
        assert not waiting.done()
    taken = await wait_for(lambda: waiting.done() and waiting.result(), timeout=10, what="b taking the claim over")
    assert taken.value.holder == "b"
    with pytest.raises(ClaimLost):
        await held.renew()  # the fence: a holder who was away learns it before creating anything
    await held.release()  # not ours any more: leaves b's claim alone
    await taken.renew()
    await taken.release()


async def test_a_released_claim_is_taken_at_once_by_the_next_event(nc: Any) -> None:
    links = await open_links(nc.jetstream())
    a, b = Claims(links, lease=600.0, holder="a"), Claims(links, lease=600.0, holder="b")
    held = await a.acquire("c2", "1")
    assert held is not None
    waiting = asyncio.create_task(b.acquire("c2", "2"))
    await held.release()
    taken = await wait_for(lambda: waiting.done() and waiting.result(), timeout=10, what="b claiming at once")
    assert taken.value.event == "2"


async def test_a_renewal_stored_whose_answer_was_lost_is_still_ours(nc: Any) -> None:
    links = await open_links(nc.jetstream())
    held = await Claims(links, lease=600.0, holder="a").acquire("c3", "1")
    assert held is not None
    # Our own renewal reached the bucket, its answer did not (a NATS timeout): the revision moved.
    moved = msgspec.structs.replace(held.value, beats=held.value.beats + 1)
    await links.update(claim_key("c3"), msgspec.json.encode(moved), last=held.revision)
    await held.renew()  # same token: ours, not lost
    entry = await links.get(claim_key("c3"))
    assert msgspec.json.decode(entry.value, type=ClaimValue).beats == moved.beats + 1


async def test_a_waiting_replica_gives_up_when_it_is_stopped(nc: Any) -> None:
    links = await open_links(nc.jetstream())
    assert await Claims(links, lease=600.0, holder="a").acquire("c4", "1") is not None
    stop = asyncio.Event()
    waiting = asyncio.create_task(Claims(links, lease=600.0, holder="b").acquire("c4", "1", stop))
    stop.set()
    await wait_for(waiting.done, what="the waiting replica giving up")
    assert waiting.result() is None


async def test_a_claim_held_for_an_acknowledged_event_is_taken_over_at_once_though_renewed(nc: Any) -> None:
    """A holder stuck after its event was acknowledged (its heartbeat still renewing) held up its client's
    next event - and every event behind it - for as long as it lived (found at the make chaos size)."""
    links = await open_links(nc.jetstream())
    a, b = Claims(links, lease=600.0, holder="a"), Claims(links, lease=600.0, holder="b")
    held = await a.acquire("c5", "7")
    assert held is not None
    floor = 6

    async def acked(seq: int) -> bool:
        return seq <= floor

    waiting = asyncio.create_task(b.acquire("c5", "9", acked=acked))
    for _ in range(5):  # event 7 not acknowledged yet: b waits while a renews
        await held.renew()
        await asyncio.sleep(0.2)
        assert not waiting.done()
    floor = 8  # event 7 acknowledged; a still renews
    await held.renew()
    taken = await wait_for(lambda: waiting.done() and waiting.result(), timeout=10, what="b taking the claim over")
    assert (taken.value.holder, taken.value.event) == ("b", "9")
    with pytest.raises(ClaimLost):
        await held.renew()  # the stuck holder's heartbeat stops at its next beat
    await taken.release()
