"""P3: routing decisions/s against a bare compare-and-set ceiling, and how it scales with router replicas.

50 lines x 20 operators (all online, capacity 10 each). N new-client Inbound
envelopes (spread over the 50 lines) are published as gateways would; the
clock runs until every session has been assigned (``session_assigned``
events). Routers run as subprocesses (``bench/router_counted.py`` = ``python
-m router`` plus a count of its KV operations and compare-and-set conflicts),
against a fresh nats-server per configuration, with 1, 2 and 4 replicas.

Ceiling: a fixed loop of what a routing decision cannot do without - one KV
get, one compare-and-set on what it read, one acknowledged stream publish -
``subjects.PARTITIONS`` at a time (a replica consumes that many partitions,
one message in hand each), in one process on a fresh nats-server. One loop
turn stands for one decision, so every round trip the router adds shows in
the ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from common import BENCH, PY, Proc, Progress, cpu_seconds, free_port, nats_server, wait_until
from nats.js import JetStreamContext
from support import inbound  # the same first message the tests publish

from openlines import bus, subjects
from openlines.apply import apply
from openlines.commands import SetStatus, call
from openlines.envelopes import MSG_ID_HEADER, SessionEvent, encode
from openlines.lines import parse

LINES_N = 50
OPS_PER_LINE = 20
CAPACITY = 10
N = 1000
TIMEOUT = 60.0
CAS_SECONDS = 4.0
CAS_INFLIGHT = subjects.PARTITIONS
REPLICAS = (1, 2, 4)
ROUTING_BUCKETS = ("ol-sessions", "ol-operators", "ol-clients")  # the leases (ol-router) are not routing
# The scaling runs again with every replica held to this share of one core: 1, 2 and 4 replicas then have the
# cores they need on a 2-core machine (4 x 0.25 + nats-server + the load fits), so the speed-up shows what the
# design allows, not how many cores the machine has left.
CPU_BUDGET = 0.25
BUDGET_N = 3000  # new chats per budgeted run (a budgeted replica decides about 500/s)
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")  # the cgroup v1 cpu controller (CFS quota per group)
CGROUP_V2 = Path("/sys/fs/cgroup")  # the unified hierarchy (cpu.max per group)


class CpuBudget:
    """One cgroup per router replica, its CFS quota ``share`` of one core; None where no cgroup can be made
    (not root, or no cpu controller to delegate): the budgeted runs are then left out, saying why."""

    PERIOD_US = 100_000

    def __init__(self, root: Path, v2: bool, share: float) -> None:
        self.root, self.v2, self.share = root, v2, share
        self.made: list[Path] = []

    @classmethod
    def available(cls, share: float) -> tuple[CpuBudget | None, str]:
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            budget = cls(CGROUP_V1, False, share)
        elif "cpu" in _read(CGROUP_V2 / "cgroup.subtree_control").split():
            budget = cls(CGROUP_V2, True, share)
        else:
            return None, "no cgroup cpu controller (v1 cpu, or v2 with cpu delegated) on this machine"
        try:
            budget.remove(budget.group("probe"))
        except OSError as exc:
            return None, f"cannot make a cgroup here: {exc}"
        return budget, ""

    def group(self, name: str) -> Path:
        path = self.root / f"openlines-bench-{os.getpid()}-{name}"
        path.mkdir()
        quota = int(self.PERIOD_US * self.share)
        if self.v2:
            (path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        return path

    def hold(self, name: str, pid: int) -> None:
        path = self.group(name)
        self.made.append(path)
        (path / "cgroup.procs").write_text(str(pid))

    def remove(self, group: Path) -> None:
        """Remove a group (a process still in it is moved back to the root first)."""
        for pid in _read(group / "cgroup.procs").split():
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            group.rmdir()

    def close(self) -> None:
        """Remove every group ``hold`` made."""
        for group in self.made:
            self.remove(group)
        self.made.clear()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def lines_toml() -> str:
    out = []
    for i in range(LINES_N * OPS_PER_LINE):
        out.append(f'[operators.op{i:04d}]\nname = "Operator {i}"\n')
    for ln in range(LINES_N):
        ops = ", ".join(f'"op{ln * OPS_PER_LINE + k:04d}"' for k in range(OPS_PER_LINE))
        out.append(
            f'[[lines]]\nid = "l{ln:02d}"\nname = "Line {ln}"\n'
            f'channels = [{{ channel = "webchat", account = "a{ln:02d}" }}]\n'
            f'[lines.queue]\nmode = "round_robin"\noperators = [{ops}]\nmax_chats_per_operator = {CAPACITY}\n'
        )
    return "\n".join(out)


def router(url: str, workdir: Path, idx: int) -> Proc:
    port = free_port()
    env = {
        "OPENLINES_NATS_URL": url,
        "OPENLINES_HTTP_PORT": str(port),
        "BENCH_COUNT_FILE": str(workdir / f"router{idx}.counts"),
    }
    return Proc(
        f"router{idx}", [PY, str(BENCH / "router_counted.py")], env, port, workdir / f"router{idx}-{port}.log", identity="router"
    )


def kv_ops(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.split(":")[0] in ("get", "put", "update", "create", "delete"))


def cas_writes(counts: dict[str, int]) -> int:
    return sum(counts.get(f"{op}:{b}", 0) for op in ("update", "create") for b in ROUTING_BUCKETS)


def conflicts(counts: dict[str, int]) -> int:
    return sum(counts.get(f"conflict:{b}", 0) for b in ROUTING_BUCKETS)


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) - a.get(k, 0)}


async def snapshot(procs: list[Proc], workdir: Path, n: int) -> dict[str, int]:
    total: dict[str, int] = {}
    for i, p in enumerate(procs):
        path = workdir / f"router{i}.counts.{n}"
        p.proc.send_signal(signal.SIGUSR2)  # SIGUSR1 is the services' task dump
        await wait_until(path.exists, 10, f"counts of router{i}")
        await asyncio.sleep(0.05)  # the file is written in one go; give it a moment to be closed
        for k, v in json.loads(path.read_text()).items():
            total[k] = total.get(k, 0) + v
    return total


async def owned(procs: list[Proc]) -> list[int]:
    """Inbound partitions each replica consumes, from its /metrics."""
    out = []
    async with aiohttp.ClientSession() as http:
        for p in procs:
            async with http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
                text = await r.text()
            m = re.search(r"^openlines_router_partitions_owned (\S+)$", text, re.M)
            out.append(int(float(m.group(1))) if m else -1)
    return out


async def order_counts(procs: list[Proc]) -> dict[str, float]:
    """What keeping each client's messages in order cost (decision 033), summed over the replicas' /metrics:
    looks at a partition consumer beyond the first of each partition mean a delivery went to another holder."""
    names = {
        "partition_reads": "openlines_router_inbound_partition_reads_total",
        "read_by_sequence": "openlines_router_inbound_read_by_sequence_total",
        "held_back": "openlines_router_inbound_held_back_total",
    }
    out = dict.fromkeys(names, 0.0)
    async with aiohttp.ClientSession() as http:
        for p in procs:
            async with http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
                text = await r.text()
            for key, name in names.items():
                m = re.search(rf"^{name} (\S+)$", text, re.M)
                out[key] += float(m.group(1)) if m else 0.0
    return out


async def sla_behind(js: JetStreamContext, progress: Progress, timeout: float = 60.0) -> dict[str, float]:
    """The transcript entries the routers' SLA watch (``router-sla`` on OL_HIST) had not yet taken when the last
    chat was assigned, and the seconds it then took to take them all: its work is part of a router's, but not
    on the decision's path (no line here has SLA targets)."""
    t0 = time.monotonic()
    behind = -1
    while time.monotonic() - t0 < timeout:
        info = await js.consumer_info(subjects.STREAM_HIST, subjects.ROUTER_SLA_CONSUMER)
        left = (info.num_pending or 0) + (info.num_ack_pending or 0)
        behind = left if behind < 0 else behind
        if not left:
            break
        progress.show(f"SLA watch: {left:,} transcript entries to go", force=True)
        await asyncio.sleep(0.1)
    return {"entries_behind": behind, "catch_up_seconds": round(time.monotonic() - t0, 2)}


