"""P1W by CPU per request: the webhook gateways' and the bare servers' CPU per answered request, in interleaved rounds.

A diagnostic next to ``p1_webhooks.py`` (not part of ``make bench``): on a 2-core
machine shared with other work the requests/s of the same code move 0.4-2.6x
from round to round, while the CPU a process spends per request moves by about
+-10 %. Each round sends the same bodies as ``p1_webhooks.py`` (REQUESTS of them
from CONNS clients) to each server in turn - the bare server, optionally the
gateway of another checkout (``--before PYTHON``: that checkout's venv python,
which imports its own code), and ours - and reads the server's CPU time from
/proc (the sum of its threads' ``schedstat``, in nanoseconds) before and after.
The ratio is bare CPU / gateway CPU per request (1.0 = as cheap as the ceiling).

    .venv/bin/python bench/p1w_cpu.py [--rounds 4] [--requests 4000] [--before /work/main/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from common import PY, Proc, bare, nats_server, service
from p1_webhooks import CONNS, TG_ACCOUNT, TG_SECRET, VK_ACCOUNT, VK_GROUP, VK_SECRET, VK_TOKEN, gateway_settings, telegram_update
from peers.vk_api import CallbackSender, FakeVk

from openlines import bus


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds used so far by every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return total


async def drive(url: str, n: int, body: Any, headers: dict[str, str], expect: str) -> int:
    """POST ``n`` bodies from CONNS clients; how many were answered 200 with ``expect`` in the text."""
    counter = itertools.count()
    good = 0

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal good
        while next(counter) < n:
            async with http.post(url, data=body(), headers=headers) as resp:
                text = await resp.text()
            good += resp.status == 200 and expect in text

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers={"Content-Type": "application/json"}
    ) as http:
        await asyncio.gather(*(one(http) for _ in range(CONNS)))
    return good


async def main(rounds: int, requests: int, before: str | None) -> dict[str, Any]:
    vk = FakeVk(tokens={VK_TOKEN: VK_GROUP}, users={1000 + i: ("Vera", f"Bench{i}") for i in range(CONNS)})
    vk_url = await vk.start()
    ids = itertools.count(1)
    users = itertools.cycle(range(CONNS))
    sender = CallbackSender(None, "", VK_GROUP, VK_SECRET)  # type: ignore[arg-type] - builds bodies only

    def tg_body() -> bytes:
        n = next(ids)
        return telegram_update(n, 1000 + next(users), f"hello number {n}")

    def vk_body() -> bytes:
        n = next(ids)
        return json.dumps(sender.message_new(f"hello number {n}", from_id=1000 + next(users))).encode()

    out: dict[str, Any] = {"rounds": rounds, "requests": requests, "before": before, "load": [os.getloadavg()[0]]}
    try:
        with tempfile.TemporaryDirectory(prefix="p1w-cpu-") as tmp, nats_server(Path(tmp), "p1w") as ns:
            workdir = Path(tmp)
            nc = await bus.connect(ns.url, "bench-p1w", first_attempts=5)
            await bus.bootstrap(nc.jetstream())
            await nc.close()
            tg_env, vk_env = gateway_settings(vk_url)

            def gateways(python: str, tag: str) -> dict[str, Proc]:
                return {
                    "telegram": service(f"gateway-telegram-{tag}", "gateway_telegram", ns.url, workdir, python=python, **tg_env),
                    "vk": service(f"gateway-vk-{tag}", "gateway_vk", ns.url, workdir, python=python, **vk_env),
                }

            servers: dict[str, dict[str, Proc]] = {
                "bare": {"telegram": bare("http-publish", ns.url, workdir), "vk": bare("vk-publish", ns.url, workdir)},
            }
            if before:
                servers["before"] = gateways(before, "before")
            servers["ours"] = gateways(PY, "ours")
            procs = [p for by in servers.values() for p in by.values()]
            try:
                await asyncio.gather(*(p.ready() for p in procs))
                target = {
                    "telegram": (f"/telegram/{TG_ACCOUNT}", tg_body, {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}),
                    "vk": (f"/vk/{VK_ACCOUNT}", vk_body, {}),
                }
                expect = {("telegram", "bare"): "true", ("vk", "bare"): "ok", ("vk", "before"): "ok", ("vk", "ours"): "ok"}
                for by in servers.values():  # warm-up: imports, caches, the VK authors' names
                    for ch, (path, body, headers) in target.items():
                        await drive(f"http://127.0.0.1:{by[ch].port}{path}", 1000, body, headers, "")
                us: dict[str, dict[str, list[float]]] = {ch: {side: [] for side in servers} for ch in target}
                for r in range(rounds):
                    for ch, (path, body, headers) in target.items():
                        for side, by in servers.items():
                            p = by[ch]
                            c0 = cpu_ns(p.pid)
                            good = await drive(
                                f"http://127.0.0.1:{p.port}{path}", requests, body, headers, expect.get((ch, side), "")
                            )
                            used = cpu_ns(p.pid) - c0
                            if good != requests:
                                raise RuntimeError(f"{ch} {side}: {requests - good} of {requests} not answered as expected")
                            us[ch][side].append(used / requests / 1e3)
                        line = "  ".join(f"{side} {us[ch][side][-1]:6.1f} us" for side in servers)
                        print(f"round {r + 1} {ch:8} {line}", file=sys.stderr, flush=True)
            finally:
                for p in procs:
                    p.stop()
    finally:
        await vk.stop()
    out["load"].append(os.getloadavg()[0])
    out["us_per_request"] = us
    out["ratios"] = {
        ch: {side: [b / o for b, o in zip(by["bare"], by[side], strict=True)] for side in by if side != "bare"}
        for ch, by in us.items()
    }
    for ch, sides in out["ratios"].items():
        for side, rs in sides.items():
            print(
                f"{ch:8} {side:6} bare/{side} each round: {', '.join(f'{r:.2f}' for r in rs)}; median {statistics.median(rs):.2f}"
                f" ({statistics.median(us[ch][side]):.0f} us vs bare {statistics.median(us[ch]['bare']):.0f} us)"
            )
    print(f"load average {out['load'][0]:.1f} -> {out['load'][1]:.1f}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--before", help="another checkout's venv python: its gateways are measured too")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(main(args.rounds, args.requests, args.before))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
