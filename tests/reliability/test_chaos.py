"""Fault injection: clients write over every channel while processes are killed with SIGKILL and
NATS connections are dropped.

Real processes (nats-server - one, or a 3-node cluster -, two router replicas, two desk replicas,
the webchat, Telegram, VK, WhatsApp and e-mail gateways, two crm-sync replicas) are killed while
clients write - each kill lands while messages are in flight: the clients come in batches and a
kill falls in the middle of one. Every service reaches NATS through a relay
(tests/peers/natsproxy.py) that also drops every connection at once or holds them (a partition
that heals). Clients: website visitors over the widget protocol (reconnecting and resending
unacknowledged messages, then keeping their socket open - reconnecting with ``since`` - until
the answer arrives), Telegram, VK and WhatsApp users through the local Bot API / Callback API /
Cloud API peers (which resend an update until the webhook answers 200, like the real ones), and
e-mail clients whose mails are delivered into a real Dovecot mailbox (replies go out through a
real SMTP server). Scripted operators work through the desk as its page does: signed in, a live
WebSocket page, accept / reply / close over its HTTP API, the page reopened on the other replica
when theirs dies. crm-sync writes to a Bitrix24 peer that throttles (QUERY_LIMIT_EXCEEDED: a rate
limit, and a window longer than ack_wait) on one nats-server, to the built-in CRM on the cluster.

Afterwards it prints and checks: messages lost, messages delivered to an operator twice,
replies lost or doubled (in the outbound stream, at the messenger peers and at the visitors'
sockets), clients with more than one open session, duplicate CRM records of any kind - all
must be 0 - and reports the recovery figure: the longest gap in routing after each kind of kill.

N (all channels together) is small in CI; `make chaos` runs it with
OPENLINES_CHAOS_CLIENTS=20000 and saves the report (OPENLINES_CHAOS_REPORT_DIR).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from peers.bitrix24 import Bitrix24Peer
from peers.mailservers import SmtpSink, append, client_mail, gateway_env, mailbox_config
from peers.natsproxy import NatsProxy
from peers.telegram_api import FakeTelegram, message_update
from peers.vk_api import CallbackSender, FakeVk
from peers.whatsapp_api import FakeWhatsApp, contact, notification
from peers.whatsapp_api import text as wa_text
from support import apply_lines
from support.chaos import (
    AFTER_NEW_LEADERS_TARGET,
    CRM_DOUBLES,
    RECOVERY_TARGETS,
    CpuMeter,
    DeskOperator,
    DeskReplica,
    Kill,
    Phases,
    VisitorInbox,
    bitrix24_figures,
    builtin_figures,
    by_kind,
    elections_after,
    read_routed,
    recovery,
    save_report,
    visitor_figures,
    wait_for_answer,
)
from support.desk_admin import DEMO_HASH
from support.desk_admin import SECRET as DESK_SECRET
from support.servers import NatsCluster, NatsServer, ServiceProcess, free_port
from support.telegram import SUPPORT as TG_BOT
from support.timing import scaled, wait_for
from support.vk import ACCOUNT as VK_ACCOUNT
from support.vk import GROUP_ID as VK_GROUP
from support.vk import SECRET as VK_SECRET
from support.vk import fake_vk, groups_json
from support.webchat import NO_ABUSE_LIMITS, hello_frame
from support.whatsapp import APP, APP_SECRET, SHOP, VERIFY_TOKEN, accounts_json

from openlines import bus, subjects
from openlines.envelopes import HistoryEntry, Outbound
from openlines.state import ClientRecord
from router.settings import Settings as RouterSettings

CLIENTS = int(os.environ.get("OPENLINES_CHAOS_CLIENTS", "200"))  # over all channels
# The size at which the recovery targets are asserted (below it they are only reported: a handful
# of kills on a loaded CI machine says little about a figure in seconds).
FULL_SIZE = 20_000
REPORT_DIR = os.environ.get("OPENLINES_CHAOS_REPORT_DIR", "")  # where the run saves its JSON report
pytestmark = [pytest.mark.slow, pytest.mark.mail, pytest.mark.timeout(max(1800, int(CLIENTS * 0.3)))]
OPERATORS = [f"op{i}" for i in range(1, 6)]
SECRET = "chaos-webchat-secret-0123456789-Kq7Zt9Wm3xRv"
ANSWER = "Answer"
PRESENCE_GRACE = 10  # seconds a page may be gone before its operator counts as offline
RESTARTS_BEFORE_FAILING = 3  # a process that ends by itself this often fails the run (with its log)
ACK_WAIT = 5.0  # crm-sync's ack_wait here: the throttling window below outlasts it
VISITOR_SOCKETS = int(os.environ.get("OPENLINES_CHAOS_VISITOR_SOCKETS", "2000"))  # visitors waiting on an open socket at once
LINES = (
    "".join(f'[operators.{op}]\nname = "Operator {op}"\npassword_hash = "{DEMO_HASH}"\n' for op in OPERATORS)
    + '[[lines]]\nid = "support"\nname = "Support"\n'
    + 'channels = [{ channel = "webchat", account = "demo" }, '
    + f'{{ channel = "telegram", account = "{TG_BOT["account"]}" }}, {{ channel = "vk", account = "{VK_ACCOUNT}" }}, '
    + f'{{ channel = "whatsapp", account = "{SHOP["account"]}" }}, '
    + '{ channel = "email", account = "support" }]\n'
    + f"[lines.queue]\noperators = {json.dumps(OPERATORS)}\nmax_chats_per_operator = 50\nwait_seconds = 3600\n"
    + f"presence_grace_seconds = {PRESENCE_GRACE}\n"
    + '[lines.auto_replies]\nwelcome = "Hello {client_name}"\n'
    + '[lines.crm]\nenabled = true\ncreate = "lead"\n'
)


@dataclass
class Sent:
    """What the clients got stored (acknowledged by a gateway), keyed by the message text."""

    texts: set[str] = field(default_factory=set)
    telegram_chats: list[int] = field(default_factory=list)
    vk_peers: list[int] = field(default_factory=list)
    whatsapp_clients: list[str] = field(default_factory=list)
    mail_senders: list[str] = field(default_factory=list)
    visitors: list[VisitorInbox] = field(default_factory=list)  # the website visitors whose message was stored


async def retry(attempt: Callable[[], Awaitable[bool]]) -> None:
    """Call ``attempt`` until it says the message was stored, pausing like a client's backoff."""
    while not await attempt():  # noqa: ASYNC110 - a client's resend backoff, not a wait for our own state
        await asyncio.sleep(0.3 + random.random() * 0.5)


