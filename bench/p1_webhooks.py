"""P1 for the webhooks: updates/s of the Telegram and VK gateways vs a bare aiohttp handler doing one acked publish.

The same load generator (aiohttp, CONNS concurrent clients, each POSTs one
update and waits for the answer before the next) drives the gateway and the
bare server of ``bare_server.py`` (``http-publish`` / ``vk-publish``: read the
body, decode it, one acked JetStream publish, answer), each a subprocess
against the same nats-server, in alternating rounds. The bodies are what the
platforms send: a private text message as Telegram's ``Update`` and VK's
``message_new`` (the VK peer's builder), each with a fresh id, carrying the
right secret (header for Telegram, body field for VK). The VK gateway asks
``users.get`` for each new author; the local VK peer answers it, and CONNS
authors are looked up once each in the warm-up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import Proc, Window, bare, nats_server, service
from peers.vk_api import CallbackSender, FakeVk  # the local VK peer of the tests (common puts tests/ on the path)

from openlines import bus

CONNS = 32
SECONDS = 6.0
WARMUP = 1.0
ROUNDS = 2

TG_ACCOUNT, TG_TOKEN, TG_SECRET = "benchbot", "123456789:AAbench-token-for-the-benchmark-only", "bench-secret-0123-Kq7Zt9Wm"
VK_ACCOUNT, VK_GROUP, VK_TOKEN, VK_SECRET = "benchclub", 4242, "vk1.a.bench-token", "bench-vk-secret-0123-Kq7Zt9"


def telegram_update(update_id: int, user: int, text: str) -> bytes:
    """A private text message as the Bot API delivers it to a webhook."""
    person = {"id": user, "is_bot": False, "first_name": "Vera", "last_name": "Bench", "username": f"vera{user}"}
    message = {
        "message_id": update_id,
        "from": {**person, "language_code": "en"},
        "chat": {"id": user, "first_name": "Vera", "last_name": "Bench", "username": f"vera{user}", "type": "private"},
        "date": int(time.time()),
        "text": text,
    }
    return json.dumps({"update_id": update_id, "message": message}).encode()


async def load(url: str, label: str, bodies: Any, headers: dict[str, str], expect: str) -> dict[str, Any]:
    """POST ``bodies(i, n)`` from CONNS clients for WARMUP + SECONDS; count answers ``expect`` in the measured window."""
    window = Window(label, WARMUP, SECONDS, "req/s")

    async def one(i: int, http: aiohttp.ClientSession) -> None:
        for n in itertools.count(1):
            if not window.open():
                return
            t0 = time.monotonic()
            async with http.post(url, data=bodies(i, n), headers=headers) as resp:
                text = await resp.text()
            window.record(t0, time.monotonic(), resp.status == 200 and expect in text)

    async def clients() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as http:
            await asyncio.gather(*(one(i, http) for i in range(CONNS)))

    got = await window.run(clients())
    return {
        "req_per_s": got["rate"],
        "answered": got["done"],
        "errors": got["errors"],
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
    }


def _row(what: str, ours: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    return {
        "what": what,
        "ours_text": f"{ours['req_per_s']:,.0f} req/s (p99 {ours['p99_ms']:.1f} ms, errors {ours['errors']})",
        "ceiling_text": f"{ceiling['req_per_s']:,.0f} req/s (p99 {ceiling['p99_ms']:.1f} ms)",
        "ratio": ours["req_per_s"] / ceiling["req_per_s"] if ceiling["req_per_s"] else None,
        "target": ">= 0.9x",
    }


def gateway_settings(vk_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The Telegram and the VK gateway's settings for this bench: one bot, one group, VK's API at ``vk_url``."""
    bots = json.dumps([{"account": TG_ACCOUNT, "token": TG_TOKEN, "secret": TG_SECRET}])
    groups = json.dumps(
        [{"account": VK_ACCOUNT, "group_id": VK_GROUP, "token": VK_TOKEN, "secret": VK_SECRET, "confirmation": "x1"}]
    )
    return {"telegram_bots": bots}, {"vk_groups": groups, "vk_api_url": vk_url, "vk_file_hosts": vk_url}


