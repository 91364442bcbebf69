"""Fault injection: visitors write while processes are killed with SIGKILL.

Real processes (nats-server, two router replicas, the webchat gateway,
crm-sync with the built-in CRM) are killed at random moments while N
visitors write over the widget protocol (reconnecting and resending unacked
messages like the widget does) and scripted operators answer and close.
Afterwards it prints and checks: messages lost, messages delivered to an
operator twice, replies doubled, clients with more than one open session,
duplicate CRM leads - all must be 0.

N is small in CI; `make chaos` runs it with OPENLINES_CHAOS_CLIENTS=20000.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import NatsServer, free_port, wait_for
from support import apply_lines

from openlines import bus, subjects
from openlines.commands import Close, CommandFailed, Reply, SetStatus, call
from openlines.envelopes import HistoryEntry, Outbound
from openlines.state import ClientRecord, OperatorState

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(900)]

CLIENTS = int(os.environ.get("OPENLINES_CHAOS_CLIENTS", "150"))
OPERATORS = [f"op{i}" for i in range(1, 6)]
SECRET = "chaos-webchat-secret-0123456789"
LINES = (
    "".join(f'[operators.{op}]\nname = "Operator {op}"\n' for op in OPERATORS)
    + '[[lines]]\nid = "support"\nname = "Support"\nchannels = [{ channel = "webchat", account = "demo" }]\n'
    + f"[lines.queue]\noperators = {json.dumps(OPERATORS)}\nmax_chats_per_operator = 50\nwait_seconds = 3600\n"
    + '[lines.auto_replies]\nwelcome = "Hello {client_name}"\n'
    + '[lines.crm]\nenabled = true\ncreate = "lead"\n'
)


class Proc:
    """One service as a real process, killed with SIGKILL and started again."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.module, self.env = name, module, env
        self.log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.kills += 1
        self.proc = None  # ours: the orchestrator does not count it, chaos() starts it again

    def exited(self) -> int | None:
        """The exit code if the process ended by itself (not by our kill), else None."""
        return None if self.proc is None else self.proc.poll()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def visitor(http: aiohttp.ClientSession, url: str, n: int, sent: dict[str, str]) -> None:
    """Write one message and keep resending it (same id) until it is acknowledged, like the widget."""
    token = ""
    msg_id = f"c{n}"
    while True:
        try:
            ws_url = f"{url}/ws/demo" + (f"?token={token}" if token else "")
            async with http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5)) as ws:
                welcome = json.loads((await ws.receive(timeout=10)).data)
                token = welcome["token"]
                await ws.send_json({"type": "message", "id": msg_id, "text": f"question {n}", "name": f"Visitor {n}"})
                while True:
                    frame = json.loads((await ws.receive(timeout=15)).data)
                    if frame.get("id") == msg_id and frame["type"] == "ack":
                        sent[f"webchat:demo:{welcome['visitor']}:{msg_id}"] = welcome["visitor"]
                        return
                    if frame.get("id") == msg_id and frame["type"] == "error":
                        break
        except Exception:  # the gateway or NATS is down: try again shortly
            pass
        await asyncio.sleep(0.3 + random.random() * 0.5)


async def operators_work(nc: Any, b: bus.Buckets, done: asyncio.Event, answered: set[str]) -> None:
    async def one(op: str) -> None:
        while not done.is_set():
            try:
                await call(nc, "status", SetStatus(operator_id=op, status="online"), timeout=2)
                st, _ = await bus.kv_get(b.operators, op, OperatorState)
            except Exception:
                st = None  # router restarting, NATS down: look again
            for sid in list(st.sessions) if st else []:
                try:
                    await call(nc, "reply", Reply(operator_id=op, session_id=sid, text="Answer", client_msg_id="a1"), timeout=3)
                    await call(nc, "close", Close(operator_id=op, session_id=sid), timeout=3)
                    answered.add(sid)
                except (CommandFailed, Exception):
                    pass  # not theirs any more, router restarting, NATS down: the next round sees
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(op) for op in OPERATORS))