async def visitor(http: aiohttp.ClientSession, url: str, n: int, sent: Sent) -> VisitorInbox:
    """A website visitor writes one message and resends it (same id) until acknowledged, like the widget;
    then (see ``wait_for_answer``) waits on its socket for the operator's answer."""
    token = ""
    msg_id, text = f"c{n}", f"web question {n}"

    async def attempt() -> bool:
        nonlocal token
        try:
            ws_url = f"{url}/ws/demo"
            async with http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5)) as ws:
                await ws.send_json(hello_frame(token))
                welcome = json.loads((await ws.receive(timeout=scaled(10))).data)
                token = welcome["token"]
                await ws.send_json({"type": "message", "id": msg_id, "text": text, "name": f"Visitor {n}"})
                while True:
                    frame = json.loads((await ws.receive(timeout=scaled(15))).data)
                    if frame.get("id") == msg_id and frame["type"] == "ack":
                        sent.texts.add(text)
                        return True
                    if frame.get("id") == msg_id and frame["type"] == "error":
                        return False
        except Exception:  # the gateway or NATS is down: try again shortly
            return False

    await retry(attempt)
    inbox = VisitorInbox(token=token)
    sent.visitors.append(inbox)
    return inbox


async def telegram_user(tg: FakeTelegram, n: int, sent: Sent) -> None:
    """A Telegram user writes once; the Bot API resends the update until the webhook answers 200."""
    chat, text = 100_000 + n, f"tg question {n}"
    update = message_update(1_000 + n, chat, text, message_id=n + 1)

    async def attempt() -> bool:
        try:
            status, _ = await tg.deliver(TG_BOT["token"], update)
        except Exception:
            return False
        return status == 200

    await retry(attempt)
    sent.texts.add(text)
    sent.telegram_chats.append(chat)


async def vk_user(cb: CallbackSender, n: int, sent: Sent) -> None:
    """A VK user writes once; VK resends the event (same event_id) until the server answers "ok"."""
    peer, text = 200_000 + n, f"vk question {n}"
    event = cb.message_new(text, from_id=peer, event_id=f"chaos-{n:040d}"[-40:])

    async def attempt() -> bool:
        try:
            status, body = await cb.post(event)
        except Exception:
            return False
        return status == 200 and body == "ok"

    await retry(attempt)
    sent.texts.add(text)
    sent.vk_peers.append(peer)


async def whatsapp_user(wa: FakeWhatsApp, n: int, sent: Sent) -> None:
    """A WhatsApp user writes once; the Cloud API resends the signed notification until it is answered 200."""
    client, words = f"3725{n:07d}", f"wa question {n}"
    body = notification(
        SHOP["phone_number_id"], [wa_text(client, words, wamid=f"wamid.chaos{n:08d}")], contacts=[contact(client)]
    )
    wa.last_client_message[(SHOP["phone_number_id"], client)] = time.time()  # the window opens

    async def attempt() -> bool:
        try:
            status, _ = await wa.post(body)
        except Exception:
            return False
        return status == 200

    await retry(attempt)
    sent.texts.add(words)
    sent.whatsapp_clients.append(client)


MTA_CONNECTIONS = 4  # Dovecot allows 10 connections per user and address; the gateway holds some


async def mail_client(imap: Any, n: int, sent: Sent, mta: asyncio.Semaphore) -> None:
    """An e-mail client's mail is delivered into the mailbox (an MTA's delivery agent: IMAP APPEND)."""
    sender, text = f"client{n}@mail.example.test", f"mail question {n}"
    async with mta:  # a delivery agent keeps few connections open, whatever the traffic
        await append(imap, client_mail(sender, text, subject=f"Question {n}"))
    sent.texts.add(text)
    sent.mail_senders.append(sender)