async def settled(procs: list[Proc], progress: Progress, stable_for: float = 5.0, timeout: float = 45.0) -> float:
    """Wait until the partitions are split evenly and stay so for ``stable_for`` s (see the P3 note on
    partitions.py: a joining replica makes the first lose its leases ~14 s later). Returns seconds waited."""
    t0 = time.monotonic()
    fair = subjects.PARTITIONS // len(procs)
    since: float | None = None
    while time.monotonic() - t0 < timeout:
        shares = await owned(procs)
        now = time.monotonic()
        if all(x == fair for x in shares):
            since = since or now
            if now - since >= stable_for:
                return now - t0
        else:
            since = None
        progress.show(f"waiting for the partitions to settle: {shares}", force=True)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"router partitions did not settle in {timeout}s")


async def routing(replicas: int, workdir: Path, budget: CpuBudget | None = None, n: int | None = None) -> dict[str, Any]:
    """``budget``: each replica held to its share of a core once it is up; ``n`` new chats (default N)."""
    n = n or N
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    held = f", each held to {budget.share:g} of a core" if budget else ""
    progress = Progress(f"P3 {replicas} router replica{'s' if replicas > 1 else ''}{held}")
    with nats_server(workdir, f"p3-{replicas}") as ns:
        nc = await bus.connect(ns.url, "bench-p3", first_attempts=5)
        js = nc.jetstream()
        await bus.bootstrap(js)
        await apply(await bus.Buckets(js).open(), parse(lines_toml()))
        procs = [router(ns.url, workdir, i) for i in range(replicas)]
        try:
            await asyncio.gather(*(p.ready(timeout=60) for p in procs))
            if budget is not None:  # once up: a start-up held to a quarter of a core would take a minute
                for i, p in enumerate(procs):
                    budget.hold(f"router{i}", p.pid)
            progress.show("setting 1,000 operators online", force=True)
            ops = [f"op{i:04d}" for i in range(LINES_N * OPS_PER_LINE)]
            for k in range(0, len(ops), 50):
                await asyncio.gather(*(call(nc, "status", SetStatus(operator_id=o, status="online")) for o in ops[k : k + 50]))
            settle = await settled(procs, progress) if replicas > 1 else 0.0
            assigned: set[str] = set()
            done = asyncio.Event()
            dec = msgspec.json.Decoder(SessionEvent)

            async def on_event(msg: Any) -> None:
                ev = dec.decode(msg.data)
                if ev.session_id:
                    assigned.add(ev.session_id)
                if len(assigned) >= n:
                    done.set()

            await nc.subscribe(subjects.event("session_assigned"), cb=on_event)
            await nc.flush()
            before = await snapshot(procs, workdir, 1)
            envs = []
            for i in range(n):
                acc = f"a{i % LINES_N:02d}"
                visitor = f"v{i:06d}"
                envs.append(inbound(visitor, "hello", "1", account=acc, name=f"Client {i}"))
            pids = {"nats-server": ns.proc.pid if ns.proc else 0, **{p.name: p.pid for p in procs}}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
            t0 = time.monotonic()
            for k in range(0, n, 200):
                await asyncio.gather(
                    *(
                        js.publish(subjects.inbound(e.channel, e.account, e.chat_id), encode(e), headers={MSG_ID_HEADER: e.id})
                        for e in envs[k : k + 200]
                    )
                )
            published = time.monotonic() - t0
            deadline = t0 + TIMEOUT
            while not done.is_set() and time.monotonic() < deadline:
                el = time.monotonic() - t0
                progress.show(f"{len(assigned)}/{n} assigned, {len(assigned) / el:,.0f} decisions/s")
                try:
                    await asyncio.wait_for(done.wait(), timeout=0.25)
                except TimeoutError:
                    pass
            elapsed = time.monotonic() - t0
            used = {k: cpu_seconds(v) - cpu0[k] for k, v in pids.items()}
            cpu = {k: round(v / elapsed, 2) for k, v in used.items()}
            got = len(assigned)
            after = await snapshot(procs, workdir, 2)
            order = await order_counts(procs)
            sla = await sla_behind(js, progress)
        finally:
            for p in procs:
                p.stop()
            if budget is not None:
                budget.close()
            await nc.close()
    counts = diff(before, after)
    rate = got / elapsed
    per = kv_ops(counts) / max(got, 1)
    writes = cas_writes(counts)
    conflict_rate = conflicts(counts) / writes if writes else 0.0
    router_ms = 1000 * sum(v for k, v in used.items() if k.startswith("router")) / max(got, 1)
    nats_ms = 1000 * used["nats-server"] / max(got, 1)
    wire = counts.get("wire:publish", 0) / max(got, 1)
    progress.done(
        f"{rate:,.0f} decisions/s ({got}/{n} in {elapsed:.1f} s; publish took {published:.1f} s; "
        f"{per:.1f} KV ops/decision; {wire:.1f} NATS messages sent/decision; {conflict_rate:.1%} CAS conflicts; CPU {cpu}; "
        f"SLA watch {sla['entries_behind']:,} entries behind, {sla['catch_up_seconds']:.1f} s to catch up)"
    )
    return {
        "replicas": replicas,
        "decisions": got,
        "wanted": n,
        "seconds": elapsed,
        "publish_seconds": published,
        "decisions_per_s": rate,
        "settle_seconds": settle,
        "cpu_cores_used": cpu,
        "kv_ops_per_decision": per,
        "messages_sent_per_decision": wire,  # every message written to NATS; the ceiling writes 3 per turn
        "cas_writes": writes,
        "cas_conflicts": conflicts(counts),
        "cas_conflict_rate": conflict_rate,
        "cpu_ms_per_decision": {"routers": router_ms, "nats-server": nats_ms},
        "ops_per_decision": {k: round(v / max(got, 1), 2) for k, v in sorted(counts.items())},
        "order": order,
        "sla_watch": sla,
    }


