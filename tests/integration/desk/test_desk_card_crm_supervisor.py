"""The desk's client card, CRM page and supervisor view over real HTTP, with the
real router, the real crm-sync (built-in CRM) and a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import apply_lines, client_writes, held_session, leave_line
from support.crm import linked, running_crm_sync
from support.desk import desk_with_router, http_session, running_desk, sign_in
from support.timing import wait_for

from desk.settings import Settings
from openlines import bus
from openlines.commands import Accept, Close, SetStatus, call
from openlines.runner import Service
from openlines.state import QueuedChat, waiting_key


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    # deploy/lines.example.toml: line "support", anna (operator + supervisor), boris (operator)
    async with desk_with_router(nc, nats_server.url) as svc:
        yield svc


async def test_client_card_shows_profile_crm_lead_and_the_earlier_conversation(
    nc: Any, nats_server: Any, desk: Service[Settings]
) -> None:
    async with running_crm_sync(nats_server.url), http_session(desk) as anna, http_session(desk) as boris:
        await sign_in(anna, "anna")
        await sign_in(boris, "boris")
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await client_writes(nc, "v-card", "1", "Hello, where is my order?", name="Marta Ozola", email="Marta@Example.com")
        first = await held_session(nc, "v-card")
        assert first.operator_id == "anna"
        await linked(nc, first.id)
        await call(nc, "accept", Accept(operator_id="anna", session_id=first.id))
        await call(nc, "close", Close(operator_id="anna", session_id=first.id))

        # The same client comes back while only boris, a plain operator, is online.
        await call(nc, "status", SetStatus(operator_id="anna", status="offline"))
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await client_writes(nc, "v-card", "2", "Me again, my phone is +371 2000 0001", name="Marta Ozola", phone="+37120000001")
        second = await held_session(nc, "v-card", other_than=first.id)
        assert second.operator_id == "boris"
        await linked(nc, second.id)

        async def card_with_the_earlier_one() -> dict[str, Any] | None:
            # The earlier conversations come from the desk's index, which follows the sessions a moment behind.
            r = await boris.get(f"/api/sessions/{second.id}/client")
            assert r.status == 200, await r.text()
            got: dict[str, Any] = await r.json()
            return got if got["previous"] else None

        from desk.http import DESK

        await wait_for(lambda: desk.app[DESK].index.ready, what="the desk's index caught up")
        card = await wait_for(card_with_the_earlier_one, what="the card with the earlier conversation")
        assert card["client"]["name"] == "Marta Ozola"
        assert card["client"]["email"] == "Marta@Example.com" and card["client"]["phone"] == "+37120000001"
        assert card["client"]["channel"] == "webchat" and card["client"]["sessions_total"] == 2
        assert card["crm"]["backend"] == "builtin" and card["crm"]["linked"] is True
        [lead] = [x for x in card["crm"]["records"] if x["kind"] == "lead"]
        assert lead["url"] == f"/crm?record=lead-{lead['id']}#lead-{lead['id']}"
        assert [p["id"] for p in card["previous"]] == [first.id]
        assert card["previous"][0]["status"] == "closed" and card["previous"][0]["line_name"] == "Customer support"
        assert card["previous"][0]["outcome"] == "closed by Anna Petrova"  # a person's name, not "operator"
        assert card["previous_limit"] == {"from": "index", "events_scanned": 20_000, "shown": 10}

        # Holding the client's chat lets boris read the earlier conversation anna had.
        earlier = await boris.get(f"/api/sessions/{first.id}/history")
        assert earlier.status == 200
        assert "Hello, where is my order?" in [e["text"] for e in (await earlier.json())["entries"]]
        page = await boris.get(f"/transcript/{first.id}")
        assert page.status == 200 and "Hello, where is my order?" in await page.text()

        # The lead on the CRM page: source, stage, both conversations and their transcript links.
        crm = await (await boris.get("/api/crm")).json()
        [row] = crm["records"]["lead"]
        assert (row["id"], row["source_id"], row["stage"], row["name"]) == (lead["id"], "OPENLINE", "NEW", "Marta Ozola")
        assert {a["session_id"] for a in crm["activities"][f"lead-{lead['id']}"]} == {first.id, second.id}
        html = await (await boris.get(f"/crm?record=lead-{lead['id']}")).text()
        assert 'data-testid="crm-lead"' in html and "OPENLINE" in html and f'href="/transcript/{first.id}"' in html
        assert 'class="selected"' in html

        # Search by e-mail (any case), by phone digits, and a miss.
        assert len((await (await boris.get("/api/crm", params={"q": "marta@example"})).json())["records"]["lead"]) == 1
        assert len((await (await boris.get("/api/crm", params={"q": "2000 0001"})).json())["records"]["lead"]) == 1
        assert (await (await boris.get("/api/crm", params={"q": "nobody-like-this"})).json())["records"]["lead"] == []
        bad = await boris.get("/api/crm", params={"record": "lead-x"})
        assert bad.status == 400 and "lead-5" in (await bad.json())["detail"]
        assert (await boris.get("/api/crm", params={"q": "x" * 101})).status == 400


async def test_a_plain_operator_gets_no_card_of_a_chat_of_a_line_they_are_not_on(nc: Any, desk: Service[Settings]) -> None:
    async with http_session(desk) as boris:
        await sign_in(boris, "boris")
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await client_writes(nc, "v-other", "1", "hi", name="Ivo")
        s = await held_session(nc, "v-other")
        assert s.operator_id == "anna"
        assert (await boris.get(f"/api/sessions/{s.id}/client")).status == 200  # a chat of his line
        await leave_line(nc, "boris", "support")

        async def refused() -> Any:
            r = await boris.get(f"/api/sessions/{s.id}/client")
            return r.status == 403 and (await r.json())["error"] == "forbidden"

        await wait_for(refused, what="the card refused to an operator off the line")
        assert (await boris.get(f"/transcript/{s.id}")).status == 403
        assert (await boris.get("/api/sessions/bad.id/client")).status == 404


async def test_crm_page_without_crm_sync_says_there_are_no_records_yet(desk: Service[Settings]) -> None:
    async with http_session(desk) as anna:
        await sign_in(anna, "anna")
        page = await anna.get("/crm")
        assert page.status == 200
        assert 'data-testid="crm-empty"' in await page.text()
        assert (await (await anna.get("/api/crm")).json())["present"] is False


async def test_crm_page_with_bitrix24_says_where_the_records_live(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc)
    bitrix24 = running_desk(nats_server.url, crm_backend="bitrix24", bitrix24_portal="https://shop.bitrix24.com/")
    async with bitrix24 as svc, http_session(svc) as anna:
        await sign_in(anna, "anna")
        text = await (await anna.get("/crm")).text()
        assert 'data-testid="crm-elsewhere"' in text and 'href="https://shop.bitrix24.com/crm/"' in text
        api = await (await anna.get("/api/crm")).json()
        assert api == {"backend": "bitrix24", "portal": "https://shop.bitrix24.com", "records": None}


async def test_supervisor_sees_the_queue_grow_then_the_operator_take_the_chat(nc: Any, desk: Service[Settings]) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    async with http_session(desk) as anna:
        await sign_in(anna, "anna")
        await client_writes(nc, "v-wait", "1", "Is anyone there?", name="Liga Waiting")

        async def waiting() -> list[dict[str, Any]] | None:
            data = await (await anna.get("/api/supervisor")).json()
            [line] = [x for x in data["lines"] if x["id"] == "support"]
            return line["waiting"] or None

        [w] = await wait_for(waiting, what="the chat in the supervisor's queue")
        assert w["client_name"] == "Liga Waiting" and w["channel"] == "webchat" and w["wait_seconds"] >= 0
        chat, _ = await bus.kv_get(b.waiting, waiting_key("support", w["session_id"]), QueuedChat)
        assert chat is not None and chat.session_id == w["session_id"] and chat.line_id == "support"
        assert await b.waiting.keys() == [waiting_key("support", w["session_id"])]
        data = await (await anna.get("/api/supervisor")).json()
        [line] = [x for x in data["lines"] if x["id"] == "support"]
        assert {o["id"]: o["status"] for o in line["operators"]} == {"anna": "offline", "boris": "offline"}
        assert [s["id"] for s in line["sessions"]] == [w["session_id"]]
        assert "Intercept takes a chat over" in data["intercept"]

        await call(nc, "status", SetStatus(operator_id="boris", status="online"))

        async def taken() -> dict[str, Any] | None:
            data = await (await anna.get("/api/supervisor")).json()
            [line] = [x for x in data["lines"] if x["id"] == "support"]
            return line if not line["waiting"] and line["sessions"] and line["sessions"][0]["operator_id"] == "boris" else None

        line = await wait_for(taken, what="boris holding the chat")
        [boris] = [o for o in line["operators"] if o["id"] == "boris"]
        assert (boris["status"], boris["load"], boris["max_chats"], boris["name"]) == ("online", 1, 4, "Boris Ivanov")
        assert line["sessions"][0]["status"] == "assigned" and line["sessions"][0]["operator_name"] == "Boris Ivanov"
        page = await anna.get("/supervisor")
        text = await page.text()
        assert page.status == 200 and "/static/supervisor.js" in text
        # A supervisor finds the statistics from every top bar: the supervisor view, the workspace, the CRM page.
        for html in (text, await (await anna.get("/")).text(), await (await anna.get("/crm")).text()):
            assert '<a href="/stats"' in html and 'data-testid="nav-stats"' in html


async def test_a_plain_operator_is_refused_the_supervisor_view_with_the_reason(desk: Service[Settings]) -> None:
    async with http_session(desk) as boris:
        assert (await boris.get("/api/supervisor")).status == 401
        await sign_in(boris, "boris")
        page = await boris.get("/supervisor")
        assert page.status == 403
        assert "needs the supervisor or admin role (your roles: operator)" in await page.text()
        api = await boris.get("/api/supervisor")
        assert api.status == 403
        assert (await api.json())["detail"].startswith("the supervisor view needs the supervisor or admin role")
        # No link to it (nor to the statistics) in the workspace or on the CRM page either.
        for html in (await (await boris.get("/")).text(), await (await boris.get("/crm")).text()):
            assert 'data-testid="nav-supervisor"' not in html and "/stats" not in html
