"""A timer due soon behind many pending ones: how late it fires, and what the pending ones cost the router.

    .venv/bin/python bench/timers_behind.py                      # 20,000 pending, three rounds, this checkout
    .venv/bin/python bench/timers_behind.py --before <commit>    # also that commit's router, round by round

``N`` auto-close timers due in an hour wait in ``OL_TIMER`` (as with that many open chats, or after a router
restart); one router replica starts; a settle timer due one second later is set, and the bench reads when it is
gone from the stream (fired and acked). Reported per run: how late it was after its due time, the router's
and nats-server's CPU seconds from the router's start until then, and what the router still holds in flight.
A timer is set the way the router of each run sets it: for this checkout with ``router.timers.schedule``
(scheduled in the server, decision 039), for ``--before`` as a plain message on its fire subject (the earlier
form: delivered at once and nak'd until due). A diagnostic: not part of ``make bench``.
Writes ``bench/results/timers_behind.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import msgspec  # noqa: E402
from common import Proc, cpu_seconds, free_port, nats_server  # noqa: E402
from p3_in_hand import export_router  # noqa: E402
from support import pending_timers  # noqa: E402 - the count the timer tests wait on

from openlines import bus, subjects  # noqa: E402
from openlines.envelopes import MSG_ID_HEADER  # noqa: E402
from router.timers import Timer, schedule  # noqa: E402

N = 20_000
SOON = 1.0  # the short timer is due this long after it is set
DURABLE = "router-timers"


def router(url: str, workdir: Path, pythonpath: str | None) -> Proc:
    port = free_port()
    env = {"OPENLINES_NATS_URL": url, "OPENLINES_HTTP_PORT": str(port), "OPENLINES_LOG_LEVEL": "warning"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return Proc("router", [sys.executable, "-m", "router"], env, port, workdir / f"router-{port}.log", identity="router")


def idle(i: int, due: float) -> Timer:
    return Timer(kind="idle", target=f"s{i:06d}", due=due, token="t")


async def set_timer(js: Any, timer: Timer, scheduled: bool) -> None:
    if scheduled:
        await schedule(js, timer)
    else:  # the form before decision 039: a plain message the router's consumer naks until due
        await js.publish(subjects.timer(timer.kind, timer.target), msgspec.json.encode(timer), headers={MSG_ID_HEADER: timer.id})


async def one(label: str, pythonpath: str | None, workdir: Path, n: int) -> dict[str, Any]:
    scheduled = pythonpath is None
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    with nats_server(workdir, "nats") as ns:
        nc = await bus.connect(ns.url, "bench-timers", first_attempts=5)
        js = nc.jetstream()
        await bus.bootstrap(js)
        far = time.time() + 3600
        for k in range(0, n, 500):
            await asyncio.gather(
                *(
                    set_timer(js, Timer(kind="idle", target=f"s{i:06d}", due=far, token="t"), scheduled)
                    for i in range(k, min(n, k + 500))
                )
            )
        proc = router(ns.url, workdir, pythonpath)
        pids = {"router": proc.pid, "nats-server": ns.proc.pid if ns.proc else 0}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        try:
            await proc.ready(timeout=60)
            due = time.time() + SOON
            await set_timer(js, Timer(kind="settle", target="soon", due=due, token="t"), scheduled)
            while await pending_timers(nc, "settle", "soon"):  # noqa: ASYNC110 - polling the stream is the measurement
                await asyncio.sleep(0.01)
            late = time.time() - due
            cpu = {k: round(cpu_seconds(v) - cpu0[k], 2) for k, v in pids.items()}
            info = await js.consumer_info(subjects.STREAM_TIMER, DURABLE)
            result = {
                "label": label,
                "pending": n,
                "late_seconds": round(late, 3),
                "cpu_seconds": cpu,
                "router_in_flight": info.num_ack_pending,
                "not_yet_delivered": info.num_pending,
            }
        finally:
            proc.stop()
            await nc.close()
    print(
        f"  {label}: the timer due in {SOON:g} s fired {result['late_seconds']:.3f} s late; CPU s router "
        f"{result['cpu_seconds']['router']}, nats-server {result['cpu_seconds']['nats-server']}; in the router's "
        f"hands {result['router_in_flight']:,}, not yet delivered {result['not_yet_delivered']:,}",
        file=sys.stderr,
    )
    return result


async def main(n: int, rounds: int, before: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="timers-behind-") as tmp:
        work = Path(tmp)
        configs: list[tuple[str, str | None]] = [("this checkout", None)]
        if before:
            configs.append((before[:8], export_router(before, work / "before")))
        out = [await one(label, path, work / f"r{r}-{i}", n) for r in range(rounds) for i, (label, path) in enumerate(configs)]
    print(f"\n| router | pending timers | late (median of {rounds}) | every run | CPU s router + nats-server (median) |")
    print("|---|---|---|---|---|")
    for label, _ in configs:
        runs = [r for r in out if r["label"] == label]
        late = [r["late_seconds"] for r in runs]
        cpu_r = statistics.median(r["cpu_seconds"]["router"] for r in runs)
        cpu_n = statistics.median(r["cpu_seconds"]["nats-server"] for r in runs)
        every = ", ".join(f"{x:.3f}" for x in late)
        print(f"| {label} | {n:,} | {statistics.median(late):.3f} s | {every} | {cpu_r:.2f} + {cpu_n:.2f} |")
    result = {"name": "timers_behind", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": out}
    (HERE / "results" / "timers_behind.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=N)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="also run this commit's router (timers set in its form)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.pending, args.rounds, args.before)))
