"""Run the benchmarks of issue 10 and write bench/results/<name>.json and bench/RESULTS.md.

    .venv/bin/python bench/run.py            # all of them, three rounds (about 15 minutes)
    .venv/bin/python bench/run.py p1 p5      # some of them
    .venv/bin/python bench/run.py --runs 1   # one round only

Every benchmark is run ``--runs`` times (3 by default), in interleaved rounds
(all of them once, then all again), so a burst of noise on a shared machine
hits one round of each rather than every round of one. A row reports the
median run's figures and lists the ratio of every run: on a 2-core machine
one run's ratio moves by 10-30 %, the median of three much less.

Each benchmark measures our path and its bare ceiling in the same run, on
the same machine, over loopback only, and reports the ratio.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402

BENCHES = {
    "p1": "p1_ingest",
    "p1w": "p1_webhooks",  # the Telegram and VK webhooks
    "p2": "p2_latency",
    "p3": "p3_routing",
    "p4": "p4_sockets",
    "p5": "p5_core",
    "p5r": "p5_router",  # P5 end to end in a running router
}
RESULTS = HERE / "results"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_report(facts: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/run.py`). Every ceiling is measured in the same run, "
        "on the same machine, over loopback.",
        "",
        "## Machine",
        "",
        f"- CPU: {facts['cpu']} ({facts['cores']} cores), {facts['mem_mib']:,} MiB RAM",
        f"- Python {facts['python']}, {facts['nats_server']}",
        f"- {facts['platform']}; load average at start {', '.join(f'{x:.2f}' for x in facts['load_avg_at_start'])}, "
        f"at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())} (2-core machines are noisy: compare ratios, not figures)",
        f"- Date: {facts['date']}",
        "",
        "## Figures",
        "",
        "Where a bench ran more than once, `ratio` is the median run's and `every run` lists them all "
        "(the figures of `ours` and `ceiling` are the median run's).",
        "",
        "| bench | what | ours | ceiling | ratio | every run | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, res in results.items():
        when = res.get("machine", {}).get("date", "")
        if when and when != facts["date"]:
            res = {**res, "what": f"{res.get('what', '')} (measured {when})"}
            res["rows"] = [{**row, "what": f"{row.get('what', '')} (measured {when})"} for row in res.get("rows", [])]
        if "error" in res:
            lines.append(f"| {key.upper()} | {res.get('what', '')} | failed: {res['error'][:120]} | | | | |")
            continue
        for row in res.get("rows", [res]):
            every = row.get("runs")
            lines.append(
                f"| {key.upper()} | {row.get('what', res.get('what', ''))} | {row.get('ours_text', '')} | "
                f"{row.get('ceiling_text', '')} | {fmt(row['ratio']) if row.get('ratio') is not None else ''} | "
                f"{', '.join(fmt(v) for v in every) if every else ''} | "
                f"{row.get('target', res.get('target', ''))} |"
            )
    details = [line for res in results.values() for line in [*res.get("details", []), ""] if res.get("details")]
    if details:
        lines += ["", "## Details", "", *details]
    lines += ["", "## Notes", ""]
    for key, res in results.items():
        for note in res.get("notes", []):
            lines.append(f"- **{key.upper()}**: {note}")
    notes_file = HERE / "FINDINGS.md"
    if notes_file.exists():
        lines += ["", notes_file.read_text().strip()]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


def _row_value(row: dict[str, Any]) -> float | None:
    value = row.get("ratio")
    return row.get("value") if value is None else value


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of a bench: row by row, the median run's row,
    with every run's ratio (or value) in ``runs``; the rest (setup, details,
    notes) is the run that was the median of the first row."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    if len(good) == 1:
        return good[0]

    def middle(candidates: list[dict[str, Any]], index: int) -> dict[str, Any]:
        ranked = sorted(candidates, key=lambda r: _row_value(r["rows"][index]) or 0.0)
        return ranked[(len(ranked) - 1) // 2]

    shapes = {len(r.get("rows", [])) for r in good}
    if len(shapes) != 1 or not next(iter(shapes)):
        return good[-1]
    base = dict(middle(good, 0))
    rows = []
    for i in range(len(base["rows"])):
        values = [_row_value(r["rows"][i]) for r in good]
        row = dict(middle(good, i)["rows"][i])
        if all(v is not None for v in values):
            row["runs"] = values
        rows.append(row)
    base["rows"] = rows
    base["every_run"] = [{k: v for k, v in r.items() if k != "machine"} for r in runs]
    if len(good) < len(runs):
        base.setdefault("notes", []).append(f"{len(runs) - len(good)} of {len(runs)} runs failed; the median is of the rest")
    return base


async def main(selected: list[str], rounds: int = 3) -> int:
    RESULTS.mkdir(exist_ok=True)
    facts = machine()
    sys.stderr.write(f"bench: {facts['cpu']} x{facts['cores']}, Python {facts['python']}, {facts['nats_server']}\n")
    results: dict[str, dict[str, Any]] = {}
    # Keep results of benchmarks not run this time, so a partial run still gives a full table.
    for key, mod in BENCHES.items():
        old = RESULTS / f"{mod}.json"
        if key not in selected and old.exists():
            results[key] = json.loads(old.read_text())
    failed = 0
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in selected}
    with tempfile.TemporaryDirectory(prefix="openlines-bench-") as tmp:
        for n in range(1, rounds + 1):
            for key in selected:
                mod_name = BENCHES[key]
                sys.stderr.write(f"== {key.upper()} ({mod_name}), round {n} of {rounds}\n")
                t0 = time.monotonic()
                try:
                    module = importlib.import_module(mod_name)
                    res = await module.run(Path(tmp) / f"{key}-{n}")
                except Exception as exc:
                    failed += 1
                    traceback.print_exc()
                    res = {"name": mod_name, "error": f"{type(exc).__name__}: {exc}"}
                res["seconds"] = round(time.monotonic() - t0, 1)
                res["machine"] = facts
                runs[key].append(res)
                results[key] = median_of(runs[key])
                # Written after every run, so a stopped run keeps what it measured.
                (RESULTS / f"{mod_name}.json").write_text(json.dumps(results[key], indent=2, default=str) + "\n")
                sys.stderr.write(f"   {key.upper()} took {res['seconds']} s\n")
    ordered = {k: results[k] for k in BENCHES if k in results}
    write_report(facts, ordered)
    sys.stderr.write(f"wrote {RESULTS}/*.json and {HERE / 'RESULTS.md'}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the benchmarks against their bare ceilings.")
    parser.add_argument("bench", nargs="*", help=f"which ones (default all): {', '.join(BENCHES)}")
    parser.add_argument("--runs", type=int, default=3, help="rounds of each; the report gives the median (default 3)")
    opts = parser.parse_args()
    args = [a.lower() for a in opts.bench] or list(BENCHES)
    unknown = [a for a in args if a not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if opts.runs < 1:
        raise SystemExit("--runs must be at least 1")
    raise SystemExit(asyncio.run(main(args, opts.runs)))
