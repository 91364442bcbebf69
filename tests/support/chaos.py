"""What the fault suite (tests/reliability/test_chaos.py) needs beside its clients: operators who work
through the real desk, webchat visitors who wait for their answer on their own socket, the CRM
records counted for doubles, the recovery gaps after each kind of kill, and the saved report."""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from support.servers import ServiceProcess
from support.timing import scaled
from support.webchat import hello_frame

ROOT = Path(__file__).resolve().parents[2]

# -- operators at the desk -------------------------------------------------------------------------


@dataclass
class DeskReplica:
    name: str
    proc: ServiceProcess
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class DeskError(Exception):
    """The desk answered 5xx or could not be reached: the operator tries again (on another replica)."""


@dataclass
class OperatorLog:
    """What one scripted operator did, for the report and the recovery gaps."""

    closed: int = 0
    page_opens: int = 0
    reloads_that_found_chats: int = 0  # an idle page reloaded and its snapshot showed chats no push had shown
    desk_at: list[tuple[float, str]] = field(default_factory=list)  # (since, replica) where its page was
    posts: int = 0  # HTTP calls to the page's API (accept, reply, close, status)
    reopened_after: Counter[str] = field(default_factory=Counter)  # why the page was opened again
    post_seconds: float = 0.0  # the time they took, together


