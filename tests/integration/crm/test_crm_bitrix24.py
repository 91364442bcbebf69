"""crm-sync against a local Bitrix24 REST peer, with the real router and nats-server."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from peers.bitrix24 import running_bitrix24
from support import apply_lines, events, history, inbound, publish, running_router
from support.crm import OPS, assigned, crm_line, linked, opened, running_crm_sync, telegram
from support.timing import scaled, wait_for

from openlines import subjects
from openlines.commands import Accept, Close, SetStatus, call

USERS = '{"7": "anna", "8": "boris"}'


async def test_first_contact_creates_one_lead_with_the_channel_source_and_an_activity_closed_with_the_transcript(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line('source_ids = { webchat = "WEB" }\nlead_stage = "IN_PROCESS"'))
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook, crm_users=USERS),
    ):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v1", "Hello, I want to buy a sofa", "m1", name="Vera"))
        await publish(nc, telegram("501", "Hi from Telegram", "1", name="Tom"))
        web = await opened(nc, "webchat", "demo", "v1")
        tg = await opened(nc, "telegram", "shopbot", "501")
        evt = await linked(nc, web.id)
        await linked(nc, tg.id)
        leads = {lead["NAME"]: lead for lead in peer.leads()}
        assert set(leads) == {"Vera", "Tom"}
        assert leads["Vera"]["SOURCE_ID"] == "WEB" and leads["Tom"]["SOURCE_ID"] == "TELEGRAM"
        assert leads["Vera"]["STATUS_ID"] == "IN_PROCESS"
        assert leads["Tom"]["ORIGIN_ID"] == "imol|telegram|shopbot|501"
        assert "lead" in evt.reason and "WEB" in evt.reason
        act = next(a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{web.id}")
        assert (act["OWNER_TYPE_ID"], str(act["OWNER_ID"]), act["COMPLETED"]) == ("1", leads["Vera"]["ID"], "N")

        await call(nc, "accept", Accept(operator_id=web.operator_id or "anna", session_id=web.id))
        await wait_for(lambda: any(a.get("RESPONSIBLE_ID") == "7" for a in peer.activities()), what="activity given to anna")

        def vera() -> dict[str, Any]:  # by id: the order the two leads were made in is the router's
            return next(lead for lead in peer.leads() if lead["ID"] == leads["Vera"]["ID"])

        # the operator who answered owns the lead (the lead and the activity are two calls)
        await wait_for(lambda: vera()["ASSIGNED_BY_ID"] == "7", what="Vera's lead given to anna")
        await call(nc, "close", Close(operator_id="anna", session_id=web.id))

        def completed() -> dict[str, Any] | None:
            return next((a for a in peer.activities() if a["ORIGIN_ID"] == act["ORIGIN_ID"] and a["COMPLETED"] == "Y"), None)

        done = await wait_for(completed, what="activity completed on close")
        assert "Hello, I want to buy a sofa" in done["DESCRIPTION"]
        assert len(peer.leads()) == 2 and len([a for a in peer.activities() if a["ORIGIN_ID"] == act["ORIGIN_ID"]]) == 1


async def test_the_same_person_from_another_channel_is_linked_by_phone_and_no_new_lead_is_made(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook),
    ):
        await publish(nc, telegram("777", "hi", "1", name="Ilze", phone="37126123456"))
        first = await opened(nc, "telegram", "shopbot", "777")
        await linked(nc, first.id)
        [lead] = peer.leads()
        assert [p["VALUE"] for p in lead["PHONE"]] == ["+37126123456"]
        # Later, on the website, the same person writes her number in the chat, and her e-mail.
        await publish(nc, inbound("site-ilze", "It's Ilze again, +371 2612 3456, ilze@example.com", "m1"))
        second = await opened(nc, "webchat", "demo", "site-ilze")
        evt = await linked(nc, second.id)
        assert len(peer.leads()) == 1, peer.leads()
        assert f"lead {lead['ID']}" in evt.reason
        assert "crm.duplicate.findbycomm" in peer.methods() or "batch" in peer.methods()
        # The e-mail learnt on the second channel is merged into the lead.
        merged = peer.leads()[0]
        assert [e["VALUE"] for e in merged["EMAIL"]] == ["ilze@example.com"]
        assert [p["VALUE"] for p in merged["PHONE"]] == ["+37126123456"]  # known values are not added twice
        assert [i["VALUE"] for i in merged["IM"]] == ["imol|telegram|shopbot|777", "imol|webchat|demo|site-ilze"]
        act = next(a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{second.id}")
        assert str(act["OWNER_ID"]) == lead["ID"]


async def test_create_none_creates_nothing_and_the_transcript_is_still_kept(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('create = "none"'))
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook),
    ):
        await publish(nc, inbound("quiet", "just a question", "m1"))
        s = await opened(nc, "webchat", "demo", "quiet")
        evt = await linked(nc, s.id)
        assert "nothing created" in evt.reason
        assert peer.leads() == [] and peer.deals() == [] and peer.contacts() == [] and peer.activities() == []
        assert not [m for m in peer.methods() if m.endswith(".add")]
        assert [h.text for h in await history(nc, s.id) if h.direction == "in"] == ["just a question"]


async def test_deal_mode_gives_a_known_contact_a_deal_in_the_configured_pipeline(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('create = "deal"\ndeal_pipeline = "3"\ndeal_stage = "NEW"\nidentified_client = "deal"'))
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook),
    ):
        known = peer.add_contact(NAME="Olga", EMAIL=[{"VALUE": "Olga@Example.com", "VALUE_TYPE": "WORK"}], ASSIGNED_BY_ID="8")
        await publish(nc, telegram("900", "hello", "1", name="Olga", email="OLGA@example.com"))
        s = await opened(nc, "telegram", "shopbot", "900")
        evt = await linked(nc, s.id)
        [deal] = peer.deals()
        assert (deal["CATEGORY_ID"], deal["STAGE_ID"], deal["CONTACT_ID"], deal["SOURCE_ID"]) == (
            "3",
            "C3:NEW",
            str(known),
            "TELEGRAM",
        )
        assert peer.leads() == [] and len(peer.contacts()) == 1
        assert "known contact" in evt.reason
        # A stranger in deal mode gets a new contact and a deal.
        await publish(nc, telegram("901", "hi", "1", name="Stranger"))
        s2 = await opened(nc, "telegram", "shopbot", "901")
        await linked(nc, s2.id)
        assert len(peer.contacts()) == 2 and len(peer.deals()) == 2 and peer.leads() == []


async def test_events_wait_while_the_crm_refuses_or_is_down_and_are_applied_afterwards(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook) as svc,
    ):
        peer.limited = True  # every call: 503 QUERY_LIMIT_EXCEEDED
        for i in range(3):
            await publish(nc, inbound(f"w{i}", "hello", "m1", name=f"Client {i}"))
            await opened(nc, "webchat", "demo", f"w{i}")
        await wait_for(lambda: len(peer.calls) >= 6, what="crm-sync retrying against the rate limit")

        async def refused() -> bool:  # once an event's own retries of the call ran out
            ready = await _readyz(svc.port)
            return ready["status"] == "not ready" and "QUERY_LIMIT_EXCEEDED" in " ".join(ready["reasons"])

        await wait_for(refused, timeout=30, what="readiness saying the events wait for the CRM")
        assert peer.leads() == []
        # Then the CRM goes away altogether for a while.
        port = peer.port
        await peer.stop()
        peer.limited = False
        await publish(nc, inbound("w3", "hello", "m1", name="Client 3"))
        await opened(nc, "webchat", "demo", "w3")
        await peer.start(port)
        await wait_for(lambda: len(peer.leads()) == 4, timeout=30, what="every lead created after the CRM came back")
        # Each client's events in order; different clients' may be applied side by side (decision 030).
        assert sorted(lead["NAME"] for lead in peer.leads()) == ["Client 0", "Client 1", "Client 2", "Client 3"]


async def test_responsible_lookup_answers_fast_and_the_router_offers_the_chat_to_the_responsible(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line(queue='mode = "crm_responsible"\nfallback_mode = "strict"', ops='"boris", "anna"'))
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook, crm_users=USERS),
    ):
        # Anna is the responsible manager of a known contact in the CRM.
        peer.add_contact(NAME="Known", PHONE=[{"VALUE": "+37126000001", "VALUE_TYPE": "WORK"}], ASSIGNED_BY_ID="7")
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, telegram("42", "hi", "1", name="Known", phone="+37126000001"))
        first = await assigned(nc, "telegram", "shopbot", "42")
        # Not linked yet, but known by the phone she shared: her manager, not the fallback (strict: Boris).
        assert first.operator_id == "anna"
        await linked(nc, first.id)
        ask = {"client_id": first.client_id, "channel": "telegram", "account": "shopbot", "chat_id": "42"}
        started = time.monotonic()
        reply = await nc.request(subjects.CRM_RESPONSIBLE, msgspec.json.encode(ask), timeout=scaled(0.5))
        assert time.monotonic() - started < 0.5
        assert msgspec.json.decode(reply.data) == {"operator_id": "anna"}
        unknown = {"client_id": "cnobody", "channel": "webchat", "account": "demo", "chat_id": "nobody"}
        reply = await nc.request(subjects.CRM_RESPONSIBLE, msgspec.json.encode(unknown), timeout=scaled(0.5))
        assert msgspec.json.decode(reply.data) == {"operator_id": ""}

        await call(nc, "close", Close(operator_id="anna", session_id=first.id))
        await publish(nc, telegram("42", "me again", "2", name="Known"))
        second = await assigned(nc, "telegram", "shopbot", "42", other_than=first.id)
        assert second.operator_id == "anna"


async def test_a_conversation_whose_lead_a_manager_deleted_is_filed_anew_and_the_next_one_on_the_new_lead(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook, crm_users=USERS),
    ):
        first, old = await lead_deleted_after_linking(nc, peer, "901", "first question", name="Rita", phone="+37126000901")
        assert peer.leads() == []
        assert not [a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{first.id}"]  # deleted with it
        # The conversation goes on and is closed: it is filed anew, its whole transcript on a new activity.
        await call(nc, "close", Close(operator_id=first.operator_id or "anna", session_id=first.id))
        again = await wait_for(
            lambda: [a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{first.id}" and a["COMPLETED"] == "Y"],
            what="the closed conversation on a new, completed activity",
        )
        [new] = peer.leads()
        assert new["ID"] != old["ID"] and new["ORIGIN_ID"] == "imol|telegram|shopbot|901"
        assert [p["VALUE"] for p in new.get("PHONE", [])] == ["+37126000901"]  # written again: the old lead had it
        assert (again[0]["OWNER_TYPE_ID"], str(again[0]["OWNER_ID"])) == ("1", new["ID"])
        assert "first question" in again[0]["DESCRIPTION"]

        async def told() -> list[Any]:
            return [e for e in await events(nc, "crm_linked") if e.session_id == first.id and f"lead {new['ID']}" in e.reason]

        assert len(await wait_for(told, what="the conversation's new link told")) == 1

        await publish(nc, telegram("901", "me again", "2", name="Rita"))
        second = await assigned(nc, "telegram", "shopbot", "901", other_than=first.id)
        evt = await linked(nc, second.id)
        assert peer.leads() == [new]  # the client's new lead: a repeat contact now
        assert f"lead {new['ID']}" in evt.reason
        act = next(a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{second.id}")
        assert (act["OWNER_TYPE_ID"], str(act["OWNER_ID"])) == ("1", new["ID"])
        await call(nc, "close", Close(operator_id=second.operator_id or "anna", session_id=second.id))
        await wait_for(
            lambda: any(a["ORIGIN_ID"] == act["ORIGIN_ID"] and a["COMPLETED"] == "Y" for a in peer.activities()),
            what="the new activity completed on close",
        )
        assert not await events(nc, "dead_letter")


async def test_a_conversation_whose_lead_was_deleted_before_the_operator_answered_is_filed_anew_for_them(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook, crm_users=USERS),
    ):
        chat, old = await lead_deleted_after_linking(nc, peer, "902", "where is my order?", name="Sam")
        await call(nc, "accept", Accept(operator_id="anna", session_id=chat.id))

        def filed() -> list[dict[str, Any]]:
            return [a for a in peer.activities() if a["ORIGIN_ID"] == f"ol-session|{chat.id}" and a.get("RESPONSIBLE_ID") == "7"]

        [act] = await wait_for(filed, what="the conversation on a new activity, given to anna who answered")
        [new] = peer.leads()
        assert new["ID"] != old["ID"] and (act["OWNER_TYPE_ID"], str(act["OWNER_ID"])) == ("1", new["ID"])
        assert new["ASSIGNED_BY_ID"] == "7"  # created by this conversation: the operator who answered owns it
        assert "where is my order?" in act["DESCRIPTION"]
        assert not await events(nc, "dead_letter")


async def lead_deleted_after_linking(nc: Any, peer: Any, chat: str, text: str, **profile: str) -> tuple[Any, dict[str, Any]]:
    """A Telegram client's first message offered to anna (online) and linked to a new lead, which a manager then
    deletes in the portal; returns the session and the deleted lead."""
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, telegram(chat, text, "1", **profile))
    session = await assigned(nc, "telegram", "shopbot", chat)
    await linked(nc, session.id)
    [old] = peer.leads()
    await delete_in_portal(peer, old["ID"])
    return session, old


async def delete_in_portal(peer: Any, lead_id: str) -> None:
    """A manager deletes a lead in the portal (the REST method the portal's own pages use)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{peer.webhook}crm.lead.delete.json", json={"id": lead_id}) as resp:
            assert resp.status == 200 and (await resp.json())["result"] is True
        async with http.post(f"{peer.webhook}crm.lead.get.json", json={"id": lead_id}) as resp:
            assert resp.status == 400 and (await resp.json())["error_description"] == "Not found"


async def _readyz(port: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def test_a_visitor_who_gave_no_name_gets_a_lead_titled_as_the_desk_calls_them_not_by_a_raw_id(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line(""))
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook, crm_users=USERS),
    ):
        await publish(nc, inbound("v-anon", "Hello?", "m1"))
        await publish(nc, telegram("777", "Hi", "1", email="ilze@example.com"))
        await linked(nc, (await opened(nc, "webchat", "demo", "v-anon")).id)
        await linked(nc, (await opened(nc, "telegram", "shopbot", "777")).id)
        titles = sorted(lead["TITLE"] for lead in peer.leads())
        assert titles == ["Client (Sales, webchat)", "ilze@example.com (Sales, telegram)"], titles
        assert not any("imol|" in t for t in titles)
