"""Operators editing a client's name, phone and e-mail and merging two clients from the card (decision 024):
the desk over real HTTP, the real router, the real crm-sync against the built-in CRM and the Bitrix24 peer."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support import (
    EXAMPLE_LINES,
    apply_lines,
    client_writes,
    events,
    held_session,
    history,
    publish,
    running_router,
)
from support.crm import CrmUnderTest, crm_under_test, linked, running_crm_sync, telegram
from support.desk import http_session, running_desk, sign_in
from support.desk_admin import DEMO_HASH  # of the password "demo"
from support.timing import wait_for

from desk.http import DESK
from desk.settings import Settings
from openlines import bus
from openlines.commands import Close, SetStatus, call
from openlines.runner import Service
from openlines.state import ClientRecord, Session, client_key

# The demo (anna: operator + supervisor, boris: operator, on "support"), the support line fed by
# a Telegram bot too, and carl, an operator of another line only.
WEB = '  { channel = "webchat", account = "demo" },\n]'
WEB_AND_TG = '  { channel = "webchat", account = "demo" },\n  { channel = "telegram", account = "shopbot" },\n]'
SOURCES = 'source_ids = { webchat = "OPENLINE" }'
LINES = (
    EXAMPLE_LINES.read_text()
    .replace(WEB, WEB_AND_TG)
    .replace(SOURCES, 'source_ids = { webchat = "OPENLINE", telegram = "TELEGRAM" }')
    + f"""
[operators.carl]
name = "Carl Other"
password_hash = "{DEMO_HASH}"
roles = ["operator"]
permissions = ["openlines"]

