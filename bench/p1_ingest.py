"""P1: ingest req/s of the webchat gateway vs a bare aiohttp WebSocket handler doing one acked JetStream publish.

The same load generator (aiohttp, CONNS concurrent WebSockets, each sends a
message and waits for its ack before the next) drives both servers, each a
subprocess against the same nats-server; the rounds alternate so background
load on the machine hits both alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import HELLO, WEBCHAT_SECRET, Proc, Window, bare, bind_bench_account, nats_server, service

from openlines import bus

CONNS = 32
SECONDS = 6.0
WARMUP = 1.0
ROUNDS = 2


async def load(url: str, label: str, tag: str) -> dict[str, Any]:
    """Drive ``url`` with CONNS sockets for WARMUP + SECONDS; count acks in the measured window."""
    window = Window(label, WARMUP, SECONDS, "msg/s")

    async def one(i: int, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(f"{url}?v=v{tag}{i}") as ws:
            await ws.send_str(HELLO)
            first = json.loads((await ws.receive()).data)
            assert first["type"] == "welcome", first
            n = 0
            while window.open():
                n += 1
                mid = f"{tag}-{i}-{n}"
                t0 = time.monotonic()
                await ws.send_str(json.dumps({"type": "message", "id": mid, "text": f"hello number {n} from {i}"}))
                while True:
                    frame = json.loads((await ws.receive(timeout=10)).data)
                    if frame.get("id") == mid:
                        break
                window.record(t0, time.monotonic(), frame.get("status") == "sent")

    async def clients() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.gather(*(one(i, http) for i in range(CONNS)))

    got = await window.run(clients())
    return {
        "msgs_per_s": got["rate"],
        "acked": got["done"],
        "errors": got["errors"],
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
    }


async def run(workdir: Path) -> dict[str, Any]:
    with nats_server(workdir, "p1") as ns:
        nc = await bus.connect(ns.url, "bench-p1", first_attempts=5)
        await bus.bootstrap(nc.jetstream())
        await bind_bench_account(nc)
        await nc.close()
        gw = service("gateway-webchat", "gateway_webchat", ns.url, workdir, webchat_secret=WEBCHAT_SECRET)
        # Diagnostic: the same gateway with OPENLINES_LOG_LEVEL=warning (no per-message INFO line).
        quiet = service(
            "gateway-webchat-quiet", "gateway_webchat", ns.url, workdir, webchat_secret=WEBCHAT_SECRET, log_level="warning"
        )
        ceiling = bare("ws-publish", ns.url, workdir)
        procs: list[Proc] = [gw, quiet, ceiling]
        try:
            await asyncio.gather(*(p.ready() for p in procs))
            ours: list[dict[str, Any]] = []
            quiets: list[dict[str, Any]] = []
            bares: list[dict[str, Any]] = []
            for r in range(ROUNDS):
                bares.append(
                    await load(f"http://127.0.0.1:{ceiling.port}/ws/bench", f"P1 bare            round {r + 1}", f"b{r}")
                )
                ours.append(await load(f"http://127.0.0.1:{gw.port}/ws/bench", f"P1 gateway         round {r + 1}", f"g{r}"))
                quiets.append(await load(f"http://127.0.0.1:{quiet.port}/ws/bench", f"P1 gateway (quiet) round {r + 1}", f"q{r}"))
        finally:
            for p in procs:
                p.stop()
    # The machine is shared: say how far apart the rounds were, not only the best of each.
    per_round = [o["msgs_per_s"] / b["msgs_per_s"] for o, b in zip(ours, bares, strict=True) if b["msgs_per_s"]]
    notes = [
        "ratio of each round (gateway / bare right before it): "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + f"; load average after the runs {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    ]
    best_ours = max(ours, key=lambda x: x["msgs_per_s"])
    best_bare = max(bares, key=lambda x: x["msgs_per_s"])
    best_quiet = max(quiets, key=lambda x: x["msgs_per_s"])
    return {
        "name": "p1_ingest",
        "what": "webchat gateway: WebSocket message -> acked JetStream publish -> ack frame",
        "setup": {"connections": CONNS, "seconds": SECONDS, "rounds": ROUNDS, "servers": "subprocesses, log level info"},
        "ours": best_ours,
        "ceiling": best_bare,
        "quiet": best_quiet,
        "rounds": {"ours": ours, "quiet": quiets, "ceiling": bares},
        "notes": notes,
        "rows": [
            {
                "what": "webchat ingest msg/s (WebSocket message -> acked publish -> ack), log level info",
                "ours_text": f"{best_ours['msgs_per_s']:,.0f} msg/s (p99 {best_ours['p99_ms']:.1f} ms)",
                "ceiling_text": f"{best_bare['msgs_per_s']:,.0f} msg/s (p99 {best_bare['p99_ms']:.1f} ms)",
                "ratio": best_ours["msgs_per_s"] / best_bare["msgs_per_s"],
                "target": ">= 0.85x",
            },
            {
                "what": "the same, gateway at log level warning (diagnostic)",
                "ours_text": f"{best_quiet['msgs_per_s']:,.0f} msg/s (p99 {best_quiet['p99_ms']:.1f} ms)",
                "ceiling_text": f"{best_bare['msgs_per_s']:,.0f} msg/s",
                "ratio": best_quiet["msgs_per_s"] / best_bare["msgs_per_s"],
                "target": "",
            },
        ],
        "ratio": best_ours["msgs_per_s"] / best_bare["msgs_per_s"] if best_bare["msgs_per_s"] else None,
        "target": ">= 0.85x ceiling",
        "ours_text": f"{best_ours['msgs_per_s']:,.0f} msg/s (p99 {best_ours['p99_ms']:.1f} ms)",
        "ceiling_text": f"{best_bare['msgs_per_s']:,.0f} msg/s (p99 {best_bare['p99_ms']:.1f} ms)",
    }
