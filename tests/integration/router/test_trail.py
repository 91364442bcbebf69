"""Every change of a session is an event and a transcript line, and the three views count alike.

Chats walk through every transition the router makes - queued, offered, accepted, pinned and unpinned,
skipped, transferred to an operator and to a line, moved off an operator who went away, intercepted by
a supervisor, answered by a reply, closed unanswered and answered, rated - with operators working through
the desk's HTTP API, as the workspace does. Then:

- the event stream and the transcripts tell the same story: each session event ``<id>`` has the
  transcript line ``note:<id>``, and each transcript note has its event;
- the statistics (``/api/v1/stats``), the sessions API (``/api/v1/sessions``) and the supervisor view
  (``/api/supervisor``) count the same chats as answered, missed and open unanswered - an intercepted
  chat counting as answered in all three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from support import client_writes, history, session_by_id, session_of
from support.desk import desk_with_router, http_session, sign_in
from support.desk_admin import DEMO_HASH, bearer, make_token
from support.timing import wait_for

from desk.api import PREFIX
from openlines import bus, subjects
from openlines.envelopes import SessionEvent

LINES = f"""
[operators.anna]
name = "Anna"
password_hash = "{DEMO_HASH}"
[operators.boris]
name = "Boris"
password_hash = "{DEMO_HASH}"
[operators.root]
name = "Root"
password_hash = "{DEMO_HASH}"
roles = ["operator", "supervisor"]

[[lines]]
id = "support"
name = "Support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
mode = "strict"
operators = ["anna", "boris"]
wait_seconds = 600
reassign_on_status = "all"
[lines.session]
rating = true

