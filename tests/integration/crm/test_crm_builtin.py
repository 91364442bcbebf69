"""crm-sync with the built-in CRM (KV buckets of its own and a read API), with
the real router and nats-server."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
from support import apply_lines, history, inbound, publish, running_router
from support.crm import CRM_API_TOKEN, OPS, assigned, crm_line, linked, opened, running_crm_sync, telegram
from support.timing import scaled, wait_for

from crm_sync.backends.base import Entity
from crm_sync.backends.builtin import BuiltinBackend
from openlines import subjects
from openlines.commands import Accept, Close, SetStatus, call


async def get(port: int, path: str) -> tuple[int, Any]:
    auth = {"Authorization": f"Bearer {CRM_API_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=auth) as resp:
        return resp.status, await resp.json()


async def test_builtin_first_contact_creates_one_lead_with_source_and_a_completed_activity(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('source_ids = { telegram = "TG_BOT" }'))
    async with running_router(nats_server.url), running_crm_sync(nats_server.url) as crm:
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, telegram("5", "Do you ship to Riga?", "1", name="Pēteris"))
        s = await assigned(nc, "telegram", "shopbot", "5")
        await linked(nc, s.id)
        await publish(nc, telegram("5", "second message", "2", name="Pēteris"))
        status, leads = await get(crm.port, "/crm/leads")
        assert status == 200 and len(leads) == 1
        assert (leads[0]["source_id"], leads[0]["name"], leads[0]["stage"]) == ("TG_BOT", "Pēteris", "NEW")
        assert leads[0]["im"] == ["imol|telegram|shopbot|5"]
        await call(nc, "accept", Accept(operator_id="anna", session_id=s.id))
        await call(nc, "close", Close(operator_id="anna", session_id=s.id))

        async def completed() -> Any:
            _, acts = await get(crm.port, f"/crm/activities?session={s.id}")
            return acts if acts and acts[0].get("completed") else None

        [act] = await wait_for(completed, what="activity completed")
        assert (act["owner_kind"], act["owner_id"], act["responsible"]) == ("lead", leads[0]["id"], "anna")
        assert "Do you ship to Riga?" in act["description"] and "second message" in act["description"]
        _, leads_after = await get(crm.port, "/crm/leads")
        assert len(leads_after) == 1 and leads_after[0]["assigned_by"] == "anna"
        assert (await get(crm.port, "/crm/activities?session=bad.id"))[0] == 400


async def test_builtin_repeat_contact_by_email_from_another_channel_is_linked_not_duplicated(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with running_router(nats_server.url), running_crm_sync(nats_server.url) as crm:
        await publish(nc, telegram("61", "hello", "1", name="Marta", email="Marta@Example.com"))
        first = await opened(nc, "telegram", "shopbot", "61")
        await linked(nc, first.id)
        await publish(nc, inbound("site-marta", "Hi, I wrote on Telegram: MARTA@example.com", "m1"))
        second = await opened(nc, "webchat", "demo", "site-marta")
        evt = await linked(nc, second.id)
        _, leads = await get(crm.port, "/crm/leads")
        assert len(leads) == 1 and leads[0]["emails"] == ["marta@example.com"]
        assert f"lead {leads[0]['id']}" in evt.reason
        # The website visitor's channel identity is merged into the lead.
        assert "imol|webchat|demo|site-marta" in leads[0]["im"]
        _, link = await get(crm.port, f"/crm/links/{second.client_id}")
        assert link["lead_id"] == leads[0]["id"]


async def test_builtin_create_none_creates_nothing_and_keeps_the_transcript(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('create = "none"'))
    async with running_router(nats_server.url), running_crm_sync(nats_server.url) as crm:
        await publish(nc, inbound("n1", "no crm please", "m1"))
        s = await opened(nc, "webchat", "demo", "n1")
        assert "nothing created" in (await linked(nc, s.id)).reason
        for path in ("/crm/leads", "/crm/deals", "/crm/contacts", "/crm/activities"):
            assert (await get(crm.port, path)) == (200, [])
        assert [h.text for h in await history(nc, s.id) if h.direction == "in"] == ["no crm please"]


async def test_builtin_deal_mode_gives_a_known_contact_a_deal_in_the_pipeline(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('create = "deal"\ndeal_pipeline = "2"\ndeal_stage = "PREPARATION"'))
    builtin = await BuiltinBackend.open(nc.jetstream())
    contact_id = await builtin.create(Entity(kind="contact", name="Known", phones=["+37126000002"], assigned_by="boris"))
    async with running_router(nats_server.url), running_crm_sync(nats_server.url) as crm:
        await publish(nc, telegram("70", "hi, it's me", "1", name="Known", phone="+371 2600 0002"))
        s = await opened(nc, "telegram", "shopbot", "70")
        await linked(nc, s.id)
        _, deals = await get(crm.port, "/crm/deals")
        assert len(deals) == 1
        d = deals[0]
        assert (d["pipeline"], d["stage"], d["contact_id"], d["source_id"], d["assigned_by"]) == (
            "2",
            "C2:PREPARATION",
            contact_id,
            "TELEGRAM",
            "boris",
        )
        assert (await get(crm.port, "/crm/leads")) == (200, [])


async def test_builtin_responsible_lookup_is_fast_and_steers_the_router(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line(queue='mode = "crm_responsible"\nfallback_mode = "strict"', ops='"boris", "anna"'))
    async with running_router(nats_server.url), running_crm_sync(nats_server.url):
        # Only Anna is in: she gets the first chat and answers it, so the new lead is hers.
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("r1", "hello", "m1", name="Rita"))
        first = await assigned(nc, "webchat", "demo", "r1")
        assert first.operator_id == "anna"
        await linked(nc, first.id)
        await call(nc, "accept", Accept(operator_id="anna", session_id=first.id))
        ask = {"client_id": first.client_id, "channel": "webchat", "account": "demo", "chat_id": "r1"}

        async def responsible() -> str:
            started = time.monotonic()
            reply = await nc.request(subjects.CRM_RESPONSIBLE, msgspec.json.encode(ask), timeout=scaled(0.5))
            assert time.monotonic() - started < 0.5
            return str(msgspec.json.decode(reply.data)["operator_id"])

        assert await wait_for(responsible, what="anna responsible") == "anna"
        await call(nc, "close", Close(operator_id="anna", session_id=first.id))
        # Boris comes in; strict order alone would give him the next chat, the CRM says Anna.
        await call(nc, "status", SetStatus(operator_id="boris", status="online"))
        await publish(nc, inbound("r1", "again", "m2", name="Rita"))
        second = await assigned(nc, "webchat", "demo", "r1", other_than=first.id)
        assert second.operator_id == "anna"
        await publish(nc, inbound("r2", "someone new", "m1", name="Nora"))
        assert (await assigned(nc, "webchat", "demo", "r2")).operator_id == "boris"