class DeskOperator:
    """An operator who works like the desk page: signs in, keeps the live page (WebSocket) open, answers
    every chat it shows (accept, reply, close over the page's HTTP API; ``AT_ONCE`` chats at a time) and,
    when the page drops, opens it again with a short back-off on whichever replica the load balancer gives
    (the other one first).

    An idle page is reloaded now and then (a new snapshot), as a person would; the report counts the
    reloads that showed a chat no push had shown, so a lost push is visible, not hidden.
    """

    RELOAD_AFTER = 5.0  # seconds with nothing shown before the operator reloads the page
    # Chats answered at once, each accept -> reply -> close in order, as a person with several chats open
    # does (the line's max_chats_per_operator still decides how many are theirs).
    AT_ONCE = 4

    def __init__(self, login: str, password: str, desks: list[DeskReplica], answer: str) -> None:
        self.login, self.password = login, password
        self.desks = desks
        self.answer = answer
        self.at = random.randrange(len(desks))
        self.log = OperatorLog()
        self.chats: dict[str, dict[str, Any]] = {}
        self.csrf = ""
        self.status_lost = False  # the page said the operator is no longer online: set it again

    @property
    def desk(self) -> DeskReplica:
        return self.desks[self.at]

    async def run(self, done: asyncio.Event) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            while not done.is_set():
                try:
                    await self._shift(http, done)
                except Exception as exc:
                    # The replica died or answered 5xx - or its socket closed before the snapshot, which
                    # receive_json raises as TypeError: an operator who stopped here would leave every
                    # later chat of theirs unanswered. The page reconnects, to the other replica first.
                    why = re.sub(r"/api/sessions/[^/]+/", "/api/sessions/*/", str(exc))[:80]
                    self.log.reopened_after[f"{type(exc).__name__}: {why}"] += 1
                if not done.is_set():
                    self.at = (self.at + 1) % len(self.desks)
                    await asyncio.sleep(0.3 + random.random() * 0.4)  # the page's reconnect back-off

    async def _sign_in(self, http: aiohttp.ClientSession) -> None:
        base = self.desk.base
        login = await http.get(f"{base}/login")
        page = await login.text()
        if login.url.path == "/login":
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            if token is None:
                raise DeskError("no login form")
            r = await http.post(
                f"{base}/login",
                data={"login": self.login, "password": self.password, "csrf_token": token.group(1)},
                allow_redirects=False,
            )
            if r.status != 303:
                raise DeskError(f"sign-in answered {r.status}")
            page = await (await http.get(f"{base}/")).text()
        # else signed in already (the workspace failed to load after an earlier sign-in, NATS away): /login
        # shows the workspace, as it would in a browser - its form's token is not a sign-in form's
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        if csrf is None:
            raise DeskError("no CSRF token on the workspace")
        self.csrf = csrf.group(1)

    async def _post(self, http: aiohttp.ClientSession, path: str, body: dict[str, Any] | None = None) -> int:
        base = self.desk.base
        began = time.monotonic()
        try:
            return await self._call(http, base, path, body)
        finally:
            self.log.posts += 1
            self.log.post_seconds += time.monotonic() - began

    async def _call(self, http: aiohttp.ClientSession, base: str, path: str, body: dict[str, Any] | None) -> int:
        async with http.post(
            f"{base}{path}",
            json=body or {},
            headers={"X-CSRF-Token": self.csrf, "Origin": base},
            timeout=aiohttp.ClientTimeout(total=scaled(15)),
        ) as r:
            await r.read()
            if r.status >= 500 or r.status == 401:
                raise DeskError(f"{path}: {r.status}")
            return r.status

    async def _shift(self, http: aiohttp.ClientSession, done: asyncio.Event) -> None:
        if not self.csrf:
            await self._sign_in(http)
        base = self.desk.base
        async with http.ws_connect(f"{base}/ws", headers={"Origin": base}, heartbeat=5.0) as ws:
            first = await ws.receive_json(timeout=scaled(15))
            if first.get("type") != "snapshot":
                raise DeskError(f"first frame {first.get('type')}")
            self.log.page_opens += 1
            self.log.desk_at.append((time.time(), self.desk.name))
            self.chats = {str(c["id"]): c for c in first["chats"]}
            if first["operator"]["status"] != "online":
                await self._post(http, "/api/status", {"status": "online"})
            changed = asyncio.Event()
            changed.set()
            reader = asyncio.create_task(self._read(ws, changed))
            try:
                idle_since = time.monotonic()
                while not done.is_set() and not reader.done():
                    try:
                        await asyncio.wait_for(changed.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                    changed.clear()
                    if await self._work(http):
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > self.RELOAD_AFTER:
                        await self._reload(http)
                        idle_since = time.monotonic()
                if reader.done() and reader.exception() is not None:
                    raise DeskError(f"page ended: {reader.exception()!r}")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _reload(self, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{self.desk.base}/api/chats", timeout=aiohttp.ClientTimeout(total=scaled(15))) as r:
            if r.status != 200:
                raise DeskError(f"/api/chats: {r.status}")
            chats = (await r.json())["chats"]
        mine = {str(c["id"]): c for c in chats if self._open_for_me(c)}
        if mine:
            self.log.reloads_that_found_chats += 1
            self.chats.update(mine)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, changed: asyncio.Event) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if kind == "chat":
                self.chats[str(frame["chat"]["id"])] = frame["chat"]
            elif kind == "closed":
                self.chats.pop(str(frame["session_id"]), None)
            elif kind == "status" and frame.get("status") != "online":
                self.status_lost = True
            changed.set()

    def _open_for_me(self, chat: dict[str, Any]) -> bool:
        return chat.get("operator_id") == self.login and chat.get("status") in ("assigned", "answered")

    async def _work(self, http: aiohttp.ClientSession) -> bool:
        """Answer and close every chat the page shows; True if there was any."""
        if self.status_lost:
            self.status_lost = False
            await self._post(http, "/api/status", {"status": "online"})
        todo = [(sid, c) for sid, c in self.chats.items() if self._open_for_me(c)]
        at_once = asyncio.Semaphore(self.AT_ONCE)

        async def answer(sid: str, chat: dict[str, Any]) -> None:
            async with at_once:
                if chat.get("status") == "assigned":
                    await self._post(http, f"/api/sessions/{sid}/accept")  # 409 if already answered: reply anyway
                status = await self._post(http, f"/api/sessions/{sid}/reply", {"text": self.answer, "client_msg_id": "a1"})
                if status == 200:
                    status = await self._post(http, f"/api/sessions/{sid}/close")
                if status == 200:
                    self.log.closed += 1
                self.chats.pop(sid, None)  # done, or no longer this operator's (4xx with the reason)

        # A failure (the replica died) reopens the page once the chats in hand are through (or failed too):
        # what was not done comes again in its snapshot.
        results = await asyncio.gather(*(answer(sid, chat) for sid, chat in todo), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        for sid in [sid for sid, c in self.chats.items() if not self._open_for_me(c)]:
            self.chats.pop(sid, None)
        return bool(todo)


# -- where the time goes -----------------------------------------------------------------------------


class Phases:
    """Where a run's time goes: each phase's seconds (summed when a phase comes again, e.g. one per fault
    kind), printed as it ends so a long run shows its progress."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.longest: dict[str, float] = defaultdict(float)

    def say(self, what: str) -> None:
        print(f"[chaos {time.monotonic() - self.began:8.1f}s] {what}", flush=True)

    def add(self, phase: str, seconds: float, note: str = "") -> None:
        self.seconds[phase] += seconds
        self.counts[phase] += 1
        self.longest[phase] = max(self.longest[phase], seconds)
        self.say(f"{phase}: {seconds:.1f}s{' - ' + note if note else ''}")

    def timed(self, phase: str, note: str = "") -> _Span:
        return _Span(self, phase, note)

    def report(self) -> dict[str, Any]:
        return {
            phase: {"seconds": round(s, 1), "times": self.counts[phase], "longest": round(self.longest[phase], 1)}
            for phase, s in self.seconds.items()
        }


class CpuMeter:
    """CPU seconds each process of the run used, read from /proc just before it is killed or stopped (a
    killed process's time is gone once it is reaped), by service name; the test process's own too (it runs
    the clients, the operators, the messenger and CRM peers and the NATS relays). Their sum over the cores
    is what the run needs at the least on a quiet machine."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._own = time.process_time()
        self._tick = float(os.sysconf("SC_CLK_TCK"))

    def charge(self, name: str, proc: Any) -> None:
        """Count ``proc`` (a Popen or None) under ``name``: call it right before the process ends."""
        if proc is None:
            return
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        self.seconds[name] += (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def report(self) -> dict[str, float]:
        out = {name: round(s, 1) for name, s in sorted(self.seconds.items())}
        out["test process"] = round(time.process_time() - self._own, 1)
        out["total"] = round(sum(out.values()), 1)
        return out


class _Span:
    def __init__(self, phases: Phases, phase: str, note: str) -> None:
        self.phases, self.phase, self.note = phases, phase, note

    def __enter__(self) -> None:
        self.began = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.phases.add(self.phase, time.monotonic() - self.began, self.note)


# -- webchat visitors waiting for their answer ---------------------------------------------------------


@dataclass
class VisitorInbox:
    """What one visitor's sockets received: reply id -> times, and the texts."""

    token: str = ""
    last_seq: int = 0
    reply_ids: Counter[str] = field(default_factory=Counter)
    texts: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0


async def wait_for_answer(http: aiohttp.ClientSession, url: str, inbox: VisitorInbox, answer: str, done: asyncio.Event) -> None:
    """The widget after its message was acknowledged: it keeps its socket open until the operator's answer
    arrives, and when the socket drops it reconnects with its token and ``since`` = the last reply it
    got, so the gateway replays what it missed - the answer must arrive exactly once."""
    while not inbox.texts[answer] and not done.is_set():
        try:
            # No pings of its own, as a browser's widget (the gateway pings every 25 s; a killed gateway's
            # socket closes at once): thousands of waiting visitors pinging every few seconds cost the
            # gateway and this process CPU that the run needs.
            async with http.ws_connect(f"{url}/ws/demo", timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5)) as ws:
                await ws.send_json(hello_frame(inbox.token, since=inbox.last_seq))
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(msg.data)
                    if frame.get("type") == "welcome":
                        inbox.token = frame["token"]
                    elif frame.get("type") == "reply":
                        inbox.reply_ids[str(frame["id"])] += 1
                        inbox.texts[str(frame.get("text", ""))] += 1
                        inbox.last_seq = max(inbox.last_seq, int(frame.get("seq", 0)))
                        if frame.get("text") == answer:
                            return
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            pass
        inbox.reconnects += 1
        await asyncio.sleep(0.3 + random.random() * 0.5)  # the widget's reconnect back-off


def visitor_figures(inboxes: Iterable[VisitorInbox], answer: str) -> dict[str, int]:
    boxes = list(inboxes)
    return {
        "webchat_visitors": len(boxes),
        "webchat_answers_lost_at_visitor": sum(1 for b in boxes if b.texts[answer] == 0),
        "webchat_replies_doubled_at_visitor": sum(1 for b in boxes for n in b.reply_ids.values() if n > 1)
        + sum(1 for b in boxes if b.texts[answer] > 1),
        "webchat_visitor_reconnects": sum(b.reconnects for b in boxes),
    }


# -- CRM records counted for doubles --------------------------------------------------------------------


def doubles(origins: Iterable[str]) -> int:
    """Records beyond the first for one origin (a chat, a session)."""
    return sum(n - 1 for n in Counter(origins).values() if n > 1)


def bitrix24_figures(peer: Any) -> dict[str, Any]:
    """Every kind of record the peer holds, and how many are second records for the same origin."""
    figures: dict[str, Any] = {}
    for kind, rows in (
        ("leads", peer.leads()),
        ("contacts", peer.contacts()),
        ("deals", peer.deals()),
        ("activities", peer.activities()),
    ):
        figures[f"crm_{kind}"] = len(rows)
        figures[f"duplicate_crm_{kind}"] = doubles(str(r.get("ORIGIN_ID", "")) for r in rows if r.get("ORIGIN_ID"))
    figures["bitrix24_throttled"] = {code: peer.refused(code) for code in ("QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT")}
    figures["bitrix24_calls"] = len(peer.calls)
    return figures


async def builtin_figures(js: Any) -> dict[str, Any]:
    from crm_sync.backends.builtin import BuiltinBackend

    crm = await BuiltinBackend.open(js)
    figures: dict[str, Any] = {}
    for kind in ("lead", "contact", "deal"):
        rows = await crm.entities(kind)  # type: ignore[arg-type]
        figures[f"crm_{kind}s"] = len(rows)
        figures[f"duplicate_crm_{kind}s"] = doubles(e.origin for e in rows if e.origin)
    acts = await crm.activities()
    figures["crm_activities"] = len(acts)
    figures["duplicate_crm_activities"] = doubles(a.session_id for a in acts)
    return figures


CRM_DOUBLES = ("duplicate_crm_leads", "duplicate_crm_contacts", "duplicate_crm_deals", "duplicate_crm_activities")


# -- recovery: the longest gap in routing after each kind of kill ------------------------------------


@dataclass
class Kill:
    kind: str  # router | desk | nats | gateway | crm | nats-drop | nats-cut
    target: str
    at: float  # wall clock
    in_flight: int  # clients whose message was not yet acknowledged at that moment (being written, or next)
    operators_on_it: list[str] = field(default_factory=list)  # desk: whose page was on the killed replica
    new_leaders_at: float | None = None  # a node of a cluster: when everything routing needs had a leader again


WINDOW = 10.0  # seconds after a kill in which a client message's wait for routing counts towards its gap


@dataclass
class Routed:
    """When the router wrote each transcript line (the time JetStream stored it), and for each client
    message when its gateway received it."""

    lines: list[float] = field(default_factory=list)
    messages: list[tuple[float, float]] = field(default_factory=list)  # (received, routed)
    ids: list[str] = field(default_factory=list)  # each message's id, as ``messages``


async def read_routed(js: Any, stream: str, subject: str) -> tuple[Routed, list[bytes]]:
    """Every message of ``subject`` with the time it was stored (one ephemeral consumer, deleted after)."""
    import uuid

    from nats.js import api as js_api

    from openlines.envelopes import HistoryEntry, decoder

    decode = decoder(HistoryEntry)
    cfg = js_api.ConsumerConfig(
        name=uuid.uuid4().hex,
        filter_subject=subject,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, cfg)
    remaining = info.num_pending or 0
    routed, datas = Routed(), []
    try:
        psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        while remaining > 0:
            for msg in await psub.fetch(batch=min(256, remaining), timeout=5.0):
                remaining -= 1
                stored = msg.metadata.timestamp.timestamp()
                entry = decode.decode(msg.data)
                routed.lines.append(stored)
                if entry.direction == "in":
                    routed.messages.append((entry.at.timestamp(), stored))
                    routed.ids.append(entry.id)
                datas.append(msg.data)
        await psub.unsubscribe()
    finally:
        await js.delete_consumer(stream, info.name)
    routed.lines.sort()
    return routed, datas


def pause_across(times: list[float], at: float) -> float | None:
    """The pause in ``times`` that spans ``at``: from the last one before it to the first one after it.
    (When nothing was waiting to be routed it counts idle time too: an upper bound.)"""
    i = bisect.bisect_right(times, at)
    if i == len(times):
        return None
    return times[i] - (times[i - 1] if i else at)


def longest_wait(messages: list[tuple[float, float]], at: float, window: float = WINDOW) -> float:
    """The longest a client message received from a second before ``at`` to ``window`` after it waited
    between its gateway storing it and the router writing it into the transcript."""
    return max((routed - received for received, routed in messages if at - 1 <= received <= at + window), default=0.0)


def slowest(routed: Routed, at: float, window: float = WINDOW) -> str:
    """The message whose wait :func:`longest_wait` counts around ``at``: its id, when it came relative to
    ``at`` and how long it waited - to find in the services' logs what held it."""
    found = [
        (done - came, came, ident)
        for (came, done), ident in zip(routed.messages, routed.ids, strict=False)
        if at - 1 <= came <= at + window
    ]
    if not found:
        return ""
    wait, came, ident = max(found)
    return f"{ident} came {came - at:+.2f} s from the fault, waited {wait:.2f} s"


def lag_after(routed: Routed, at: float, leaders: float, window: float = WINDOW) -> float:
    """How long after ``leaders`` (a cluster's new leaders, a node killed at ``at``) routing still lagged: the
    first transcript line after the kill, and each client message received from a second before the kill to
    ``window`` after it routed - each counted from the new leaders, or from when the message came if later.

    Not ``at`` + the gap: the gap's pause starts at the last line *before* the kill and a message's wait
    when it came (up to a second before the kill); added to the kill's time they would count that second
    again as lag after the leaders."""
    return _lag_after(routed, at, leaders, window)[0]


def lag_after_slowest(routed: Routed, at: float, leaders: float, window: float = WINDOW) -> str:
    """The message whose lag :func:`lag_after` counts (or the first transcript line after the kill): to
    find in the services' logs what held routing after the new leaders."""
    return _lag_after(routed, at, leaders, window)[1]


def _lag_after(routed: Routed, at: float, leaders: float, window: float) -> tuple[float, str]:
    i = bisect.bisect_right(routed.lines, at)
    first = routed.lines[i] - leaders if i < len(routed.lines) else 0.0
    ids = routed.ids or [""] * len(routed.messages)
    found = [
        (done - max(came, leaders), came, done, ident)
        for (came, done), ident in zip(routed.messages, ids, strict=True)
        if at - 1 <= came <= at + window
    ]
    if not found or max(found)[0] <= first:
        return max(0.0, first), f"the first transcript line after the kill, {first:.2f} s after the new leaders"
    lag, came, done, ident = max(found)
    routed_at = f"routed {done - at:+.2f} s, {lag:.2f} s after the new leaders"
    return max(0.0, lag), f"{ident} came {came - at:+.2f} s from the fault, {routed_at}"


def recovery(kills: list[Kill], routed: Routed, operators: dict[str, OperatorLog]) -> dict[str, Any]:
    """Per kind of kill, the longest gap in routing after one: the longer of the pause in transcript
    lines across the kill and the longest wait of a client message around it. For a desk replica: until
    the page of every operator it served was open again (on the other replica)."""
    out: dict[str, Any] = {}
    starts = sorted(k.at for k in kills)
    for kind in ("router", "desk", "nats", "nats-drop", "nats-cut"):
        gaps: list[float] = []
        detail: list[dict[str, Any]] = []  # per kill: what the gap is made of
        for k in (k for k in kills if k.kind == kind):
            if kind == "desk":
                back = [min((t for t, _ in operators[op].desk_at if t > k.at), default=None) for op in k.operators_on_it]
                if not back:
                    continue  # no page was on it
                if any(t is None for t in back):
                    gaps.append(float("inf"))
                    continue
                gaps.append(max(t - k.at for t in back if t is not None))
                detail.append({"pages": len(back)})
                continue
            pause = pause_across(routed.lines, k.at)
            later = [t for t in starts if t > k.at]
            # Up to the next fault at most: a wait it caused is not this one's.
            window = min(WINDOW, later[0] - k.at) if later else WINDOW
            wait = longest_wait(routed.messages, k.at, window)
            gap = max(pause or 0.0, wait)
            gaps.append(gap)
            parts: dict[str, Any] = {"pause": round(pause or 0.0, 2), "message_wait": round(wait, 2)}
            if routed.ids:
                parts["slowest"] = slowest(routed, k.at, window)
            if k.new_leaders_at is not None:
                parts["new_leaders_after"] = round(k.new_leaders_at - k.at, 2)
                parts["gap_after_new_leaders"] = round(lag_after(routed, k.at, k.new_leaders_at, window), 2)
                if routed.ids:
                    parts["slowest_after_new_leaders"] = lag_after_slowest(routed, k.at, k.new_leaders_at, window)
            detail.append(parts)
        if gaps:
            out[kind] = {"kills": len(gaps), "longest_gap_seconds": round(max(gaps), 2), "gaps": [round(g, 2) for g in gaps]}
            after = [d["gap_after_new_leaders"] for d in detail if "gap_after_new_leaders" in d]
            if after:
                out[kind]["longest_gap_after_new_leaders_seconds"] = max(after)
            if detail:
                out[kind]["detail"] = detail
    out["quiet"] = quiet_waits(routed.messages, starts)
    if routed.ids:
        out["quiet"]["slowest"] = quiet_slowest(routed, starts)
    return out


def quiet_waits(messages: list[tuple[float, float]], faults: list[float], window: float = WINDOW) -> dict[str, float | int]:
    """The waits for routing of the client messages no fault was near (received outside every fault's
    window): what a gap is to be read against - on a loaded machine routing is slower with no fault too."""
    waits = sorted(
        routed - received for received, routed in messages if not any(at - 1 <= received <= at + window for at in faults)
    )
    if not waits:
        return {"messages": 0}
    return {
        "messages": len(waits),
        "median_wait_seconds": round(waits[len(waits) // 2], 2),
        "p90_wait_seconds": round(waits[int(len(waits) * 0.9)], 2),
        "longest_wait_seconds": round(waits[-1], 2),
    }


def quiet_slowest(routed: Routed, faults: list[float], window: float = WINDOW, count: int = 5) -> list[str]:
    """The ``count`` client messages that waited longest with no fault near: each id, when it came from the
    fault before it and its wait - a long wait with no fault is routing's own, to find in the logs."""
    found = sorted(
        (
            (done - came, came, ident)
            for (came, done), ident in zip(routed.messages, routed.ids, strict=False)
            if not any(at - 1 <= came <= at + window for at in faults)
        ),
        reverse=True,
    )[:count]
    out = []
    for wait, came, ident in found:
        before = [at for at in faults if at < came]
        since = f"{came - max(before):.1f} s after a fault" if before else "before the first fault"
        out.append(f"{ident} came {since}, waited {wait:.2f} s")
    return out


RECOVERY_TARGETS = {"router": 2.0, "desk": 2.0, "nats": 5.0}  # seconds; nats: a node of a 3-node cluster
# A node of three: what is asserted is the gap after the cluster's new leaders (decision 028). The raft of
# nats-server elects them 4-9 s after a leader stops, a fixed timeout no client or setting can shorten.
AFTER_NEW_LEADERS_TARGET = 2.0


# -- when a NATS cluster had new leaders -------------------------------------------------------------------

LEADER = re.compile(r"^\[\d+\] (\S+ \S+) \[INF\] JetStream cluster new (?:stream|consumer) leader for '(.+)'$")

# What routing a client message needs: its partition's consumer, and the streams and buckets it writes.
ROUTING_PATH = re.compile(
    r"\$G > (OL_IN|OL_HIST|OL_EVT|OL_OUT|KV_ol-sessions|KV_ol-clients|KV_ol-waiting|KV_ol-operators|KV_ol-router)"
    r"( > router-p\d+)?$"
)


def elections_after(nodes: Iterable[Any], killed_at: float, until: float | None = None) -> float:
    """When the last stream or consumer on the routing path that lost its leader in the kill had a new one
    (the servers' logs - ``node.log`` - in local time): the first new leader of each after the kill and
    before ``until`` (30 s after it at most), the latest of those; ``killed_at`` when none moved."""
    end = min(until or killed_at + 30, killed_at + 30)
    first: dict[str, float] = {}
    for node in nodes:
        for line in node.log.read_text(errors="replace").splitlines():
            m = LEADER.match(line)
            if m is None or not ROUTING_PATH.match(m.group(2)):
                continue
            whole, fraction = m.group(1).split(".")
            at = time.mktime(time.strptime(whole, "%Y/%m/%d %H:%M:%S")) + float("0." + fraction)
            if killed_at < at < end:
                first[m.group(2)] = min(first.get(m.group(2), at), at)
    return max(first.values(), default=killed_at)


# -- the saved report --------------------------------------------------------------------------------------


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def save_report(directory: str, run: str, report: dict[str, Any]) -> Path:
    """``<directory>/chaos-<run>.json``: the report with its date, commit and machine; the previous one is
    in git history."""
    import os

    out = Path(directory) / f"chaos-{run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {"cores": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]},
        **report,
    }
    out.write_text(json.dumps(saved, indent=2, sort_keys=False) + "\n")
    return out


def by_kind(kills: list[Kill]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for k in kills:
        counts[k.target] += 1
    return dict(counts)
