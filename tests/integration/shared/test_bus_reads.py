"""One-off reads of a bucket or a subject leave no consumer behind (nats-server caps consumers per stream)."""

from __future__ import annotations

import asyncio
from typing import Any

from openlines import bus, subjects


async def test_a_burst_of_bucket_and_subject_reads_never_hits_the_consumer_limit(nc: Any) -> None:
    js = nc.jetstream()
    await js.publish(subjects.history("s1"), b'{"x": 1}')
    # More reads in a short time than the server allows consumers on one stream (1,000 on nats-server 2.15).
    for _ in range(6):
        await asyncio.gather(*(bus.kv_entries(js, subjects.KV_LINES) for _ in range(200)))
    for _ in range(6):
        got = await asyncio.gather(*(bus.read_subject(js, subjects.STREAM_HIST, subjects.history("s1")) for _ in range(200)))
        assert all(len(g) == 1 for g in got)
    for stream in (f"KV_{subjects.KV_LINES}", subjects.STREAM_HIST):
        assert (await js.stream_info(stream)).state.consumer_count == 0