async def run(workdir: Path) -> dict[str, Any]:
    vk = FakeVk(tokens={VK_TOKEN: VK_GROUP}, users={1000 + i: ("Vera", f"Bench{i}") for i in range(CONNS)})
    vk_url = await vk.start()
    ids = itertools.count(1)
    try:
        with nats_server(workdir, "p1w") as ns:
            nc = await bus.connect(ns.url, "bench-p1w", first_attempts=5)
            await bus.bootstrap(nc.jetstream())
            await nc.close()
            tg_env, vk_env = gateway_settings(vk_url)
            tg = service("gateway-telegram", "gateway_telegram", ns.url, workdir, **tg_env)
            vkg = service("gateway-vk", "gateway_vk", ns.url, workdir, **vk_env)
            tg_bare = bare("http-publish", ns.url, workdir)
            vk_bare = bare("vk-publish", ns.url, workdir)
            procs: list[Proc] = [tg, vkg, tg_bare, vk_bare]
            sender = CallbackSender(None, "", VK_GROUP, VK_SECRET)  # type: ignore[arg-type] - builds bodies only

            def tg_body(i: int, n: int) -> bytes:
                return telegram_update(next(ids), 1000 + i, f"hello number {n} from {i}")

            def vk_body(i: int, n: int) -> bytes:
                return json.dumps(sender.message_new(f"hello number {n} from {i}", from_id=1000 + i)).encode()

            tg_headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
            results: dict[str, dict[str, list[dict[str, Any]]]] = {
                "telegram": {"ours": [], "ceiling": []},
                "vk": {"ours": [], "ceiling": []},
            }
            try:
                await asyncio.gather(*(p.ready() for p in procs))
                targets = {
                    "telegram": [
                        (f"http://127.0.0.1:{tg_bare.port}/telegram/{TG_ACCOUNT}", "ceiling", tg_body, tg_headers, "true"),
                        (f"http://127.0.0.1:{tg.port}/telegram/{TG_ACCOUNT}", "ours", tg_body, tg_headers, ""),
                    ],
                    "vk": [
                        (f"http://127.0.0.1:{vk_bare.port}/vk/{VK_ACCOUNT}", "ceiling", vk_body, {}, "ok"),
                        (f"http://127.0.0.1:{vkg.port}/vk/{VK_ACCOUNT}", "ours", vk_body, {}, "ok"),
                    ],
                }
                for r in range(ROUNDS):  # bare, then ours, channel by channel: background load hits both alike
                    for ch, runs in targets.items():
                        for url, side, body, headers, expect in runs:
                            label = f"P1 {ch:8} {'bare' if side == 'ceiling' else 'gateway':7} round {r + 1}"
                            results[ch][side].append(await load(url, label, body, headers, expect))
            finally:
                for p in procs:
                    p.stop()
    finally:
        await vk.stop()
    best = {
        ch: {side: max(rounds, key=lambda x: x["req_per_s"]) for side, rounds in sides.items()} for ch, sides in results.items()
    }
    per_round = {
        ch: [o["req_per_s"] / b["req_per_s"] for o, b in zip(s["ours"], s["ceiling"], strict=True) if b["req_per_s"]]
        for ch, s in results.items()
    }
    notes = [
        f"{ch}: ratio of each round (gateway / bare right before it): " + ", ".join(f"{r:.2f}" for r in rs)
        for ch, rs in per_round.items()
    ]
    notes.append(f"load average after the runs {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    tg_best, vk_best = best["telegram"], best["vk"]
    rows = [
        _row("Telegram webhook updates/s (POST -> acked publish -> 200), log level info", tg_best["ours"], tg_best["ceiling"]),
        _row("VK Callback API events/s (POST -> acked publish -> ok), log level info", vk_best["ours"], vk_best["ceiling"]),
    ]
    worst = min(rows, key=lambda row: row["ratio"] or 0)
    return {
        "name": "p1_webhooks",
        "what": "Telegram and VK webhooks: POST -> acked JetStream publish -> answer",
        "setup": {"connections": CONNS, "seconds": SECONDS, "rounds": ROUNDS, "servers": "subprocesses, log level info"},
        "rounds": results,
        "notes": notes,
        "rows": rows,
        "ratio": worst["ratio"],
        "target": ">= 0.9x ceiling",
        "ours_text": worst["ours_text"],
        "ceiling_text": worst["ceiling_text"],
    }
