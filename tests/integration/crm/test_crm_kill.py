"""crm-sync killed with SIGKILL after the CRM created a lead but before crm-sync
recorded it and acked the event: after the restart there is still exactly one lead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers.bitrix24 import running_bitrix24
from support import apply_lines, inbound, publish, running_router
from support.crm import OPS, crm_line, linked, opened
from support.servers import ServiceProcess, free_port
from support.timing import wait_for


@pytest.fixture
def crm_sync_process(nats_server: Any, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {
        "OPENLINES_NATS_URL": nats_server.url,
        "OPENLINES_HTTP_PORT": str(free_port()),
        "OPENLINES_CRM_BACKEND": "bitrix24",
        "OPENLINES_CRM_RATE": "200",
        "OPENLINES_ACK_WAIT": "2",
        "OPENLINES_CRM_TIMEOUT": "1",  # shorter than ack_wait, as settings require
    }
    p = ServiceProcess("crm-sync", "crm_sync", env, tmp_path)
    yield p
    p.stop()


async def test_kill_9_between_the_crm_create_and_the_ack_leaves_exactly_one_lead(
    nc: Any, nats_server: Any, crm_sync_process: ServiceProcess
) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with running_bitrix24() as peer, running_router(nats_server.url):
        peer.hold = "crm.lead.add"  # the lead is created, the answer never reaches crm-sync
        crm_sync_process.start(OPENLINES_BITRIX24_WEBHOOK=peer.webhook)
        await publish(nc, inbound("k1", "hello", "m1", name="Kim"))
        s = await opened(nc, "webchat", "demo", "k1")
        await wait_for(peer.held.is_set, timeout=30, what="crm-sync creating the lead")
        crm_sync_process.kill()
        peer.hold = ""
        peer.release.set()
        assert len(peer.leads()) == 1
        crm_sync_process.start(OPENLINES_BITRIX24_WEBHOOK=peer.webhook)
        evt = await linked(nc, s.id, timeout=30)
        assert len(peer.leads()) == 1, peer.leads()
        assert peer.methods().count("crm.lead.add") == 1
        lead_id = peer.leads()[0]["ID"]
        assert f"lead {lead_id}" in evt.reason
        # The retry looked for the pending lead by its ORIGIN_ID before creating anything.
        assert "crm.lead.list" in peer.methods()
        assert len(peer.activities()) == 1
