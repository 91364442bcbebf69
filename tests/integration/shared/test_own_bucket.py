"""``bus.own_bucket``: a service's own KV bucket, created on first use and then taken as it is."""

from __future__ import annotations

import asyncio
from typing import Any

from openlines import bus


async def test_a_missing_bucket_is_created_with_the_settings_asked(nc: Any) -> None:
    js = nc.jetstream()
    kv = await bus.own_bucket(js, "ol-test-own", history=3, ttl=60.0)
    await kv.put("k", b"v")
    status = await kv.status()
    assert (status.history, status.ttl) == (3, 60.0)
    assert (await js.stream_info("KV_ol-test-own")).config.storage == "file"


async def test_an_existing_bucket_is_opened_as_it_is_with_its_keys(nc: Any) -> None:
    js = nc.jetstream()
    first = await bus.own_bucket(js, "ol-test-kept", ttl=60.0)
    await first.put("k", b"v")
    again = await bus.own_bucket(js, "ol-test-kept", history=5, ttl=None)  # other settings: the bucket's stay
    assert (await again.get("k")).value == b"v"
    assert ((await again.status()).history, (await again.status()).ttl) == (1, 60.0)


async def test_replicas_starting_together_all_get_the_one_bucket(nc: Any) -> None:
    js = nc.jetstream()
    got = await asyncio.gather(*(bus.own_bucket(js, "ol-test-race", history=1 + i % 2) for i in range(8)))
    await got[0].put("k", b"v")
    assert all([(await kv.get("k")).value == b"v" for kv in got])