[[lines]]
id = "vip"
name = "VIP"
channels = [{{ channel = "webchat", account = "vip" }}]
[lines.queue]
operators = ["carl"]
[lines.crm]
enabled = true
create = "none"
"""
)


@asynccontextmanager
async def system(nc: Any, url: str, crm: CrmUnderTest | None = None) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc, LINES)
    async with running_router(url), running_desk(url, crm_backend=crm.backend if crm else "builtin") as desk:
        if crm is None:
            yield desk
            return
        async with running_crm_sync(url, **crm.settings()):
            yield desk


async def record_of(nc: Any, s: Session) -> ClientRecord:
    b = await bus.Buckets(nc.jetstream()).open()
    rec, _ = await bus.kv_get(b.clients, client_key(s.channel, s.account, s.chat_key), ClientRecord)
    assert rec is not None
    return rec


async def lead_of(crm: CrmUnderTest, lead_id: str) -> dict[str, Any]:
    """A lead as name, phones and e-mails, from either CRM."""
    if crm.peer is not None:
        row = next(r for r in crm.peer.leads() if str(r["ID"]) == lead_id)
        return {
            "name": row.get("NAME", ""),
            "phones": [p["VALUE"] for p in row.get("PHONE", [])],
            "emails": [e["VALUE"] for e in row.get("EMAIL", [])],
        }
    [e] = [e for e in await (await crm.builtin()).entities("lead") if e.id == lead_id]
    return {"name": e.name, "phones": list(e.phones), "emails": list(e.emails)}


async def card(http: Any, sid: str) -> dict[str, Any]:
    r = await http.get(f"/api/sessions/{sid}/client")
    assert r.status == 200, await r.text()
    got: dict[str, Any] = await r.json()
    return got


@pytest.mark.parametrize("backend", ["builtin", "bitrix24"])
async def test_an_operator_edits_name_phone_and_email_and_the_crm_lead_gets_them_once(
    nc: Any, nats_server: Any, backend: str
) -> None:
    async with crm_under_test(backend, nc) as crm, system(nc, nats_server.url, crm) as desk, http_session(desk) as boris:
        csrf = await sign_in(boris, "boris")
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await client_writes(nc, "v-edit", "1", "Hello, about my order", name="v-edit", email="old@example.com")
        s = await held_session(nc, "v-edit")
        evt = await linked(nc, s.id)
        found = re.search(r"lead (\d+)", evt.reason)
        assert found, evt.reason
        lead_id = found.group(1)

        r = await boris.post(
            f"/api/sessions/{s.id}/client",
            json={"name": "  Marta   Ozola ", "phone": "+371 2612 3456", "email": "Marta@Example.COM"},
            headers=csrf,
        )
        assert r.status == 200, await r.text()
        got = (await card(boris, s.id))["client"]
        assert (got["name"], got["phone"], got["email"]) == ("Marta Ozola", "+37126123456", "marta@example.com")
        assert got["edited"] == ["email", "name", "phone"]
        # the chat list's name follows
        chat = await (await boris.get("/api/chats")).json()
        assert [c["client_name"] for c in chat["chats"] if c["id"] == s.id] == ["Marta Ozola"]

        # the trail: the event for crm-sync and the statistics, the line in the transcript
        [edited] = [e for e in await events(nc, "client_edited") if e.session_id == s.id]
        assert edited.reason == "name,phone,email" and edited.client_id == s.client_id
        said = "Boris Ivanov changed the client's name to Marta Ozola, phone to +37126123456, e-mail to marta@example.com"
        assert said in [h.text for h in await history(nc, s.id) if h.direction == "system"]

        async def lead_updated() -> dict[str, Any] | None:
            lead = await lead_of(crm, lead_id)
            return lead if lead["name"] == "Marta Ozola" and "+37126123456" in lead["phones"] else None

        lead = await wait_for(lead_updated, what="the lead renamed, with the phone")
        assert lead["phones"] == ["+37126123456"]
        assert sorted(lead["emails"]) == ["marta@example.com", "old@example.com"]

        # The same phone again (another way of writing it) changes nothing; a second phone is added once.
        r = await boris.post(f"/api/sessions/{s.id}/client", json={"phone": "+37126123456"}, headers=csrf)
        assert r.status == 200
        assert len([e for e in await events(nc, "client_edited") if e.session_id == s.id]) == 1
        r = await boris.post(f"/api/sessions/{s.id}/client", json={"phone": "+371 2612 3457"}, headers=csrf)
        assert r.status == 200

        async def both_phones() -> dict[str, Any] | None:
            lead = await lead_of(crm, lead_id)
            return lead if "+37126123457" in lead["phones"] else None

        lead = await wait_for(both_phones, what="the second phone in the lead")
        assert sorted(lead["phones"]) == ["+37126123456", "+37126123457"], lead
        assert sorted(lead["emails"]) == ["marta@example.com", "old@example.com"], lead

        # The visitor writes again under the widget's name: the operator's name stays.
        await client_writes(nc, "v-edit", "2", "Still there?", name="v-edit")
        await wait_for(lambda: _has_msg(nc, s, "webchat:demo:v-edit:2"), what="the second message applied")
        rec = await record_of(nc, s)
        assert (rec.profile.name, rec.profile.phone) == ("Marta Ozola", "+37126123457")


async def _has_msg(nc: Any, s: Session, msg_id: str) -> bool:
    return msg_id in (await record_of(nc, s)).recent_msg_ids


async def test_bad_input_and_operators_off_the_line_are_refused_and_nothing_changes(nc: Any, nats_server: Any) -> None:
    async with system(nc, nats_server.url) as desk, http_session(desk) as boris, http_session(desk) as carl:
        boris_csrf = await sign_in(boris, "boris")
        carl_csrf = await sign_in(carl, "carl")
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await call(nc, "status", SetStatus(operator_id="carl", status="online"))
        await client_writes(nc, "v-keep", "1", "hi", name="Ieva", email="ieva@example.com")
        await client_writes(nc, "v-vip", "1", "hi", account="vip", name="Vip Client")
        s = await held_session(nc, "v-keep")
        vip = await held_session(nc, "v-vip", account="vip", line="vip")
        before, vip_before = await record_of(nc, s), await record_of(nc, vip)
        url = f"/api/sessions/{s.id}/client"

        for body, reason in [
            ({"phone": "12345"}, "not a phone number"),
            ({"phone": "+1 555 0100"}, "not a valid phone number"),
            ({"email": "ieva@"}, "not an e-mail address"),
            ({"name": "x" * 201}, "at most 200"),
            ({"name": "a\x00b"}, "plain text"),
            ({"name": 5}, "must be text"),
            ({}, "nothing to change"),
            ({"name": "Ieva", "notes": "x"}, "unknown field 'notes'"),
        ]:
            r = await boris.post(url, json=body, headers=boris_csrf)
            assert r.status == 400, (body, await r.text())
            assert reason in (await r.json())["detail"], (body, await r.text())
        # no CSRF header: refused before anything is asked
        assert (await boris.post(url, json={"name": "Mallory"})).status == 403
        # carl is on another line: neither this client's edit nor a merge across the lines
        r = await carl.post(url, json={"name": "Mallory"}, headers=carl_csrf)
        assert r.status == 403 and (await r.json())["error"] == "forbidden"
        r = await carl.post(f"/api/sessions/{vip.id}/merge", json={"other_session_id": s.id}, headers=carl_csrf)
        assert r.status == 403 and "not on one of their lines" in (await r.json())["detail"]
        # nor may boris take carl's VIP client into his
        r = await boris.post(f"/api/sessions/{s.id}/merge", json={"other_session_id": vip.id}, headers=boris_csrf)
        assert r.status == 403
        r = await boris.post(f"/api/sessions/{s.id}/merge", json={"other_session_id": s.id}, headers=boris_csrf)
        assert r.status == 400 and "another client" in (await r.json())["detail"]
        r = await boris.post(f"/api/sessions/{s.id}/merge", json={"other_session_id": "../x"}, headers=boris_csrf)
        assert r.status == 400
        r = await boris.post(f"/api/sessions/{s.id}/merge", json={"other_session_id": "snone"}, headers=boris_csrf)
        assert r.status == 404

        after = await record_of(nc, s)
        assert after == before
        assert await record_of(nc, vip) == vip_before and vip_before.client_id == vip.client_id
        assert [e for e in await events(nc, "client_edited")] == []
        assert [e for e in await events(nc, "client_merged")] == []


@pytest.mark.parametrize("backend", ["builtin", "bitrix24"])
async def test_merging_two_clients_keeps_one_with_both_histories_and_one_crm_link(
    nc: Any, nats_server: Any, backend: str
) -> None:
    async with crm_under_test(backend, nc) as crm, system(nc, nats_server.url, crm) as desk, http_session(desk) as anna:
        csrf = await sign_in(anna, "anna")
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        # The same person: first on Telegram (phone shared), later on the website (e-mail only).
        await publish(nc, telegram("901", "Hi, Telegram here", "1", name="Marta", phone="+37126123456"))
        tg = await held_session(nc, "901", channel="telegram", account="shopbot")
        tg_lead = (await linked(nc, tg.id)).reason
        await call(nc, "close", Close(operator_id="anna", session_id=tg.id))
        await client_writes(nc, "v-marta", "1", "Hello from the website", name="M. Ozola", email="marta@example.com")
        web = await held_session(nc, "v-marta")
        web_lead = (await linked(nc, web.id)).reason
        assert tg.client_id != web.client_id and tg_lead != web_lead

        r = await anna.post(f"/api/sessions/{web.id}/merge", json={"other_session_id": tg.id}, headers=csrf)
        assert r.status == 200, await r.text()
        # the card of the website chat: one client, both histories, the person's fields of both
        await wait_for(lambda: desk.app[DESK].index.ready, what="the desk's index caught up")

        async def merged_card() -> dict[str, Any] | None:
            got = await card(anna, web.id)
            return got if [p["id"] for p in got["previous"]] == [tg.id] and got["crm"].get("merged") else None

        got = await wait_for(merged_card, what="the card with the Telegram conversation and the CRM note")
        assert got["client"]["id"] == web.client_id and got["client"]["chats"] == 2
        assert got["client"]["merged_ids"] == [tg.client_id]
        # The search finds the merged client's conversation under the name the client has now.
        found = await (await anna.get("/api/conversations", params={"view": "all", "q": "Ozola"})).json()
        assert {c["id"] for c in found["chats"]} == {tg.id, web.id}
        assert (got["client"]["name"], got["client"]["phone"], got["client"]["email"]) == (
            "M. Ozola",
            "+37126123456",
            "marta@example.com",
        )
        [note] = got["crm"]["merged"]
        assert note.startswith("merged: kept this client's lead") and "of the merged client: left in the CRM, not linked" in note
        kept = {r["id"] for r in got["crm"]["records"] if r["kind"] == "lead"}
        assert len(kept) == 1 and next(iter(kept)) in note
        # no CRM record was deleted
        if crm.peer is not None:
            assert len(crm.peer.leads()) == 2
        else:
            assert len(await (await crm.builtin()).entities("lead")) == 2
        # the trail of the surviving conversation names it, once
        texts = [h.text for h in await history(nc, web.id) if h.direction == "system"]
        assert [t for t in texts if "merged" in t] == [
            "Anna Petrova merged Marta (telegram) into this client; 2 chats are one client now"
        ]
        [evt] = await events(nc, "client_merged")
        assert (evt.client_id, evt.reason) == (web.client_id, tg.client_id)

        # Merging again: one client already.
        again = await anna.post(f"/api/sessions/{web.id}/merge", json={"other_session_id": tg.id}, headers=csrf)
        assert again.status == 409

        # The Telegram chat writes again: its new conversation is the surviving client's.
        await call(nc, "close", Close(operator_id="anna", session_id=web.id))
        await publish(nc, telegram("901", "Me again", "2", name="Marta"))
        tg2 = await held_session(nc, "901", channel="telegram", account="shopbot", other_than=tg.id)
        assert tg2.client_id == web.client_id

        async def both_earlier() -> dict[str, Any] | None:
            got = await card(anna, tg2.id)
            return got if {p["id"] for p in got["previous"]} == {tg.id, web.id} else None

        got = await wait_for(both_earlier, what="both earlier conversations in the new chat's card")
        assert got["client"]["id"] == web.client_id and got["crm"]["linked"] is True


async def test_a_merge_takes_over_the_other_clients_crm_records_when_this_client_has_none(nc: Any, nats_server: Any) -> None:
    async with crm_under_test("builtin", nc) as crm, system(nc, nats_server.url, crm) as desk, http_session(desk) as anna:
        csrf = await sign_in(anna, "anna")  # a supervisor: every line
        for op in ("anna", "carl"):
            await call(nc, "status", SetStatus(operator_id=op, status="online"))
        await publish(nc, telegram("902", "Hi", "1", name="Janis", phone="+37126123458"))
        tg = await held_session(nc, "902", channel="telegram", account="shopbot")
        assert "lead" in (await linked(nc, tg.id)).reason
        # the VIP line creates nothing in the CRM: this client has no record
        await client_writes(nc, "v-janis", "1", "Hello", account="vip", name="Janis B.", email="janis@example.com")
        vip = await held_session(nc, "v-janis", account="vip", line="vip")
        await linked(nc, vip.id)
        assert (await card(anna, vip.id))["crm"]["records"] == []

        r = await anna.post(f"/api/sessions/{vip.id}/merge", json={"other_session_id": tg.id}, headers=csrf)
        assert r.status == 200, await r.text()

        async def taken_over() -> dict[str, Any] | None:
            got = await card(anna, vip.id)
            return got if got["crm"]["records"] else None

        got = await wait_for(taken_over, what="the Telegram client's lead linked to the VIP client")
        [lead] = got["crm"]["records"]
        assert lead["kind"] == "lead"
        assert got["crm"]["merged"] == [f"merged: took over lead {lead['id']} of the merged client"]

        async def emailed() -> dict[str, Any] | None:
            found = await lead_of(crm, lead["id"])
            return found if "janis@example.com" in found["emails"] else None

        found = await wait_for(emailed, what="this client's e-mail in the lead taken over")
        assert found["phones"] == ["+37126123458"]
