"""P4: resident memory per idle webchat socket vs a bare aiohttp WebSocket server.

Each server is a subprocess; the load generator opens WARM sockets, reads the
server's RSS from /proc, opens up to SOCKETS in total (bounded by TIME_LIMIT),
reads RSS again: per socket = delta RSS / delta sockets. Every socket has
received its welcome frame (the gateway has also done its replay read).
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import HELLO, WEBCHAT_SECRET, Proc, Progress, bare, bind_bench_account, nats_server, raise_nofile, rss_kib, service

from openlines import bus

SOCKETS = 10_000
WARM = 200
CONNECT_CONCURRENCY = 100
TIME_LIMIT = 50.0


async def hold(proc: Proc, label: str, target: int) -> dict[str, Any]:
    progress = Progress(label)
    url = f"http://127.0.0.1:{proc.port}/ws/bench"
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    sockets: list[Any] = []
    failed = 0
    async with aiohttp.ClientSession(connector=conn) as http:

        async def open_one() -> None:
            nonlocal failed
            try:
                ws = await http.ws_connect(url, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5))
                await ws.send_str(HELLO)
                await ws.receive(timeout=30)  # the welcome frame
                sockets.append(ws)
            except (aiohttp.ClientError, OSError, TimeoutError):
                failed += 1

        async def open_many(n: int, deadline: float) -> None:
            sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

            async def guarded() -> None:
                if time.monotonic() > deadline:
                    return
                async with sem:
                    if time.monotonic() <= deadline:
                        await open_one()
                progress.show(f"{len(sockets):,} sockets open ({failed} failed), server RSS {rss_kib(proc.pid) / 1024:,.1f} MiB")

            await asyncio.gather(*(guarded() for _ in range(n)))

        t0 = time.monotonic()
        await open_many(WARM, t0 + TIME_LIMIT)
        await asyncio.sleep(0.5)  # let the server finish its per-socket work before reading RSS
        base_n, base_rss = len(sockets), rss_kib(proc.pid)
        await open_many(target - WARM, t0 + TIME_LIMIT)
        await asyncio.sleep(1.0)
        top_n, top_rss = len(sockets), rss_kib(proc.pid)
        elapsed = time.monotonic() - t0
        for ws in sockets:
            await ws.close()
    per = (top_rss - base_rss) * 1024 / max(1, top_n - base_n)
    progress.done(f"{top_n:,} sockets, {top_rss / 1024:,.1f} MiB RSS, {per / 1024:,.1f} KiB per socket ({failed} failed)")
    return {
        "sockets": top_n,
        "failed": failed,
        "rss_base_kib": base_rss,
        "rss_top_kib": top_rss,
        "base_sockets": base_n,
        "bytes_per_socket": per,
        "connect_seconds": elapsed,
    }


async def run(workdir: Path) -> dict[str, Any]:
    nofile = raise_nofile(SOCKETS * 2 + 1000)
    target = min(SOCKETS, (nofile - 500) // 1)  # the client holds one fd per socket; each server has its own limit
    with nats_server(workdir, "p4") as ns:
        nc = await bus.connect(ns.url, "bench-p4", first_attempts=5)
        await bus.bootstrap(nc.jetstream())
        await bind_bench_account(nc)
        await nc.close()
        ceiling_proc = bare("ws-idle", ns.url, workdir)
        try:
            await ceiling_proc.ready()
            ceiling = await hold(ceiling_proc, "P4 bare aiohttp WebSocket", target)
        finally:
            ceiling_proc.stop()
        gc.collect()
        gw = service("gateway-webchat", "gateway_webchat", ns.url, workdir, webchat_secret=WEBCHAT_SECRET)
        try:
            await gw.ready()
            ours = await hold(gw, "P4 webchat gateway", target)
        finally:
            gw.stop()
    return {
        "name": "p4_sockets",
        "what": "RSS per idle WebSocket",
        "setup": {"target_sockets": target, "nofile": nofile, "warm_sockets": WARM},
        "ours": ours,
        "ceiling": ceiling,
        "rows": [
            {
                "what": f"RSS per idle socket ({ours['sockets']:,} / {ceiling['sockets']:,} sockets)",
                "ours_text": f"{ours['bytes_per_socket'] / 1024:,.1f} KiB",
                "ceiling_text": f"{ceiling['bytes_per_socket'] / 1024:,.1f} KiB",
                "ratio": ours["bytes_per_socket"] / ceiling["bytes_per_socket"],
                "target": "<= 1.2x",
            }
        ],
    }