async def cas_loop(workdir: Path, *, lean: bool = False) -> dict[str, Any]:
    """Turns/s of get + compare-and-set + acknowledged publish, CAS_INFLIGHT loops at a time on distinct keys.

    Through nats-py's own JetStream context and buckets (the ceiling), or with ``lean`` through the ones the
    services use (``openlines.bus.JetStream``, decision 042): the same messages, less client CPU each."""
    progress = Progress(f"P3 bare get + CAS + publish loop{' (lean client)' if lean else ''}")
    with nats_server(workdir, "p3-cas-lean" if lean else "p3-cas") as ns:
        nc = await bus.connect(ns.url, "bench-p3-cas", first_attempts=5)
        js = nc.jetstream() if lean else JetStreamContext(nc)
        kv = await js.create_key_value(bucket="benchcas", history=1)
        await js.add_stream(name="BENCHP3", subjects=["bench.p3.>"], duplicate_window=15 * 60.0)
        turns = 0
        pad = b"x" * 200
        pid = ns.proc.pid if ns.proc else 0
        t_end = time.monotonic() + CAS_SECONDS

        async def worker(w: int) -> None:
            nonlocal turns
            key = f"k{w}"
            await kv.put(key, b'{"n":0}')
            n = 0
            while time.monotonic() < t_end:
                entry = await kv.get(key)
                n += 1
                await kv.update(key, b'{"n":%d,"pad":"%s"}' % (n, pad), last=entry.revision)
                # as the router's events: a JSON body and a Nats-Msg-Id the stream deduplicates on
                await js.publish(f"bench.p3.{w}", b'{"n":%d,"pad":"%s"}' % (n, pad), headers={MSG_ID_HEADER: f"{w}:{n}"})
                turns += 1
                progress.show(f"{turns:,} turns")

        cpu0 = cpu_seconds(pid), time.process_time()
        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(CAS_INFLIGHT)))
        el = time.monotonic() - t0
        nats_s, client_s = cpu_seconds(pid) - cpu0[0], time.process_time() - cpu0[1]
        await nc.close()
    rate = turns / el
    progress.done(f"{rate:,.0f} turns/s (get + CAS + publish, {CAS_INFLIGHT} in flight)")
    return {
        "turns_per_s": rate,
        "inflight": CAS_INFLIGHT,
        "seconds": el,
        "cpu_ms_per_turn": {"client": 1000 * client_s / max(turns, 1), "nats-server": 1000 * nats_s / max(turns, 1)},
    }


