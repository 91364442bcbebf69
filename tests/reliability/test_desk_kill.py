"""A desk replica killed with SIGKILL in the middle of a shift: presence follows what really happened.

Two desk replicas (``python -m desk``) and the router run as real processes on a real nats-server;
operators sign in over HTTP and hold real WebSocket pages, as the workspace does. A replica killed -9
reports no page closing; its heartbeat in ``ol-desk-presence`` runs out instead and the router counts
its pages closed. An operator whose page comes back on the other replica within the line's
``presence_grace_seconds`` stays online and keeps every chat; one whose page does not goes offline after
the grace, and their unanswered chats are offered to someone else - once, with nothing lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import apply_lines, client_writes, events, history, pending_timers, session_of
from support.desk_admin import DEMO_HASH, SECRET
from support.servers import NatsServer, ServiceProcess, free_port
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.state import OperatorState, Session

pytestmark = [pytest.mark.slow]

HEARTBEAT = 0.5  # seconds between a desk's renewals: its key runs out 1.5 s after it dies
SWEEP = 0.5  # seconds between the router's looks for desks that stopped renewing


def lines(grace: int) -> str:
    names = ("anna", "vera", "boris")
    ops = "\n".join(f'[operators.{op}]\nname = "{op.title()}"\npassword_hash = "{DEMO_HASH}"\n' for op in names)
    return f"""{ops}
