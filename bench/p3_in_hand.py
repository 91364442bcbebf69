"""P3 with one router replica at several ``OPENLINES_IN_HAND`` settings, against the get + CAS + publish ceiling.

    .venv/bin/python bench/p3_in_hand.py                       # 1 and 32 in hand, three rounds
    .venv/bin/python bench/p3_in_hand.py --in-hand 1 16 32 --rounds 5
    .venv/bin/python bench/p3_in_hand.py --before <commit>     # also that commit's router, 32 in hand

Each round runs the ceiling (``p3_routing.cas_loop``) and then one replica per setting
(``p3_routing.routing(1)``, N new chats), so every setting meets the same moment of a shared machine's
load; the ratio of a setting is its decisions/s over the ceiling of its round, reported per round and as
the median. ``--before`` runs the router and ``openlines`` packages of an earlier commit (exported to a
temporary directory, first on the router's ``PYTHONPATH``) beside the current ones; the streams are the
current commit's. Writes ``bench/results/p3_in_hand.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import p3_routing  # noqa: E402
from common import ROOT  # noqa: E402


def export_router(commit: str, into: Path) -> str:
    """The router package and the shared ``openlines`` package as they were at ``commit``, for a PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "services/router/router", "shared/openlines"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return os.pathsep.join((str(into / "services" / "router"), str(into / "shared")))


async def one(label: str, in_hand: int, pythonpath: str | None, workdir: Path) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in ("OPENLINES_IN_HAND", "PYTHONPATH")}
    os.environ["OPENLINES_IN_HAND"] = str(in_hand)  # the router subprocesses inherit the environment
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        return {"label": label, "in_hand": in_hand, **await p3_routing.routing(1, workdir)}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def main(in_hands: list[int], rounds: int, before: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="p3-in-hand-") as tmp:
        work = Path(tmp)
        configs: list[tuple[str, int, str | None]] = [(f"{n} in hand", n, None) for n in in_hands]
        if before:
            configs.append((f"{before[:8]}, 32 in hand", 32, export_router(before, work / "before")))
        out: list[dict[str, Any]] = []
        for r in range(rounds):
            cas = await p3_routing.cas_loop(work / f"cas{r}")
            load = os.getloadavg()[0]
            for label, n, path in configs:
                run = await one(label, n, path, work / f"r{r}-{n}-{label[:8].strip()}")
                run.update(round=r + 1, ceiling=cas["turns_per_s"], ratio=run["decisions_per_s"] / cas["turns_per_s"])
                run["load"] = load
                out.append(run)
    print(
        "\n| setting | round | decisions/s | ceiling | ratio | KV ops | CPU ms/decision router + nats-server "
        "| consumer looks (read by seq) / held back | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in out:
        ms, order = run["cpu_ms_per_decision"], run["order"]
        print(
            f"| {run['label']} | {run['round']} | {run['decisions_per_s']:,.0f} | {run['ceiling']:,.0f} | "
            f"{run['ratio']:.2f}x | {run['kv_ops_per_decision']:.2f} | {ms['routers']:.2f} + {ms['nats-server']:.2f} | "
            f"{order['partition_reads']:.0f} ({order['read_by_sequence']:.0f}) / {order['held_back']:.0f} | {run['load']:.1f} |"
        )
    print()
    for label, _, _ in configs:
        ratios = [run["ratio"] for run in out if run["label"] == label]
        cpu = [run["cpu_ms_per_decision"]["routers"] for run in out if run["label"] == label]
        print(f"{label}: median ratio {statistics.median(ratios):.2f}x, router CPU {statistics.median(cpu):.2f} ms/decision")
    result = {"name": "p3_in_hand", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": out}
    (HERE / "results" / "p3_in_hand.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-hand", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="also run this commit's router with 32 in hand")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.in_hand, args.rounds, args.before)))