class Nats:
    """A single server or a 3-node cluster, and a relay in front of each server that the services connect
    through (the test's own connection does not); ``kill_one`` kills (SIGKILL) one server and starts it
    again, ``drop`` resets every relayed connection, ``cut`` holds them for a while."""

    def __init__(self, root: Path, cluster: bool) -> None:
        # The services must not learn the servers' own addresses (they would bypass the relays).
        self.cluster = NatsCluster(root / "cluster", args=["--no_advertise"]) if cluster else None
        self.single = None if cluster else NatsServer(root / "nats")
        self.replicas = 3 if cluster else 1
        self.proxies: list[NatsProxy] = []

    @property
    def nodes(self) -> list[NatsServer]:
        return self.cluster.nodes if self.cluster else [self.single]  # type: ignore[list-item]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def service_url(self) -> str:
        return ",".join(p.url for p in self.proxies)

    async def start(self) -> None:
        (self.cluster or self.single).start()  # type: ignore[union-attr]
        for node in self.nodes:
            proxy = NatsProxy(node.port, inspect=False)  # drops and cuts only: no need to read every publish
            await proxy.start()
            self.proxies.append(proxy)

    async def kill_one(self, cpu: CpuMeter) -> str:
        node = random.choice(self.nodes)
        cpu.charge("nats-server", node.proc)
        node.stop(kill=True)
        await asyncio.sleep(random.uniform(0.5, 1.5))  # down for a moment
        node.start()
        return node.url

    def drop(self) -> int:
        return sum(p.drop_connections() for p in self.proxies)

    async def cut(self, seconds: float) -> None:
        """Every relayed connection held for ``seconds``; returns once they all flow again."""
        healed = [p.cut(seconds) for p in self.proxies]
        await asyncio.gather(*(h.wait() for h in healed))

    async def stop(self, cpu: CpuMeter) -> None:
        for p in self.proxies:
            await p.stop()
        for node in self.nodes:
            cpu.charge("nats-server", node.proc)
        (self.cluster or self.single).stop()  # type: ignore[union-attr]

    def violations(self) -> list[str]:
        """What the shipped permission file refused the services (a grant auth.conf lacks)."""
        return (self.cluster or self.single).violations()  # type: ignore[union-attr]


async def _bootstrap(nats: Nats) -> Any:
    """Connect and create the streams; a fresh cluster needs a moment to elect its JetStream leader."""
    nc = await bus.connect(nats.url, "chaos", first_attempts=5)

    async def ready() -> bool:
        try:
            await bus.bootstrap(nc.jetstream(), replicas=nats.replicas)
        except Exception:
            return False
        return True

    await wait_for(ready, timeout=60, interval=0.5, what="JetStream ready for the streams")
    return nc


def split(n: int) -> dict[str, int]:
    """N clients over the channels: about half on the website, the rest over Telegram, VK, WhatsApp and e-mail."""
    tg = vk = wa = n // 7
    mail = n // 10
    return {"webchat": n - tg - vk - wa - mail, "telegram": tg, "vk": vk, "whatsapp": wa, "email": mail}


def kind_of(target: str) -> str:
    if target.startswith(("router", "desk")):
        return target.split("-")[0]
    if target.startswith("crm"):
        return "crm"
    return {"nats": "nats", "drop": "nats-drop", "cut": "nats-cut", "throttle": "crm-throttle"}.get(target, "gateway")


