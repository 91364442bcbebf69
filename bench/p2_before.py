"""P2 of this checkout against an earlier commit's router and ``openlines`` packages, in interleaved rounds.

    .venv/bin/python bench/p2_before.py <commit>               # three rounds each
    .venv/bin/python bench/p2_before.py <commit> --rounds 5

Each round runs ``p2_latency.run`` (its ceiling, then the services) for this checkout and then for
``<commit>``, whose router and ``openlines`` packages are exported to a temporary directory and put first on
every service's ``PYTHONPATH`` (the desk and the gateway run this checkout's code on that ``openlines``).
Prints every round and the medians; a diagnostic outside ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import p2_latency  # noqa: E402
from p3_in_hand import export_router  # noqa: E402


async def main(before: str, rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="p2-before-") as tmp:
        work = Path(tmp)
        configs = [("this checkout", None), (before[:8], export_router(before, work / "before"))]
        out: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in configs}
        saved = os.environ.get("PYTHONPATH")
        try:
            for r in range(rounds):
                for label, path in configs:
                    os.environ.pop("PYTHONPATH", None)
                    if path:
                        os.environ["PYTHONPATH"] = path  # the services inherit the environment
                    res = await p2_latency.run(work / f"{r}-{label[:8]}")
                    ours, ceiling = res["ours"], res["ceiling"]
                    out[label].append((ours["p50_ms"], ours["p99_ms"], ours["p99_ms"] / ceiling["p99_ms"]))
                    print(
                        f"{label}, round {r + 1}: p50 {ours['p50_ms']:.2f} ms, p99 {ours['p99_ms']:.2f} ms "
                        f"({out[label][-1][2]:.2f}x the ceiling's)",
                        flush=True,
                    )
        finally:
            os.environ.pop("PYTHONPATH", None)
            if saved is not None:
                os.environ["PYTHONPATH"] = saved
    print("\n| router | p50 | p99 | p99 / ceiling (median, every round) |\n|---|---|---|---|")
    for label, runs in out.items():
        every = ", ".join(f"{x[2]:.2f}" for x in runs)
        p50, p99, ratio = (statistics.median(x[i] for x in runs) for i in range(3))
        print(f"| {label} | {p50:.2f} ms | {p99:.2f} ms | {ratio:.2f}x ({every}) |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.before, args.rounds)))