async def test_kill_9_everything_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    base = {
        **os.environ,
        "OPENLINES_NATS_URL": nats.url,
        "OPENLINES_LOG_LEVEL": os.environ.get("OPENLINES_CHAOS_LOG_LEVEL", "warning"),
        "OPENLINES_PARTITION_LEASE_SECONDS": "3",
    }
    web_port = free_port()
    procs = {
        "router-a": Proc("router-a", "router", {**base, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
        "router-b": Proc("router-b", "router", {**base, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
        "webchat": Proc(
            "webchat",
            "gateway_webchat",
            {**base, "OPENLINES_HTTP_PORT": str(web_port), "OPENLINES_WEBCHAT_SECRET": SECRET},
            tmp_path,
        ),
        "crm": Proc("crm", "crm_sync", {**base, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
    }
    nc = await bus.connect(nats.url, "chaos", first_attempts=5)
    try:
        await bus.bootstrap(nc.jetstream())
        await apply_lines(nc, LINES)
        b = await bus.Buckets(nc.jetstream()).open()
        for p in procs.values():
            p.start()
        url = f"http://127.0.0.1:{web_port}"

        async def gateway_up() -> bool:
            try:
                async with aiohttp.ClientSession() as h, h.get(f"{url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(gateway_up, timeout=60, what="webchat gateway ready")
        sent: dict[str, str] = {}
        answered: set[str] = set()
        done = asyncio.Event()
        plan = ["router-a", "router-b"] * 3 + ["webchat"] * 2 + ["crm"] * 2 + ["nats"]
        random.shuffle(plan)
        started = time.monotonic()

        unexpected: list[str] = []

        async def orchestrator() -> None:
            # Like a container runtime with restart=always: a process that ends by itself is started again.
            while not done.is_set():
                for name, p in procs.items():
                    code = p.exited()
                    if code is not None:
                        unexpected.append(f"{name} exited with {code}")
                        p.start()
                try:
                    await asyncio.wait_for(done.wait(), timeout=0.5)
                except TimeoutError:
                    pass

        async def chaos() -> None:
            for target in plan:
                await asyncio.sleep(random.uniform(0.5, 2.0))
                if target == "nats":
                    nats.stop(kill=True)
                    await asyncio.sleep(random.uniform(0.5, 1.5))
                    nats.start()
                else:
                    procs[target].kill()
                    await asyncio.sleep(random.uniform(0.2, 1.0))
                    procs[target].start()

        async with aiohttp.ClientSession() as http:
            work = asyncio.create_task(operators_work(nc, b, done, answered))
            watchdog = asyncio.create_task(orchestrator())
            sem = asyncio.Semaphore(50)

            async def limited(n: int) -> None:
                async with sem:
                    await visitor(http, url, n, sent)

            await asyncio.gather(chaos(), *(limited(n) for n in range(CLIENTS)))

            async def all_answered() -> bool:
                closed = 0
                for key in await _client_keys(nc):
                    rec, _ = await bus.kv_get(b.clients, key, ClientRecord)
                    if rec is not None and not rec.open_sessions and rec.sessions_total >= 1:
                        closed += 1
                return closed >= CLIENTS

            await wait_for(all_answered, timeout=300, interval=1.0, what="every visitor's chat answered and closed")
            done.set()
            await work
            await watchdog

        report = await _check(nc, b, sent)
        report["kills"] = {name: p.kills for name, p in procs.items()} | {"nats": 1}
        report["seconds"] = round(time.monotonic() - started, 1)
        report["processes_that_ended_by_themselves"] = unexpected  # restarted, as an orchestrator would
        print("\nchaos report:", json.dumps(report, indent=2))
        assert len(sent) == CLIENTS
        assert report["messages_lost"] == 0
        assert report["delivered_to_operator_twice"] == 0
        assert report["replies_doubled"] == 0
        assert report["clients_with_more_than_one_open_session"] == 0
        assert report["duplicate_crm_leads"] == 0, report
    finally:
        for p in procs.values():
            p.close()
        await nc.close()
        nats.stop()


async def _client_keys(nc: Any) -> list[str]:
    return list(await bus.kv_entries(nc.jetstream(), subjects.KV_CLIENTS))


async def _check(nc: Any, b: bus.Buckets, sent: dict[str, str]) -> dict[str, Any]:
    js = nc.jetstream()
    seen: Counter[str] = Counter()
    replies: Counter[str] = Counter()
    open_twice = 0
    for key in await _client_keys(nc):
        rec, _ = await bus.kv_get(b.clients, key, ClientRecord)
        if rec is None:
            continue
        open_twice += 1 if len(rec.open_sessions) > 1 else 0
    for _, data in await bus.read_subject(js, subjects.STREAM_HIST, subjects.history_all(), limit=10_000_000):
        h = msgspec.json.decode(data, type=HistoryEntry)
        if h.direction == "in":
            seen[h.id] += 1
    for _, data in await bus.read_subject(js, subjects.STREAM_OUT, subjects.outbound_channel("webchat"), limit=10_000_000):
        o = msgspec.json.decode(data, type=Outbound)
        replies[o.id] += 1
    leads = await bus.kv_entries(js, subjects.KV_CRM_LEADS)
    per_client: Counter[str] = Counter()
    for _, (_, value) in leads.items():
        lead = json.loads(value)
        if isinstance(lead, dict):
            per_client["|".join(lead.get("im") or [lead.get("name", "")])] += 1  # the client's channel identity
    sessions = await bus.kv_entries(js, subjects.KV_SESSIONS)
    closed = sum(1 for k, (_, v) in sessions.items() if not k.startswith("queue.") and b'"status":"closed"' in v)
    return {
        "clients": len(sent),
        "messages_sent": len(sent),
        "messages_lost": sum(1 for msg_id in sent if seen[msg_id] == 0),
        "delivered_to_operator_twice": sum(1 for msg_id in sent if seen[msg_id] > 1),
        "replies_doubled": sum(1 for n in replies.values() if n > 1),
        "clients_with_more_than_one_open_session": open_twice,
        "crm_leads": len(leads),
        "duplicate_crm_leads": sum(n - 1 for n in per_client.values() if n > 1),
        "sessions_closed": closed,
    }