async def run_chaos(
    tmp_path: Path, imap: Any, smtp: SmtpSink, *, cluster: bool, mix: dict[str, int], plan: list[str], crm: str
) -> dict[str, Any]:
    phases = Phases()
    cpu = CpuMeter()
    nats = Nats(tmp_path, cluster)
    await nats.start()
    tg, vk, wa = FakeTelegram(), fake_vk(), FakeWhatsApp()
    tg.add_bot(TG_BOT["token"])
    wa.add_number(SHOP["phone_number_id"], SHOP["token"])
    await tg.start()
    await vk.start()
    await wa.start()
    total = sum(mix.values())
    bitrix = Bitrix24Peer() if crm == "bitrix24" else None
    if bitrix is not None:
        # A leaky bucket slower than the two replicas together: QUERY_LIMIT_EXCEEDED all along; the
        # portal's rate grows with N so that the full-size run ends within the hour.
        bitrix.rate, bitrix.burst = max(20.0, total / 40), 20
        await bitrix.start()
    base = {
        **os.environ,
        "OPENLINES_NATS_URL": nats.service_url,
        "OPENLINES_REPLICAS": str(nats.replicas),
        "OPENLINES_LOG_LEVEL": os.environ.get("OPENLINES_CHAOS_LOG_LEVEL", "warning"),
    }
    ports = {name: free_port() for name in ("webchat", "telegram", "vk", "whatsapp", "email")}
    crm_env = {
        **base,
        "OPENLINES_ACK_WAIT": str(ACK_WAIT),
        "OPENLINES_CRM_TIMEOUT": "2",
        "OPENLINES_CRM_BACKOFF": "0.25",
        "OPENLINES_CRM_LIMIT_RETRIES": "6",  # 0.25 s doubling: ~16 s of retries, past ack_wait
    }
    if bitrix is not None:
        crm_env |= {
            "OPENLINES_CRM_BACKEND": "bitrix24",
            "OPENLINES_BITRIX24_WEBHOOK": bitrix.webhook,
            "OPENLINES_CRM_USERS": json.dumps({str(10 + i): op for i, op in enumerate(OPERATORS)}),
            "OPENLINES_CRM_RATE": str(bitrix.rate * 0.75),  # each replica; together 1.5 times what the portal allows
        }
    procs = {
        "router-a": ServiceProcess("router-a", "router", {**base, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
        "router-b": ServiceProcess("router-b", "router", {**base, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
        "webchat": ServiceProcess(
            "webchat",
            "gateway_webchat",
            # Hundreds of visitors from one address: the abuse limits are not what this measures.
            {**base, "OPENLINES_HTTP_PORT": str(ports["webchat"]), "OPENLINES_WEBCHAT_SECRET": SECRET, **NO_ABUSE_LIMITS},
            tmp_path,
        ),
        "telegram": ServiceProcess(
            "telegram",
            "gateway_telegram",
            {
                **base,
                "OPENLINES_HTTP_PORT": str(ports["telegram"]),
                "OPENLINES_TELEGRAM_BOTS": json.dumps([TG_BOT]),
                "OPENLINES_TELEGRAM_API_BASE": tg.base,
                "OPENLINES_TELEGRAM_BACKOFF": "0.05",
                "OPENLINES_TELEGRAM_BACKOFF_MAX": "0.5",
                "OPENLINES_TELEGRAM_ACK_WAIT": "5",
            },
            tmp_path,
        ),
        "vk": ServiceProcess(
            "vk",
            "gateway_vk",
            {
                **base,
                "OPENLINES_HTTP_PORT": str(ports["vk"]),
                "OPENLINES_VK_GROUPS": groups_json(),
                "OPENLINES_VK_API_URL": vk.url,
            },
            tmp_path,
        ),
        "whatsapp": ServiceProcess(
            "whatsapp",
            "gateway_whatsapp",
            {
                **base,
                "OPENLINES_HTTP_PORT": str(ports["whatsapp"]),
                "OPENLINES_WHATSAPP_ACCOUNTS": accounts_json(),
                "OPENLINES_WHATSAPP_API_BASE": wa.base,
                "OPENLINES_WHATSAPP_BACKOFF": "0.05",
                "OPENLINES_WHATSAPP_BACKOFF_MAX": "0.5",
                "OPENLINES_WHATSAPP_ACK_WAIT": "5",
            },
            tmp_path,
        ),
        "email": ServiceProcess(
            "email",
            "gateway_email",
            {
                **base,
                **gateway_env(nats.service_url, [mailbox_config(imap, smtp)]),
                "OPENLINES_HTTP_PORT": str(ports["email"]),
            },
            tmp_path,
        ),
        "crm-a": ServiceProcess("crm-a", "crm_sync", {**crm_env, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
        "crm-b": ServiceProcess("crm-b", "crm_sync", {**crm_env, "OPENLINES_HTTP_PORT": str(free_port())}, tmp_path),
    }
    desks = []
    for name in ("desk-a", "desk-b"):
        port = free_port()
        env = {
            **base,
            "OPENLINES_HTTP_PORT": str(port),
            "OPENLINES_COOKIE_SECRET": DESK_SECRET,
            "OPENLINES_DESK_HEARTBEAT_SECONDS": "1",
        }
        procs[name] = ServiceProcess(name, "desk", env, tmp_path)
        desks.append(DeskReplica(name, procs[name], port))
    for router in ("router-a", "router-b"):
        procs[router].env["OPENLINES_DESK_SWEEP_SECONDS"] = "1"
    hook = tg.webhooks[TG_BOT["token"]]
    hook.url, hook.secret = f"http://127.0.0.1:{ports['telegram']}/telegram/{TG_BOT['account']}", TG_BOT["secret"]
    wa.configure(f"http://127.0.0.1:{ports['whatsapp']}/whatsapp/{APP}", APP_SECRET, VERIFY_TOKEN)
    nc = await _bootstrap(nats)
    done = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    unexpected: list[str] = []

    broken: list[str] = []  # a process that keeps ending by itself: the run fails at once, with its log

    async def orchestrator() -> None:
        # Like a container runtime with restart=always: a process that ends by itself is started again.
        ended: dict[str, int] = {}
        while not done.is_set():
            for name, p in procs.items():
                code = p.exited()
                if code is not None:
                    unexpected.append(f"{name} exited with {code}")
                    ended[name] = ended.get(name, 0) + 1
                    if ended[name] == RESTARTS_BEFORE_FAILING:  # e.g. its port taken: it will never come back
                        broken.append(f"{name} ended by itself {ended[name]} times, last with {code}:\n{p.tail()}")
                    p.start()
            try:
                await asyncio.wait_for(done.wait(), timeout=0.5)
            except TimeoutError:
                pass

    try:
        await apply_lines(nc, LINES)
        b = await bus.Buckets(nc.jetstream()).open()
        for p in procs.values():
            p.start()
        # Started with the services: one that ends by itself while starting is started again (and listed).
        background.append(asyncio.create_task(orchestrator()))
        for name in ports:
            await wait_for(lambda n=name: _ready(ports[n]), timeout=60, interval=0.2, what=f"{name} gateway ready")
        for d in desks:
            await wait_for(lambda d=d: _ready(d.port), timeout=60, interval=0.2, what=f"{d.name} ready")

        async def all_serving() -> bool:
            assert not broken, "\n\n".join(broken)  # fail now, not after the wait's time-out
            # crm-sync says "not ready" while the CRM throttles it: alive is enough here.
            checks = [
                _ready(int(p.env["OPENLINES_HTTP_PORT"]), "healthz" if name.startswith("crm") else "readyz")
                for name, p in procs.items()
            ]
            return all(await asyncio.gather(*checks))

        # The routers and crm-sync too: a router replica whose set-up started over joins the other a moment
        # later (decision 036), and that hand-over is not a fault's (it showed as 8-10 s waits in "quiet").
        await wait_for(all_serving, timeout=60, interval=0.2, what="every service ready")
        phases.add("start", time.monotonic() - phases.began)
        sent = Sent()
        kills: list[Kill] = []
        started = time.monotonic()
        operators = [DeskOperator(op, "demo", desks, ANSWER) for op in OPERATORS]

        async def fault(target: str, in_flight: int) -> None:
            kill = Kill(kind_of(target), target, time.time(), in_flight)
            if target.startswith("desk"):
                kill.operators_on_it = [op.login for op in operators if op.desk.name == target]
            kills.append(kill)
            if target == "nats":
                await nats.kill_one(cpu)
            elif target == "drop":
                nats.drop()
            elif target == "cut":
                await nats.cut(random.uniform(1.0, 3.0))  # a partition that heals
            elif target == "throttle":
                assert bitrix is not None
                bitrix.limit_for(ACK_WAIT + 3)  # every call QUERY_LIMIT_EXCEEDED for longer than ack_wait
            else:
                cpu.charge(target, procs[target].proc)
                procs[target].kill()
                await asyncio.sleep(random.uniform(0.2, 1.0))  # down for a moment
                procs[target].start()
            # One fault at a time: the next one comes when every service serves again, so that each gap
            # in routing belongs to one fault.
            with phases.timed(f"serving again after {kind_of(target)}", target):
                await wait_for(all_serving, timeout=120, interval=0.2, what=f"every service serving again after {target}")

        async with aiohttp.ClientSession() as http:
            background += [asyncio.create_task(op.run(done)) for op in operators]
            sem = asyncio.Semaphore(50)
            sockets = asyncio.Semaphore(VISITOR_SOCKETS)
            mta = asyncio.Semaphore(MTA_CONNECTIONS)
            cb = CallbackSender(http, f"http://127.0.0.1:{ports['vk']}/vk/{VK_ACCOUNT}", VK_GROUP, VK_SECRET)
            web_url = f"http://127.0.0.1:{ports['webchat']}"
            waiting: list[asyncio.Task[None]] = []

            async def answer_awaited(inbox: VisitorInbox) -> None:
                async with sockets:
                    await wait_for_answer(http, web_url, inbox, ANSWER, done)

            async def limited(client: Awaitable[VisitorInbox | None]) -> None:
                async with sem:
                    inbox = await client
                if inbox is not None:  # a website visitor: it now waits for the answer on its socket
                    waiting.append(asyncio.create_task(answer_awaited(inbox)))

            clients = (
                [visitor(http, web_url, n, sent) for n in range(mix["webchat"])]
                + [telegram_user(tg, n, sent) for n in range(mix["telegram"])]
                + [vk_user(cb, n, sent) for n in range(mix["vk"])]
                + [whatsapp_user(wa, n, sent) for n in range(mix["whatsapp"])]
                + [mail_client(imap, n, sent, mta) for n in range(mix["email"])]
            )
            random.shuffle(clients)
            # The clients come in batches, one more than there are faults; each fault falls while its
            # batch is being written (after a random part of it was stored), never after the writing ended.
            batches = [clients[i :: len(plan) + 1] for i in range(len(plan) + 1)]
            writing: list[asyncio.Task[None]] = []

            async def progress() -> None:
                while not done.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 20)  # ends with the run, not up to 20 s after it
                    if done.is_set():
                        return
                    posts = sum(op.log.posts for op in operators)
                    post_s = sum(op.log.post_seconds for op in operators)
                    try:
                        info = await nc.jetstream().consumer_info(subjects.STREAM_EVT, "crm-sync")
                        crm = f"crm-sync {info.num_pending} events pending, {info.num_ack_pending} in hand"
                    except Exception as exc:  # a node restarting
                        crm = f"crm-sync not readable ({type(exc).__name__})"
                    phases.say(
                        f"progress: {len(sent.texts)}/{total} stored, {sum(op.log.closed for op in operators)} closed "
                        f"by operators, {sum(1 for t in waiting if t.done())}/{len(waiting)} visitors answered, "
                        f"desk calls {posts} avg {post_s / max(1, posts) * 1000:.0f} ms, {crm}, load {os.getloadavg()[0]:.1f}"
                    )

            background.append(asyncio.create_task(progress()))
            for target, batch in zip(plan, batches, strict=False):
                before = len(sent.texts)
                began = time.monotonic()
                writing += [asyncio.create_task(limited(c)) for c in batch]
                want = before + max(0, int(len(batch) * random.uniform(0.2, 0.7)) - 1)
                await wait_for(lambda w=want: len(sent.texts) >= w, timeout=120, interval=0.01, what="a part of the batch stored")
                phases.add("sending", time.monotonic() - began, f"{len(sent.texts) - before} stored")
                await fault(target, sum(1 for t in writing if not t.done()))
            began = time.monotonic()
            writing += [asyncio.create_task(limited(c)) for c in batches[-1]]
            await asyncio.gather(*writing)
            phases.add("sending", time.monotonic() - began, "the last batch and the rest")
            sending_ended = time.monotonic()
            closed_then = sum(op.log.closed for op in operators)
            background += waiting

            polled = {"at": 0.0, "cost": 0.0}
            last: list[bool | NotYet] = [NotYet("not read yet")]

            async def all_closed() -> bool | NotYet:
                # Every client record, read in one pass: at full size a read costs seconds of CPU that the
                # services need, so it is read again only after four times what the last read took.
                if time.monotonic() - polled["at"] < 4 * polled["cost"]:
                    return last[0]
                began = time.monotonic()
                try:
                    records = await _client_records(nc)
                except Exception:  # a cluster node just restarted: ask again
                    return False
                finally:
                    polled["at"], polled["cost"] = time.monotonic(), time.monotonic() - began
                closed = sum(1 for rec in records if not rec.open_sessions and rec.sessions_total >= 1)
                last[0] = True if closed >= total else NotYet(f"{closed} of {total} clients answered and closed")
                return last[0]

            # Five operators close a few hundred chats a minute: the deadline grows with the number of clients.
            deadline = max(600.0, total * 0.15)
            with phases.timed("drain: every chat closed", f"{closed_then} closed when the sending ended"):
                await wait_for(all_closed, timeout=deadline, interval=2.0, what="every client's chat answered and closed")
            closing = time.monotonic() - started
            with phases.timed("drain: every visitor's answer at its socket"):
                await wait_for(
                    lambda: all(t.done() for t in waiting), timeout=120, interval=0.5, what="every visitor's answer at its socket"
                )
            done.set()
            await asyncio.gather(*background, return_exceptions=True)
        with phases.timed("drain: every answer at the messenger peers"):
            await wait_for(
                lambda: _answered_at_peers(tg, vk, wa, smtp, sent),
                timeout=120,
                interval=0.5,
                what="every answer at the messenger peers",
            )
        with phases.timed("drain: crm-sync caught up"):
            await wait_for(
                lambda: _crm_caught_up(nc, total, bitrix), timeout=300, interval=1.0, what="crm-sync done with every session"
            )
        with phases.timed("checks: transcripts, outbound, peers, sessions"):
            report = await _settled(lambda: _check(nc, b, sent, tg, vk, wa, smtp))
        routed = report.pop("_routed")
        report |= visitor_figures(sent.visitors, ANSWER)
        with phases.timed("checks: CRM records"):
            report |= bitrix24_figures(bitrix) if bitrix is not None else await _settled(lambda: builtin_figures(nc.jetstream()))
        report["crm"] = crm
        report["crm_sync_replicas"] = 2
        report["operators"] = {
            op.login: {
                "closed": op.log.closed,
                "page_opens": op.log.page_opens,
                "reloads_that_found_chats": op.log.reloads_that_found_chats,
                "page_reopened_after": dict(op.log.reopened_after.most_common(5)),
            }
            for op in operators
        }
        report["kills"] = by_kind(kills)
        report["kills_with_messages_in_flight"] = sum(1 for k in kills if k.in_flight)
        if cluster:  # when each node kill's elections ended (up to the next fault)
            starts = sorted(k.at for k in kills)
            for k in kills:
                if k.kind == "nats":
                    later = [t for t in starts if t > k.at]
                    k.new_leaders_at = elections_after(nats.nodes, k.at, later[0] if later else None)
        report["recovery"] = recovery(kills, routed, {op.login: op.log for op in operators})
        report["nats_nodes"] = 3 if cluster else 1
        report["partition_lease_seconds"] = RouterSettings().partition_lease_seconds  # the shipped one
        report["router_ack_wait_seconds"] = RouterSettings().ack_wait
        # What the routers ran with: the shipped default unless the run's environment set it.
        report["router_in_hand"] = int(os.environ.get("OPENLINES_IN_HAND") or RouterSettings().in_hand)
        report["presence_grace_seconds"] = PRESENCE_GRACE
        report["seconds"] = round(time.monotonic() - started, 1)
        posts = sum(op.log.posts for op in operators)
        report["timings"] = {
            "phases": phases.report(),
            "sending_seconds": round(sending_ended - started, 1),
            "closed_while_sending": closed_then,
            "all_closed_after_seconds": round(closing, 1),
            "desk_calls": posts,
            "desk_call_mean_ms": round(sum(op.log.post_seconds for op in operators) / max(1, posts) * 1000, 1),
        }
        report["processes_that_ended_by_themselves"] = unexpected  # restarted, as an orchestrator would
        report["nats_refusals"] = nats.violations()
        print("\nchaos report:", json.dumps(report, indent=2))
        if REPORT_DIR:
            print("saved:", save_report(REPORT_DIR, "cluster" if cluster else "single", report))
        assert len(sent.texts) == total
        return report
    finally:
        done.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # In threads: the relays run on this loop, and a service draining on SIGTERM still needs NATS.
        for name, p in procs.items():
            cpu.charge(name, p.proc)
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs.values()))
        await nc.close()
        await tg.stop()
        await vk.stop()
        await wa.stop()
        if bitrix is not None:
            await bitrix.stop()
        await nats.stop(cpu)
        phases.say(f"CPU seconds by process: {json.dumps(cpu.report())}")


async def _settled(read: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``read()``, asked again while a restarted cluster node still answers "unavailable"."""

    async def attempt() -> dict[str, Any] | None:
        try:
            return await read()
        except Exception:
            return None

    return await wait_for(attempt, timeout=60, interval=1.0, what="the streams readable after the kills")


def _assert_clean(report: dict[str, Any], *, nats_target: bool) -> None:
    for key in (
        "messages_lost",
        "delivered_to_operator_twice",
        "replies_doubled",
        "replies_lost_at_peers",
        "replies_doubled_at_peers",
        "webchat_answers_lost_at_visitor",
        "webchat_replies_doubled_at_visitor",
        "clients_with_more_than_one_open_session",
        *CRM_DOUBLES,
    ):
        assert report[key] == 0, (key, report)
    assert report["nats_refusals"] == [], report
    assert report["telegram_doubled"] <= report["telegram_resends_after_a_kill_mid_send"], report
    assert report["whatsapp_doubled"] <= report["whatsapp_resends_after_a_kill_mid_send"], report
    if CLIENTS >= FULL_SIZE:
        # Enough kills of each kind, over long enough, for a figure in seconds to mean something.
        for kind, target in RECOVERY_TARGETS.items():
            got = report["recovery"].get(kind)
            if kind == "nats":
                if nats_target:  # a node of three: from its new leaders on (decision 028)
                    after = got and got.get("longest_gap_after_new_leaders_seconds")
                    assert after is not None and after < AFTER_NEW_LEADERS_TARGET, (kind, got, AFTER_NEW_LEADERS_TARGET)
                continue  # one nats-server killed: everything waits for it, no target
            assert got is not None and got["longest_gap_seconds"] < target, (kind, got, target)


async def test_kill_9_everything_nothing_lost_nothing_doubled(tmp_path: Path, imap: Any, smtp: SmtpSink) -> None:
    plan = (
        ["router-a", "router-b"] * 3
        + ["webchat", "telegram", "vk", "whatsapp", "email", "crm-a", "crm-b"] * 2
        + ["desk-a", "desk-b", "nats", "drop", "drop", "cut", "throttle"]
    )
    random.shuffle(plan)
    report = await run_chaos(tmp_path, imap, smtp, cluster=False, mix=split(CLIENTS), plan=plan, crm="bitrix24")
    _assert_clean(report, nats_target=False)


async def test_kill_9_a_node_of_a_3_node_cluster_and_the_services(tmp_path: Path, imap: Any, smtp: SmtpSink) -> None:
    plan = ["router-a", "router-b", "webchat", "telegram", "vk", "whatsapp", "email", "crm-a", "crm-b"]
    plan += ["desk-a", "desk-b", "nats", "nats", "drop", "cut"]
    random.shuffle(plan)
    report = await run_chaos(tmp_path, imap, smtp, cluster=True, mix=split(max(10, CLIENTS // 2)), plan=plan, crm="builtin")
    _assert_clean(report, nats_target=True)


async def _ready(port: int, check: str = "readyz") -> bool:
    try:
        async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{port}/{check}") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


class NotYet:
    """A wait's "not yet" that says what it still waits for (a timed-out wait_for shows it as its last value)."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.why


async def _crm_caught_up(nc: Any, clients: int, bitrix: Bitrix24Peer | None) -> bool | NotYet:
    """crm-sync has handled every session event and (all clients being new) made a lead per client."""
    try:
        info = await nc.jetstream().consumer_info(subjects.STREAM_EVT, "crm-sync")
        if info.num_pending or info.num_ack_pending:
            return NotYet(f"crm-sync: {info.num_pending} events pending, {info.num_ack_pending} in hand")
        if bitrix is not None:
            leads = len({lead.get("ORIGIN_ID") for lead in bitrix.leads()})
        else:
            leads = len(await bus.kv_entries(nc.jetstream(), subjects.KV_CRM_LEADS))
        return True if leads >= clients else NotYet(f"every event handled, {leads} leads of {clients}")
    except Exception as exc:  # a cluster node just restarted: the consumer's leader is being elected
        return NotYet(f"crm-sync's consumer not readable: {exc!r}")


async def _client_records(nc: Any) -> list[ClientRecord]:
    """Every client record, read in one pass over the bucket."""
    entries = await bus.kv_entries(nc.jetstream(), subjects.KV_CLIENTS)
    return [msgspec.json.decode(value, type=ClientRecord) for _, (_, value) in entries.items()]


def _first_line(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    return body.get_content().strip().splitlines()[0] if body is not None and body.get_content().strip() else ""


def _peer_texts(tg: FakeTelegram, vk: FakeVk, wa: FakeWhatsApp, smtp: SmtpSink, sent: Sent) -> dict[str, Counter[str]]:
    """What each messenger chat or mail address received, text -> times (each peer's log read once: one
    pass over it, not one per client)."""
    texts: dict[str, Counter[str]] = {f"wa:{c}": Counter() for c in sent.whatsapp_clients}
    texts |= {f"tg:{c}": Counter() for c in sent.telegram_chats}
    texts |= {f"vk:{p}": Counter() for p in sent.vk_peers}
    texts |= {f"mail:{a}": Counter() for a in sent.mail_senders}
    for m in wa.sent:
        if m.type == "text" and f"wa:{m.to}" in texts:
            texts[f"wa:{m.to}"][m.text] += 1
    for c in tg.sent(method="sendMessage"):
        if f"tg:{c.chat_id}" in texts:
            texts[f"tg:{c.chat_id}"][str(c.params.get("text", ""))] += 1
    for v in vk.sent:
        if f"vk:{v.peer_id}" in texts:
            texts[f"vk:{v.peer_id}"][v.message] += 1
    seen: set[tuple[str, str]] = set()
    for r in smtp.received:
        line = None
        mail = r.message
        message_id = str(mail.get("Message-ID", "")) or f"none-{id(r)}"
        for address in set(r.rcpt_tos):
            if f"mail:{address}" in texts:
                # A mail the server accepted twice under one Message-ID (an e-mail gateway killed between the
                # server's 250 and its record, docs/channels/email.md) is one message to the client: counted once.
                if (address, message_id) in seen:
                    continue
                seen.add((address, message_id))
                line = _first_line(mail) if line is None else line
                texts[f"mail:{address}"][line] += 1
    return texts


def _mails_accepted_again(smtp: SmtpSink) -> int:
    """Mails the SMTP server accepted again under a Message-ID it had already taken for the same address."""
    keys = Counter((address, str(r.message.get("Message-ID", ""))) for r in smtp.received for address in set(r.rcpt_tos))
    return sum(n - 1 for n in keys.values() if n > 1)


def _answered_at_peers(tg: FakeTelegram, vk: FakeVk, wa: FakeWhatsApp, smtp: SmtpSink, sent: Sent) -> bool:
    return all(got[ANSWER] >= 1 for got in _peer_texts(tg, vk, wa, smtp, sent).values())


async def _uncertain(js: Any, bucket: str) -> int:
    """Parts a gateway sent again after a kill mid-send (its send records' ``uncertain``)."""
    try:
        records = await bus.kv_entries(js, bucket)
    except Exception:  # the bucket is made on the gateway's first send
        return 0
    return sum(int(json.loads(value).get("uncertain", 0)) for _, (_, value) in records.items())


async def _check(
    nc: Any, b: bus.Buckets, sent: Sent, tg: FakeTelegram, vk: FakeVk, wa: FakeWhatsApp, smtp: SmtpSink
) -> dict[str, Any]:
    js = nc.jetstream()
    seen: Counter[str] = Counter()
    replies: Counter[str] = Counter()
    open_twice = sum(1 for rec in await _client_records(nc) if len(rec.open_sessions) > 1)
    # With the time each line was written: the recovery gaps.
    routed, lines = await read_routed(js, subjects.STREAM_HIST, subjects.history_all())
    for data in lines:
        h = msgspec.json.decode(data, type=HistoryEntry)
        if h.direction == "in":
            seen[h.text.strip().splitlines()[-1] if h.text.strip() else ""] += 1  # a mail's text starts with its subject
    for channel in ("webchat", "telegram", "vk", "whatsapp", "email"):
        for _, data in await bus.read_subject(js, subjects.STREAM_OUT, subjects.outbound_channel(channel), limit=10_000_000):
            replies[msgspec.json.decode(data, type=Outbound).id] += 1
    at_peers = _peer_texts(tg, vk, wa, smtp, sent)
    sessions = await bus.kv_entries(js, subjects.KV_SESSIONS)
    closed = sum(1 for k, (_, v) in sessions.items() if b'"status":"closed"' in v)
    return {
        "messages_sent": len(sent.texts),
        "by_channel": {
            "webchat": len(sent.texts)
            - len(sent.telegram_chats)
            - len(sent.vk_peers)
            - len(sent.whatsapp_clients)
            - len(sent.mail_senders),
            "telegram": len(sent.telegram_chats),
            "vk": len(sent.vk_peers),
            "whatsapp": len(sent.whatsapp_clients),
            "email": len(sent.mail_senders),
        },
        "messages_lost": sum(1 for text in sent.texts if seen[text] == 0),
        "delivered_to_operator_twice": sum(1 for text in sent.texts if seen[text] > 1),
        "replies_doubled": sum(1 for n in replies.values() if n > 1),
        "replies_lost_at_peers": sum(1 for got in at_peers.values() if got[ANSWER] == 0),
        "replies_doubled_at_peers": sum(
            1 for chat, got in at_peers.items() for n in got.values() if n > 1 and not chat.startswith(("tg:", "wa:"))
        ),
        "chats_with_a_reply_doubled_at_peers": sorted(
            chat for chat, got in at_peers.items() if any(n > 1 for n in got.values()) and not chat.startswith(("tg:", "wa:"))
        )[:20],
        "mails_accepted_again_under_the_same_message_id": _mails_accepted_again(smtp),
        # The Bot API has no idempotency key: a Telegram gateway killed between Telegram accepting a
        # message and recording it resends it and counts the resend. Every double must be such a one.
        "telegram_doubled": sum(1 for chat, got in at_peers.items() for n in got.values() if n > 1 and chat.startswith("tg:")),
        "telegram_resends_after_a_kill_mid_send": await _uncertain(js, subjects.KV_TELEGRAM_SENT),
        # Nor has the Cloud API: the same holds for WhatsApp.
        "whatsapp_doubled": sum(1 for chat, got in at_peers.items() for n in got.values() if n > 1 and chat.startswith("wa:")),
        "whatsapp_resends_after_a_kill_mid_send": await _uncertain(js, subjects.KV_WHATSAPP_SENT),
        "clients_with_more_than_one_open_session": open_twice,
        "sessions_closed": closed,
        "_routed": routed,
    }
