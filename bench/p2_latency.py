"""P2: end-to-end latency visitor -> operator at a fixed rate.

Ours: a visitor's WebSocket message to the webchat gateway -> OL_IN -> router
-> transcript entry -> desk -> the operator's desk WebSocket (signed in via
/login). The chats are assigned to the operator first; then RATE messages/s
are sent round-robin over VISITORS sockets for SECONDS and each one is timed
until its transcript frame reaches the desk socket.

Ceiling: the same rate of acked JetStream publishes received by a push consumer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
from common import COOKIE_SECRET, DEMO_HASH, WEBCHAT_SECRET, Progress, nats_server, pct, service

from openlines import bus
from openlines.apply import apply
from openlines.commands import SetStatus, call
from openlines.lines import parse
from openlines.natsauth import NatsAuth

RATE = 50.0
SECONDS = 8.0
VISITORS = 10

LINES = f"""
[operators.anna]
name = "Anna"
password_hash = "{DEMO_HASH}"
roles = ["operator"]
permissions = ["openlines"]

[[lines]]
id = "support"
name = "Support"
channels = [{{ channel = "webchat", account = "bench" }}]

[lines.queue]
mode = "round_robin"
operators = ["anna"]
max_chats_per_operator = 1000
"""


async def paced(n: int, rate: float, fire: Any, progress: Progress, done: Any) -> None:
    t0 = time.monotonic()
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i)))
        progress.show(f"{i + 1}/{n} sent, {done()} received")
    await asyncio.gather(*tasks)


async def ceiling(url: str) -> dict[str, Any]:
    progress = Progress("P2 bare publish -> push consumer")
    admin = NatsAuth.from_env().connect_options()  # a stream of its own: the admin identity
    pub = await nats.connect(url, name="bench-p2-pub", **admin)
    sub_nc = await nats.connect(url, name="bench-p2-sub", **admin)
    js = pub.jetstream()
    await js.add_stream(name="BENCHP2", subjects=["bench.p2.>"])
    sent: dict[str, float] = {}
    lat: list[float] = []
    got = asyncio.Event()
    n = int(RATE * SECONDS)

    async def on_msg(msg: Any) -> None:
        t = time.monotonic()
        key = msg.data.decode()
        if key in sent:
            lat.append(t - sent[key])
        if len(lat) >= n:
            got.set()

    await sub_nc.jetstream().subscribe("bench.p2.>", cb=on_msg, ordered_consumer=True)
    await sub_nc.flush()

    async def fire(i: int) -> None:
        key = f"m{i}"
        sent[key] = time.monotonic()
        await js.publish(f"bench.p2.{i % VISITORS}", key.encode(), headers={"Nats-Msg-Id": key})

    await paced(n, RATE, fire, progress, lambda: len(lat))
    await asyncio.wait_for(got.wait(), timeout=30)
    await pub.close()
    await sub_nc.close()
    progress.done(f"p50 {pct(lat, 50) * 1e3:.2f} ms, p99 {pct(lat, 99) * 1e3:.2f} ms ({len(lat)} samples)")
    return {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "max_ms": max(lat) * 1e3, "samples": len(lat)}


async def sign_in(http: aiohttp.ClientSession, base: str) -> None:
    form = await (await http.get(f"{base}/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, form[:500]
    r = await http.post(
        f"{base}/login", data={"login": "anna", "password": "demo", "csrf_token": token.group(1)}, allow_redirects=False
    )
    assert r.status == 303, (r.status, await r.text())


async def ours(url: str, workdir: Path) -> dict[str, Any]:
    progress = Progress("P2 visitor -> operator")
    nc = await bus.connect(url, "bench-p2", first_attempts=5)
    await bus.bootstrap(nc.jetstream())
    await apply(await bus.Buckets(nc.jetstream()).open(), parse(LINES))
    procs = [
        service("router", "router", url, workdir),
        service("desk", "desk", url, workdir, cookie_secret=COOKIE_SECRET),
        service("gateway-webchat", "gateway_webchat", url, workdir, webchat_secret=WEBCHAT_SECRET),
    ]
    _router, desk, gw = procs
    try:
        await asyncio.gather(*(p.ready() for p in procs))
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        desk_base = f"http://127.0.0.1:{desk.port}"
        seen: dict[str, float] = {}
        n = int(RATE * SECONDS)
        all_seen = asyncio.Event()
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as op_http,
            aiohttp.ClientSession() as vis_http,
        ):
            await sign_in(op_http, desk_base)
            desk_ws = await op_http.ws_connect(f"{desk_base}/ws", headers={"Origin": desk_base})

            async def read_desk() -> None:
                async for msg in desk_ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    t = time.monotonic()
                    frame = json.loads(msg.data)
                    if frame.get("type") == "message":
                        seen.setdefault(frame.get("text", ""), t)
                        if sum(1 for k in seen if k.startswith("m-")) >= n:
                            all_seen.set()

            reader = asyncio.create_task(read_desk())
            visitors = []
            for _ in range(VISITORS):
                ws = await vis_http.ws_connect(f"http://127.0.0.1:{gw.port}/ws/bench")
                await ws.send_str('{"type":"hello"}')
                assert json.loads((await ws.receive()).data)["type"] == "welcome"
                visitors.append(ws)

            async def drain(ws: Any) -> None:
                async for _ in ws:
                    pass

            drains = [asyncio.create_task(drain(ws)) for ws in visitors]
            # Warm up: each visitor's chat is opened, assigned to anna and its messages reach her desk.
            for k in range(200):
                missing = [v for v in range(VISITORS) if not any(t.startswith(f"w-{v}-") for t in seen)]
                if not missing:
                    break
                for v in missing:
                    await visitors[v].send_json({"type": "message", "id": f"w-{v}-{k}", "text": f"w-{v}-{k}"})
                progress.show(f"warming up: {VISITORS - len(missing)}/{VISITORS} chats live at the desk", force=True)
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("chats did not reach the desk during warm-up")
            sent: dict[str, float] = {}

            async def fire(i: int) -> None:
                key = f"m-{i}"
                sent[key] = time.monotonic()
                await visitors[i % VISITORS].send_json({"type": "message", "id": key, "text": key})

            await paced(n, RATE, fire, progress, lambda: sum(1 for k in seen if k.startswith("m-")))
            try:
                await asyncio.wait_for(all_seen.wait(), timeout=30)
            except TimeoutError:
                pass
            lat = [seen[k] - t0 for k, t0 in sent.items() if k in seen]
            lost = len(sent) - len(lat)
            for ws in visitors:
                await ws.close()
            await desk_ws.close()
            reader.cancel()
            for d in drains:
                d.cancel()
    finally:
        for p in reversed(procs):
            p.stop()
        await nc.close()
    progress.done(f"p50 {pct(lat, 50) * 1e3:.2f} ms, p99 {pct(lat, 99) * 1e3:.2f} ms ({len(lat)} samples, {lost} not seen)")
    return {
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
        "samples": len(lat),
        "not_seen": lost,
    }


async def run(workdir: Path) -> dict[str, Any]:
    with nats_server(workdir, "p2") as ns:
        base = await ceiling(ns.url)
        mine = await ours(ns.url, workdir)
    return {
        "name": "p2_latency",
        "what": f"latency visitor -> operator socket at {RATE:.0f} msg/s",
        "setup": {"rate_per_s": RATE, "seconds": SECONDS, "visitors": VISITORS, "services": "subprocesses, log level info"},
        "ours": mine,
        "ceiling": base,
        "rows": [
            {
                "what": f"p50 latency visitor -> operator at {RATE:.0f} msg/s",
                "ours_text": f"{mine['p50_ms']:.2f} ms",
                "ceiling_text": f"{base['p50_ms']:.2f} ms",
                "ratio": mine["p50_ms"] / base["p50_ms"],
                "target": "",
            },
            {
                "what": f"p99 latency visitor -> operator at {RATE:.0f} msg/s",
                "ours_text": f"{mine['p99_ms']:.2f} ms",
                "ceiling_text": f"{base['p99_ms']:.2f} ms",
                "ratio": mine["p99_ms"] / base["p99_ms"],
                "target": "p99 <= 3x ceiling",
            },
        ],
    }
