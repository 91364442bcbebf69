"""P5, end to end: how long one routing decision takes in a running router as the line's operators
grow 10 -> 1,000 and the sessions stored grow 100 -> 100,000.

One nats-server, one router (``python -m router``), two lines: ``small`` (10 operators) and ``big``
(1,000 operators), everyone online with room. A decision = a new client's first message published
to ``OL_IN`` until its ``session_assigned`` event arrives, one at a time (latency, not throughput).
Measured with 100 sessions stored, then again after 100,000 more open sessions (of other clients,
on a third line) were written to ``ol-sessions``.

The "ceiling" is the smallest point (10 operators, 100 sessions): the ratio is the growth.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
from common import PY, Proc, Progress, free_port, nats_server, pct
from support import inbound  # the same first message the tests publish

from openlines import bus, subjects
from openlines.apply import apply
from openlines.commands import SetStatus, call
from openlines.envelopes import MSG_ID_HEADER, SessionEvent, encode, utcnow
from openlines.lines import parse
from openlines.state import Session

DECISIONS = 60  # per point, one at a time
BULK = 100_000
SIZES = {"small": 10, "big": 1000}


def lines_toml() -> str:
    out = []
    for line, n in SIZES.items():
        out += [f'[operators.{line}{i:04d}]\nname = "Operator {i}"\n' for i in range(n)]
    out.append('[operators.bulk0]\nname = "Bulk"\n')
    for line, n in {**SIZES, "bulk": 1}.items():
        ops = ", ".join(f'"{line}{i:04d}"' if line != "bulk" else '"bulk0"' for i in range(n))
        out.append(
            f'[[lines]]\nid = "{line}"\nname = "Line {line}"\n'
            f'channels = [{{ channel = "webchat", account = "{line}" }}]\n'
            f'[lines.queue]\nmode = "round_robin"\noperators = [{ops}]\nmax_chats_per_operator = 50\n'
        )
    return "\n".join(out)


async def decide(nc: Any, js: Any, line: str, tag: str, progress: Progress) -> list[float]:
    """Seconds per decision for DECISIONS new clients of ``line``, one after the other."""
    assigned: dict[str, asyncio.Future[None]] = {}
    dec = msgspec.json.Decoder(SessionEvent)

    async def on_event(msg: Any) -> None:
        ev = dec.decode(msg.data)
        fut = assigned.get(ev.chat_id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    sub = await nc.subscribe(subjects.event("session_assigned"), cb=on_event)
    await nc.flush()
    times: list[float] = []
    try:
        for i in range(DECISIONS):
            visitor = f"{tag}-{line}-{i:04d}"
            env = inbound(visitor, "hello", "1", account=line, name=f"Client {i}")
            fut = assigned[visitor] = asyncio.get_running_loop().create_future()
            t0 = time.perf_counter()
            await js.publish(subjects.inbound("webchat", line, visitor), encode(env), headers={MSG_ID_HEADER: env.id})
            await asyncio.wait_for(fut, timeout=30)
            times.append(time.perf_counter() - t0)
            progress.show(f"{tag}: {line} line, {i + 1}/{DECISIONS} decisions, p50 {pct(times, 50) * 1e3:.2f} ms")
    finally:
        await sub.unsubscribe()
    return times


async def seed_sessions(js: Any, n: int, progress: Progress) -> None:
    """``n`` open sessions of other clients, as the router would have stored them."""
    kv = await js.key_value(subjects.KV_SESSIONS)
    now = utcnow()
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(n, start + 1000)):
            s = Session(
                id=f"sbulk{i:07d}",
                line_id="bulk",
                entry_line_id="bulk",
                client_id=f"cbulk{i:07d}",
                channel="webchat",
                account="bulk",
                chat_id=f"bulk{i}",
                chat_key=f"bulk{i}",
                status="answered",
                operator_id="bulk0",
                opened_at=now,
            )
            batch.append(kv.put(s.id, msgspec.json.encode(s)))
        await asyncio.gather(*batch)
        progress.show(f"storing {n:,} open sessions: {start + 1000:,}")


async def run(workdir: Path) -> dict[str, Any]:
    progress = Progress("P5 router")
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    points: dict[str, list[float]] = {}
    with nats_server(workdir, "p5") as ns:
        nc = await bus.connect(ns.url, "bench-p5", first_attempts=5)
        js = nc.jetstream()
        await bus.bootstrap(js)
        await apply(await bus.Buckets(js).open(), parse(lines_toml()))
        port = free_port()
        env = {"OPENLINES_NATS_URL": ns.url, "OPENLINES_HTTP_PORT": str(port)}
        router = Proc("router", [PY, "-m", "router"], env, port, workdir / "router.log", identity="router")
        try:
            await router.ready(timeout=60)
            ops = [f"{line}{i:04d}" for line, n in SIZES.items() for i in range(n)]
            for k in range(0, len(ops), 50):
                progress.show(f"setting {len(ops):,} operators online: {k:,}")
                await asyncio.gather(*(call(nc, "status", SetStatus(operator_id=o, status="online")) for o in ops[k : k + 50]))
            await decide(nc, js, "small", "warm-up", progress)
            for line in SIZES:
                points[f"{line}/100"] = await decide(nc, js, line, "s100", progress)
            await seed_sessions(js, BULK, progress)
            for line in SIZES:
                points[f"{line}/{BULK}"] = await decide(nc, js, line, f"s{BULK}", progress)
        finally:
            router.stop()
            await nc.close()
    p50 = {k: pct(v, 50) * 1e3 for k, v in points.items()}
    base = p50["small/100"]
    rows = [
        {
            "what": f"decision p50 end to end, {what}",
            "ours_text": f"{p50[key]:.2f} ms",
            "ceiling_text": f"{base:.2f} ms (10 operators, 100 sessions)",
            "ratio": p50[key] / base,
            "target": "growth <= 1.5x",
        }
        for key, what in (
            ("big/100", "operators 10 -> 1,000"),
            (f"small/{BULK}", "sessions 100 -> 100,000"),
            (f"big/{BULK}", "both"),
        )
    ]
    progress.done("; ".join(f"{r['what'].split(', ')[1]} x{r['ratio']:.2f}" for r in rows))
    return {
        "name": "p5_router",
        "what": "routing decision time in a running router vs size",
        "rows": rows,
        "p50_ms": p50,
        "p99_ms": {k: pct(v, 99) * 1e3 for k, v in points.items()},
        "decisions_per_point": DECISIONS,
    }