[[lines]]
id = "sales"
name = "Sales"
channels = [{{ channel = "webchat", account = "shop" }}]
[lines.queue]
mode = "strict"
operators = ["boris"]
wait_seconds = 600
"""

# The kinds the router publishes about one session (crm_linked and delivery_failed come from other services).
ROUTER_KINDS = (
    "session_opened",
    "session_waiting",
    "session_held",
    "session_flagged",
    "session_assigned",
    "offer_declined",
    "session_answered",
    "session_transferred",
    "session_moved",
    "session_pinned",
    "session_closed",
    "session_rated",
)


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    async with desk_with_router(nc, nats_server.url, lines=LINES) as svc:
        yield svc


class Op:
    """An operator signed in to the desk, acting through its HTTP API."""

    def __init__(self, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        self.http, self.headers = http, headers

    async def do(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.http.post(path, json=body or {}, headers=self.headers)
        assert r.status == 200, f"{path}: {r.status} {await r.text()}"
        return dict(await r.json())

    async def status(self, status: str) -> None:
        await self.do("/api/status", {"status": status})

    async def on(self, sid: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.do(f"/api/sessions/{sid}/{action}", body)


async def _opened(nc: Any, visitor: str, status: str, operator: str = "") -> str:
    """The id of the session ``visitor`` opened, once it is ``status`` (with ``operator``)."""

    async def probe() -> str | None:
        s = await session_of(nc, visitor)
        return s.id if s is not None and s.status == status and s.operator_id == operator else None

    return await wait_for(probe, timeout=15, what=f"{visitor}'s chat {status} {operator}")


async def _status_is(nc: Any, sid: str, status: str, operator: str) -> None:
    async def probe() -> bool:
        s = await session_by_id(nc, sid)
        return s.status == status and s.operator_id == operator

    await wait_for(probe, timeout=15, what=f"{sid} {status} with {operator}")


async def _router_events(nc: Any) -> list[SessionEvent]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, f"{subjects.EVT_ROOT}.>")
    found = [msgspec.json.decode(data, type=SessionEvent) for _, data in rows]
    return [e for e in found if e.kind in ROUTER_KINDS]


async def test_every_transition_is_an_event_and_a_transcript_line_and_the_three_views_count_alike(nc: Any, desk: Any) -> None:
    async with http_session(desk) as h_anna, http_session(desk) as h_boris, http_session(desk) as h_root:
        anna = Op(h_anna, await sign_in(h_anna, "anna"))
        boris = Op(h_boris, await sign_in(h_boris, "boris"))
        root = Op(h_root, await sign_in(h_root, "root"))

        # Queued: nobody is online. Then offered to Anna as she comes online; accepted; pinned, unpinned, pinned.
        await client_writes(nc, "v1", "m1", "Hello")
        s1 = await _opened(nc, "v1", "waiting")
        await anna.status("online")
        await _status_is(nc, s1, "assigned", "anna")
        await anna.on(s1, "accept")
        for pinned in (True, False, True):
            await anna.on(s1, "pin", {"pinned": pinned})

        # Skipped by Anna, offered to Boris, accepted, transferred to Anna, accepted by her.
        await boris.status("online")
        await client_writes(nc, "v2", "m1", "Question")
        s2 = await _opened(nc, "v2", "assigned", "anna")
        await anna.on(s2, "skip")
        await _status_is(nc, s2, "assigned", "boris")
        await boris.on(s2, "accept")
        await boris.on(s2, "transfer", {"to_operator": "anna"})
        await anna.on(s2, "accept")

        # Offered to Anna, intercepted by a supervisor before anyone answered: answered, and counted so.
        await client_writes(nc, "v3", "m1", "Urgent")
        s3 = await _opened(nc, "v3", "assigned", "anna")
        await root.on(s3, "intercept")

        # Anna goes away: her pinned chat stays, the other answered one moves on (reassign_on_status = "all").
        await anna.status("away")
        await _status_is(nc, s2, "assigned", "boris")
        assert (await session_by_id(nc, s1)).operator_id == "anna"
        # Boris accepts it, transfers it to the sales line - where he takes it again - and closes it.
        await boris.on(s2, "accept")
        await boris.on(s2, "transfer", {"to_line": "sales"})
        await _status_is(nc, s2, "assigned", "boris")
        await boris.on(s2, "accept")
        await boris.on(s2, "close")
        # Anna closes her pinned chat from away; the client rates the conversation.
        await anna.on(s1, "close")
        await client_writes(nc, "v1", "m2", "5")

        # Closed without an answer (missed); answered by a reply and left open; offered and left unanswered.
        await client_writes(nc, "v4", "m1", "Anyone?")
        s4 = await _opened(nc, "v4", "assigned", "boris")
        await boris.on(s4, "close")
        await client_writes(nc, "v5", "m1", "Price?")
        s5 = await _opened(nc, "v5", "assigned", "boris")
        await boris.on(s5, "reply", {"text": "10 euros", "client_msg_id": "r1"})
        await client_writes(nc, "v6", "m1", "Hi")
        s6 = await _opened(nc, "v6", "assigned", "boris")

        async def rated() -> bool:
            return (await session_by_id(nc, s1)).rating == 5

        await wait_for(rated, timeout=15, what="v1's rating")

        # 1. The walk, as the event stream has it.
        evts = await _router_events(nc)
        walk = {sid: [e.kind.removeprefix("session_") for e in evts if e.session_id == sid] for sid in (s1, s2, s3, s4, s5, s6)}
        assert walk == {
            s1: ["opened", "waiting", "assigned", "answered", "pinned", "pinned", "pinned", "closed", "rated"],
            s2: [
                # A transfer is told before the offer it makes ("Anna transferred the chat to Boris", then "Offered to Boris").
                "opened", "assigned", "offer_declined", "assigned", "answered", "transferred", "assigned", "answered",
                "moved", "assigned", "answered", "transferred", "assigned", "answered", "closed",
            ],
            s3: ["opened", "assigned", "transferred", "answered"],
            s4: ["opened", "assigned", "closed"],
            s5: ["opened", "assigned", "answered"],
            s6: ["opened", "assigned"],
        }  # fmt: skip

        # 2. Each event has its transcript line, and each transcript note its event.
        by_session: dict[str, set[str]] = {}
        for e in evts:
            by_session.setdefault(e.session_id, set()).add(e.id)
        for sid in walk:
            notes = {h.id.removeprefix("note:") for h in await history(nc, sid) if h.direction == "system"}
            assert notes == by_session[sid], (sid, notes ^ by_session[sid])
        moved = next(e for e in evts if e.session_id == s2 and e.kind == "session_moved")
        assert (moved.operator_id, moved.reason) == ("anna", "operator away")
        texts = [h.text for h in await history(nc, s3) if h.direction == "system"]
        assert texts == ["Opened on Support", "Offered to Anna", "Taken over by Root", "Answered by Root (taken over)"]
        # People by their names, and a transfer told before the offer it makes.
        s2_texts = [h.text for h in await history(nc, s2) if h.direction == "system"]
        told = s2_texts.index("Boris transferred the chat to Anna")
        assert s2_texts[told + 1] == "Offered to Anna", s2_texts
        assert s2_texts[-1].startswith("Closed by ") and s2_texts[-1] != "Closed by boris", s2_texts

        # 3. The three views count alike.
        token = await make_token(nc, "supervisor")
        today = datetime.now(UTC).date()
        query = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}
        r = await h_root.get(f"{PREFIX}/stats", headers=bearer(token), params=query)
        assert r.status == 200, await r.text()
        stats = {row["line_id"]: row for row in (await r.json())["lines"]}
        r = await h_root.get(f"{PREFIX}/sessions", headers=bearer(token), params=query)
        assert r.status == 200, await r.text()
        api = {s["id"]: s for s in (await r.json())["sessions"]}
        r = await h_root.get("/api/supervisor")
        assert r.status == 200, await r.text()
        view = await r.json()
        live = {row["id"]: row for line in view["lines"] for row in line["sessions"]}
        live |= {row["session_id"]: row for line in view["lines"] for row in line["waiting"]}

        assert sorted(api) == sorted(walk)
        answered = {sid for sid, s in api.items() if s.get("answered_at")}
        missed = {sid for sid, s in api.items() if s["status"] == "closed" and sid not in answered}
        open_unanswered = {sid for sid, s in api.items() if s["status"] != "closed" and sid not in answered}
        assert (answered, missed, open_unanswered) == ({s1, s2, s3, s5}, {s4}, {s6})
        assert api[s3]["status"] == "answered" and api[s3]["operator_id"] == "root"
        # Every session here was opened on support (s2 moved to sales later: the statistics count where it opened).
        support = stats["support"]
        assert (support["sessions"], support["answered"], support["missed"], support["open_unanswered"]) == (
            len(api),
            len(answered),
            len(missed),
            len(open_unanswered),
        )
        assert stats["sales"]["sessions"] == 0
        assert sorted(live) == sorted(sid for sid, s in api.items() if s["status"] != "closed")
        assert {sid for sid, row in live.items() if row["answered"]} == answered & set(live)
        assert {sid for sid, row in live.items() if not row["answered"]} == open_unanswered
        assert live[s3]["status"] == "answered" and live[s3]["operator_id"] == "root"
