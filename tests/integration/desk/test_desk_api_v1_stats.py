"""Per-line statistics from real sessions driven through the router: the API and the /stats page."""

from __future__ import annotations

import re
import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from support import client_writes, events
from support.desk import desk_with_router
from support.desk_admin import LINES, bearer, conforms, http_session, make_token, sign_in
from support.timing import wait_for

from desk.api import PREFIX
from openlines import commands
from openlines.commands import Accept, Close, Reply, SetStatus


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    async with desk_with_router(nc, nats_server.url, lines=LINES) as svc:
        yield svc


async def _open_session(http: aiohttp.ClientSession, token: str, line: str, known: set[str]) -> str:
    async def new_one() -> str | None:
        r = await http.get(f"{PREFIX}/sessions", headers=bearer(token), params={"line": line, "status": "assigned"})
        ids = [s["id"] for s in (await r.json())["sessions"] if s["id"] not in known]
        return ids[0] if ids else None

    sid = await wait_for(new_one, timeout=15, what=f"a new session on {line} offered to an operator")
    known.add(sid)
    return sid


async def _served(
    nc: Any, http: aiohttp.ClientSession, token: str, visitor: str, known: set[str], *, by_reply: bool, mark: str
) -> None:
    """A client writes, anna answers (accepts, or replies), closes, and the client rates the conversation."""
    await client_writes(nc, visitor, "m1", "Hello, I need help")
    sid = await _open_session(http, token, "support", known)
    if by_reply:
        await commands.call(nc, "reply", Reply(operator_id="anna", session_id=sid, text="Happy to help", client_msg_id="r1"))
    else:
        await commands.call(nc, "accept", Accept(operator_id="anna", session_id=sid))
    await commands.call(nc, "close", Close(operator_id="anna", session_id=sid))
    await client_writes(nc, visitor, "m2", mark)


async def test_stats_count_answers_misses_and_ratings_of_real_sessions(nc: Any, desk: Any) -> None:
    token = await make_token(nc, "supervisor")
    await commands.call(nc, "status", SetStatus(operator_id="anna", status="online"))
    known: set[str] = set()
    async with http_session(desk) as http:
        await _served(nc, http, token, "client-a", known, by_reply=False, mark="5")
        await _served(nc, http, token, "client-b", known, by_reply=True, mark="3")
        # Nobody serves the sales line (boris is offline): the chat waits and is closed after no activity.
        await client_writes(nc, "client-c", "m1", "Is anyone there?", account="shop")

        today = datetime.now(UTC).date()
        query = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}

        async def settled() -> dict[str, Any] | None:
            r = await http.get(f"{PREFIX}/stats", headers=bearer(token), params=query)
            assert r.status == 200, await r.text()
            body = await r.json()
            rows = {row["line_id"]: row for row in body["lines"]}
            done = rows["support"]["rated"] == 2 and rows["sales"]["missed"] == 1 and body["behind"] == 0
            return rows if done else None

        rows = await wait_for(settled, timeout=30, what="two ratings on support and a missed chat on sales")
        support, sales = rows["support"], rows["sales"]
        doc = await (await http.get(f"{PREFIX}/openapi.json")).json()
        conforms(doc, "stats", await (await http.get(f"{PREFIX}/stats", headers=bearer(token), params=query)).json())
        assert (support["sessions"], support["answered"], support["missed"], support["open_unanswered"]) == (2, 2, 0, 0)
        assert support["rating_avg"] == 4.0
        opened = {e.session_id: e.at for e in await events(nc, "session_opened")}
        first: dict[str, datetime] = {}
        for e in await events(nc, "session_answered"):
            first.setdefault(e.session_id, e.at)
        waits = [int((first[sid] - opened[sid]).total_seconds()) for sid in known]  # whole seconds
        assert support["first_response_avg_seconds"] == round(statistics.fmean(waits), 3)
        assert support["first_response_p50_seconds"] == statistics.median(waits)
        assert [o["operator_id"] for o in support["operators"]] == ["anna"] and support["operators"][0]["sessions"] == 2
        assert (sales["sessions"], sales["answered"], sales["missed"], sales["rating_avg"]) == (1, 0, 1, None)

        # A range before these sessions counts none of them.
        old = await (
            await http.get(f"{PREFIX}/stats", headers=bearer(token), params={"from": "2026-01-01", "to": "2026-01-31"})
        ).json()
        assert all(row["sessions"] == 0 for row in old["lines"])
        bad = await http.get(f"{PREFIX}/stats", headers=bearer(token), params={"from": today.isoformat(), "to": "2020-01-01"})
        assert bad.status == 400 and "before" in (await bad.json())["detail"]

        # The same figures on the /stats page of a supervisor, who sees only the lines whose queue lists them.
        await sign_in(http, "anna")
        page = await (await http.get("/stats", params=query)).text()
        assert 'data-testid="stats-row" data-line="support"' in page and 'data-line="sales"' not in page
        assert '<td data-testid="stat-rating">4.0</td>' in page and '<td data-testid="stat-missed">0</td>' in page
        refused = await http.get("/stats", params={**query, "line": "sales"})
        assert refused.status == 403 and "queue lists them" in await refused.text()
        refused_csv = await http.get("/stats.csv", params={**query, "line": "sales"})
        assert refused_csv.status == 403 and "queue lists them" in await refused_csv.text()
        assert (await http.get("/stats/wallboard/sales/live")).status == 403

    async with http_session(desk) as boris:
        form = await (await boris.get("/login")).text()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf
        await boris.post("/login", data={"login": "boris", "password": "demo", "csrf_token": csrf.group(1)})
        denied = await boris.get("/stats")
        assert denied.status == 403 and "admin or supervisor role" in await denied.text()