def _scaling_table(runs: list[dict[str, Any]], cas: dict[str, Any], lean: dict[str, Any]) -> list[str]:
    one = runs[0]["decisions_per_s"]
    out = [
        "| router replicas | decisions/s | speed-up | KV ops/decision | CAS conflicts "
        "| CPU ms/decision (routers + nats-server) | CPU cores used |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ms = r["cpu_ms_per_decision"]
        cores = sum(r["cpu_cores_used"].values())
        out.append(
            f"| {r['replicas']} | {r['decisions_per_s']:,.0f} | {r['decisions_per_s'] / one:.2f}x | "
            f"{r['kv_ops_per_decision']:.2f} | {r['cas_conflict_rate']:.1%} ({r['cas_conflicts']} of {r['cas_writes']}) | "
            f"{ms['routers']:.2f} + {ms['nats-server']:.2f} | {cores:.2f} |"
        )
    for label, loop in (("ceiling (get + CAS + publish)", cas), ("the same loop, lean client", lean)):
        c = loop["cpu_ms_per_turn"]
        out.append(f"| {label} | {loop['turns_per_s']:,.0f} | | 2 | 0 | {c['client']:.2f} + {c['nats-server']:.2f} | |")
    return out


async def run(workdir: Path) -> dict[str, Any]:
    runs = [await routing(n, workdir / f"r{n}") for n in REPLICAS]
    budget, no_budget = CpuBudget.available(CPU_BUDGET)
    held = [await routing(n, workdir / f"b{n}", budget, BUDGET_N) for n in REPLICAS] if budget is not None else []
    cas = await cas_loop(workdir)
    lean = await cas_loop(workdir, lean=True)
    one = runs[0]
    ratio = one["decisions_per_s"] / cas["turns_per_s"]
    load = os.getloadavg()
    rows: list[dict[str, Any]] = [
        {
            "what": "decisions/s, 1 replica vs a get + CAS + publish loop (16 in flight)",
            "ours_text": f"{one['decisions_per_s']:,.0f}/s ({one['kv_ops_per_decision']:.1f} KV ops/decision)",
            "ceiling_text": f"{cas['turns_per_s']:,.0f}/s",
            "ratio": ratio,
            "target": ">= 0.5x",
        },
        {
            "what": "decisions/s, 1 replica vs the same loop through the services' lean client (decision 042)",
            "ours_text": f"{one['decisions_per_s']:,.0f}/s",
            "ceiling_text": f"{lean['turns_per_s']:,.0f}/s",
            "ratio": one["decisions_per_s"] / lean["turns_per_s"],
            "target": "diagnostic (round trips alone)",
        },
        {
            "what": "KV operations per routing decision (new chat, an operator free), 1 replica",
            "ours_text": f"{one['kv_ops_per_decision']:.2f}",
            "ceiling_text": "2 (get + CAS)",
            "ratio": None,
            "value": one["kv_ops_per_decision"],
            "target": "<= 6",
        },
    ]
    for r in runs[1:]:
        rows.append(
            {
                "what": f"decisions/s, {r['replicas']} replicas vs 1 "
                f"(CAS conflicts {r['cas_conflict_rate']:.1%} vs {one['cas_conflict_rate']:.1%})",
                "ours_text": f"{r['decisions_per_s']:,.0f}/s",
                "ceiling_text": f"{one['decisions_per_s']:,.0f}/s",
                "ratio": r["decisions_per_s"] / one["decisions_per_s"],
                "target": "diagnostic: the replicas share this machine's cores"
                if held
                else (f">= 1.7x where the machine has the cores (not measured held: {no_budget})" if r["replicas"] == 2 else ""),
            }
        )
    for r in held[1:]:
        rows.append(
            {
                "what": f"decisions/s, {r['replicas']} replicas vs 1, each held to {CPU_BUDGET:g} of a core "
                f"(CAS conflicts {r['cas_conflict_rate']:.1%} vs {held[0]['cas_conflict_rate']:.1%})",
                "ours_text": f"{r['decisions_per_s']:,.0f}/s",
                "ceiling_text": f"{held[0]['decisions_per_s']:,.0f}/s",
                "ratio": r["decisions_per_s"] / held[0]["decisions_per_s"],
                "target": ">= 1.7x" if r["replicas"] == 2 else "grows",
            }
        )
    return {
        "name": "p3_routing",
        "what": "routing decisions/s, 50 lines x 20 operators",
        "setup": {"lines": LINES_N, "operators_per_line": OPS_PER_LINE, "capacity": CAPACITY, "new_clients": N},
        "replicas": runs,
        "replicas_held": held,
        "cpu_budget": CPU_BUDGET if held else None,
        "kv_cas": cas,
        "kv_cas_lean": lean,
        "rows": rows,
        "details": [
            f"### P3: routing with 1, {', '.join(str(n) for n in REPLICAS[1:])} router replicas",
            "",
            f"Measured with a load average of {load[0]:.1f} at the end on {os.cpu_count()} cores shared with other "
            "work: every process below (nats-server and each replica) competes for the same cores, so compare "
            "the ratios and the CPU per decision rather than the figures.",
            "",
            *_scaling_table(runs, cas, lean),
            "",
            *(
                [
                    f"The same with every replica held to {CPU_BUDGET:g} of a core (a cgroup's CPU quota, set once it "
                    f"is up; {BUDGET_N:,} new chats): 4 replicas then use one core between them, so nats-server and "
                    "the load keep what they need and the speed-up is the design's, not the machine's.",
                    "",
                    *_scaling_table(held, cas, lean)[:-2],
                ]
                if held
                else [f"The runs with each replica held to {CPU_BUDGET:g} of a core were not made: {no_budget}."]
            ),
        ],
    }