[[lines]]
id = "support"
name = "Support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
mode = "strict"
operators = ["anna", "vera", "boris"]
max_chats_per_operator = 2
wait_seconds = 600
presence_grace_seconds = {grace}
"""


@dataclass
class Desk:
    proc: ServiceProcess
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Operator:
    """One signed-in operator: a cookie valid on every replica, and the pages they hold open."""

    login: str
    http: aiohttp.ClientSession
    csrf: str = ""
    pages: dict[str, aiohttp.ClientWebSocketResponse] = field(default_factory=dict)

    async def sign_in(self, desk: Desk) -> None:
        form = await (await self.http.get(f"{desk.base}/login")).text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token, form
        done = await self.http.post(
            f"{desk.base}/login",
            data={"login": self.login, "password": "demo", "csrf_token": token.group(1)},
            allow_redirects=False,
        )
        assert done.status == 303, await done.text()
        page = await (await self.http.get(f"{desk.base}/")).text()
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        assert csrf
        self.csrf = csrf.group(1)

    async def open_page(self, desk: Desk, name: str) -> dict[str, Any]:
        """A workspace page's live connection on ``desk``; returns its first frame (the snapshot)."""
        ws = await self.http.ws_connect(f"{desk.base}/ws", headers={"Origin": desk.base})
        self.pages[name] = ws
        first = await ws.receive_json(timeout=scaled(10))
        assert first["type"] == "snapshot", first
        return dict(first)

    async def post(self, desk: Desk, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.http.post(f"{desk.base}{path}", json=body or {}, headers={"X-CSRF-Token": self.csrf, "Origin": desk.base})
        assert r.status == 200, await r.text()
        return dict(await r.json())

    async def frame(self, name: str, want: Any, what: str) -> dict[str, Any]:
        """The next frame on page ``name`` for which ``want(frame)`` holds (others are skipped)."""
        ws = self.pages[name]
        deadline = time.monotonic() + scaled(15)
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            assert msg.type == aiohttp.WSMsgType.TEXT, f"page {name} of {self.login} ended ({msg.type}) waiting for {what}"
            frame = msg.json()
            if want(frame):
                return dict(frame)
        raise AssertionError(f"no frame on page {name} of {self.login}: {what}")


@pytest.fixture
def stack(nats_server: NatsServer, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The router and two desk replicas as processes (started by the test once the lines are applied)."""
    base = {"OPENLINES_NATS_URL": nats_server.url, "OPENLINES_LOG_LEVEL": "info"}
    router = ServiceProcess(
        "router",
        "router",
        {**base, "OPENLINES_HTTP_PORT": str(free_port()), "OPENLINES_DESK_SWEEP_SECONDS": str(SWEEP)},
        tmp_path,
    )
    desks = {}
    for name in ("a", "b"):
        port = free_port()
        env = {
            **base,
            "OPENLINES_HTTP_PORT": str(port),
            "OPENLINES_COOKIE_SECRET": SECRET,
            "OPENLINES_DESK_HEARTBEAT_SECONDS": str(HEARTBEAT),
        }
        desks[name] = Desk(ServiceProcess(f"desk-{name}", "desk", env, tmp_path), port)
    yield {"router": router, "desks": desks, "logs": tmp_path}
    for d in desks.values():
        d.proc.stop()
    router.stop()
    for name in ("router", "desk-a", "desk-b"):
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"


async def _ready(url: str, proc: ServiceProcess) -> bool:
    if proc.exited() is not None:
        raise AssertionError(f"{proc.name} exited with {proc.exited()}")
    try:
        async with aiohttp.ClientSession() as h, h.get(f"{url}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def running(nc: Any, stack: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    grace = round(scaled(4))  # time enough for a page to come back, on a loaded machine too
    await apply_lines(nc, lines(grace))
    router: ServiceProcess = stack["router"]
    router.start()
    for d in stack["desks"].values():
        d.proc.start()
    for d in stack["desks"].values():
        await wait_for(lambda d=d: _ready(d.base, d.proc), timeout=30, what=f"desk {d.proc.name} ready")
    # One browser per operator: its cookie (signed with the secret every replica shares) goes to either replica.
    sessions = {op: aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for op in ("anna", "vera", "boris")}
    try:
        yield {**stack, "grace": grace, "http": sessions}
    finally:
        for s in sessions.values():
            await s.close()


async def _operator(nc: Any, op_id: str) -> OperatorState:
    b = await bus.Buckets(nc.jetstream()).open()
    st, _ = await bus.kv_get(b.operators, op_id, OperatorState)
    return st or OperatorState(id=op_id)


async def _offered(nc: Any, visitor: str, operator: str) -> Session:
    async def probe() -> Session | None:
        s = await session_of(nc, visitor)
        return s if s is not None and s.status == "assigned" and s.operator_id == operator else None

    return await wait_for(probe, timeout=15, what=f"{visitor}'s chat offered to {operator}")


async def _desks_of(nc: Any, op_id: str, want: Any, what: str) -> OperatorState:
    async def probe() -> OperatorState | None:
        st = await _operator(nc, op_id)
        return st if want(st.desks) else None

    return await wait_for(probe, timeout=15, what=what)


async def _no_presence_timer(nc: Any, op_id: str) -> bool:
    return await pending_timers(nc, "presence", op_id) == 0


async def _heartbeats(nc: Any) -> set[str]:
    return set(await bus.kv_entries(nc.jetstream(), subjects.KV_DESK_PRESENCE))


async def test_kill_9_of_a_desk_replica_whose_operators_come_back_on_the_other_one_moves_nothing(
    nc: Any, running: dict[str, Any]
) -> None:
    a, b = running["desks"]["a"], running["desks"]["b"]
    anna, vera, boris = (Operator(op, running["http"][op]) for op in ("anna", "vera", "boris"))
    for op in (anna, vera, boris):
        await op.sign_in(a)
    # Anna has two tabs, which the load balancer put on different replicas; Vera one, on A; Boris one, on B.
    await anna.open_page(a, "a")
    await anna.open_page(b, "b")
    await vera.open_page(a, "a")
    await boris.open_page(b, "b")
    await anna.post(a, "/api/status", {"status": "online"})
    await vera.post(a, "/api/status", {"status": "online"})
    # Strict order, two chats each: Anna gets v1 and v2, Vera v3 and v4; each answers one of them.
    for i in range(1, 5):
        await client_writes(nc, f"v{i}", "m1", f"hello from v{i}")
        await _offered(nc, f"v{i}", "anna" if i <= 2 else "vera")
    await anna.post(a, f"/api/sessions/{(await session_of(nc, 'v1')).id}/accept")  # type: ignore[union-attr]
    await vera.post(a, f"/api/sessions/{(await session_of(nc, 'v3')).id}/accept")  # type: ignore[union-attr]
    await boris.post(b, "/api/status", {"status": "online"})  # free, so anything that moved would go to him
    on_a = await _desks_of(nc, "vera", lambda d: len(d) == 1, "vera's page on desk A")
    desk_a = on_a.desks[0]
    await _desks_of(nc, "anna", lambda d: len(d) == 2 and desk_a in d, "anna's pages on both replicas")
    before = {v: await session_of(nc, v) for v in ("v1", "v2", "v3", "v4")}
    assert desk_a in await _heartbeats(nc)

    a.proc.kill()  # no goodbye: the router is told nothing

    # Desk A's heartbeat runs out: Anna keeps her page on B, Vera is left with none (her grace starts).
    await _desks_of(nc, "anna", lambda d: desk_a not in d and len(d) == 1, "desk A removed from anna's pages")
    await _desks_of(nc, "vera", lambda d: d == [], "desk A removed from vera's pages")
    assert desk_a not in await _heartbeats(nc)
    assert not await _no_presence_timer(nc, "vera"), "vera's grace period is not running"
    # Vera's page reconnects to the other replica (her cookie is good there) within the grace.
    await vera.open_page(b, "b")
    await _desks_of(nc, "vera", lambda d: len(d) == 1 and desk_a not in d, "vera's page on desk B")
    # Her grace timer fires and finds a page: nothing happens. (It leaves the timer stream once fired.)
    await wait_for(lambda: _no_presence_timer(nc, "vera"), timeout=running["grace"] + 15, what="vera's grace timer fired")

    for op in ("anna", "vera"):
        assert (await _operator(nc, op)).status == "online", op
    after = {v: await session_of(nc, v) for v in before}
    for v, s in before.items():
        assert s is not None and after[v] is not None
        assert (after[v].operator_id, after[v].status, after[v].assignments) == (s.operator_id, s.status, s.assignments), v  # type: ignore[union-attr]
    assert not await events(nc, "offer_declined")
    assert not await events(nc, "session_moved")
    assert len(await events(nc, "session_assigned")) == 4
    assert [e.reason for e in await events(nc, "operator_status") if e.operator_id in ("anna", "vera")] == ["online"] * 2
    # They work on from desk B: a client's next message reaches Anna's page there.
    await client_writes(nc, "v1", "m2", "still there?")
    got = await anna.frame("b", lambda f: f.get("type") == "message" and f.get("text") == "still there?", "v1's message")
    assert got["session_id"] == before["v1"].id  # type: ignore[union-attr]


async def test_kill_9_of_a_desk_replica_sets_its_operator_offline_after_the_grace_and_moves_their_chat_once(
    nc: Any, running: dict[str, Any]
) -> None:
    a, b = running["desks"]["a"], running["desks"]["b"]
    grace = running["grace"]
    anna, boris = Operator("anna", running["http"]["anna"]), Operator("boris", running["http"]["boris"])
    await anna.sign_in(a)
    await boris.sign_in(b)
    await anna.open_page(a, "a")
    await boris.open_page(b, "b")
    await anna.post(a, "/api/status", {"status": "online"})
    await client_writes(nc, "v1", "m1", "first client")
    await client_writes(nc, "v2", "m1", "second client")
    answered = await _offered(nc, "v1", "anna")
    unanswered = await _offered(nc, "v2", "anna")
    await anna.post(a, f"/api/sessions/{answered.id}/accept")
    await boris.post(b, "/api/status", {"status": "online"})
    await _desks_of(nc, "anna", lambda d: len(d) == 1, "anna's page on desk A")

    killed_at = time.time()
    a.proc.kill()

    async def offline() -> bool:
        return (await _operator(nc, "anna")).status == "offline"

    await wait_for(offline, timeout=grace + 15, what="anna offline after the grace")
    went = [e for e in await events(nc, "operator_status") if e.operator_id == "anna" and e.reason == "offline"]
    assert len(went) == 1
    # Not before the grace: the grace counts from when the dead replica was noticed, after the kill.
    assert went[0].at.timestamp() >= killed_at + grace - 0.05, (went[0].at.timestamp() - killed_at, grace)

    # Her unanswered chat is offered to Boris - his live page shows it; her answered one stays hers
    # (reassign_on_status = "unanswered", the default).
    moved = await _offered(nc, "v2", "boris")
    assert moved.id == unanswered.id and moved.assignments == unanswered.assignments + 1
    frame = await boris.frame("b", lambda f: f.get("type") == "chat" and f["chat"]["id"] == unanswered.id, "v2 offered")
    assert frame["chat"]["status"] == "assigned"
    kept = await session_of(nc, "v1")
    assert kept is not None and (kept.operator_id, kept.status) == ("anna", "answered")
    state = await _operator(nc, "anna")
    assert unanswered.id not in state.sessions and answered.id in state.sessions

    # Nothing lost or doubled: one message in, one offer each to Anna and Boris, one pass-on.
    entries = await history(nc, unanswered.id)
    assert [e.text for e in entries if e.direction == "in"] == ["second client"]
    notes = [e.text for e in entries if e.direction == "system"]
    assert notes.count("Offered to Anna") == 1 and notes.count("Offered to Boris") == 1, notes
    assert notes.count("Passed on: operator away") == 1, notes
    offers = [e.operator_id for e in await events(nc, "session_assigned") if e.session_id == unanswered.id]
    assert offers == ["anna", "boris"]
    declined = [e for e in await events(nc, "offer_declined") if e.session_id == unanswered.id]
    assert [(e.operator_id, e.reason) for e in declined] == [("anna", "operator away")]
    # A new client now goes straight to Boris.
    await client_writes(nc, "v3", "m1", "third client")
    await _offered(nc, "v3", "boris")
