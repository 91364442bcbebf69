"""crm-sync killed with SIGKILL after the CRM created a lead but before crm-sync
recorded it and acked the event: after the restart there is still exactly one lead."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for
from crm_support import OPS, crm_line, linked, opened
from peers.bitrix24 import running_bitrix24
from support import apply_lines, inbound, publish, running_router


class CrmSyncProcess:
    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self.nats_url = nats_url
        self.log = open(log_dir / "crm-sync.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, webhook: str) -> None:
        env = {
            **os.environ,
            "OPENLINES_NATS_URL": self.nats_url,
            "OPENLINES_HTTP_PORT": str(free_port()),
            "OPENLINES_CRM_BACKEND": "bitrix24",
            "OPENLINES_BITRIX24_WEBHOOK": webhook,
            "OPENLINES_CRM_RATE": "200",
            "OPENLINES_ACK_WAIT": "2",
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "crm_sync"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture
def crm_sync_process(nats_server: Any, tmp_path: Path) -> Iterator[CrmSyncProcess]:
    p = CrmSyncProcess(nats_server.url, tmp_path)
    yield p
    p.stop()


async def test_kill_9_between_the_crm_create_and_the_ack_leaves_exactly_one_lead(
    nc: Any, nats_server: Any, crm_sync_process: CrmSyncProcess
) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with running_bitrix24() as peer, running_router(nats_server.url):
        peer.hold = "crm.lead.add"  # the lead is created, the answer never reaches crm-sync
        crm_sync_process.start(peer.webhook)
        await publish(nc, inbound("k1", "hello", "m1", name="Kim"))
        s = await opened(nc, "webchat", "demo", "k1")
        await wait_for(peer.held.is_set, timeout=30, what="crm-sync creating the lead")
        crm_sync_process.kill()
        peer.hold = ""
        peer.release.set()
        assert len(peer.leads()) == 1
        crm_sync_process.start(peer.webhook)
        evt = await linked(nc, s.id, timeout=30)
        assert len(peer.leads()) == 1, peer.leads()
        assert peer.methods().count("crm.lead.add") == 1
        lead_id = peer.leads()[0]["ID"]
        assert f"lead {lead_id}" in evt.reason
        # The retry looked for the pending lead by its ORIGIN_ID before creating anything.
        assert "crm.lead.list" in peer.methods()
        assert len(peer.activities()) == 1
