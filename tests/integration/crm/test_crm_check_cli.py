"""``openlines crm check``: connection, permissions, and what each line would create."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from peers.bitrix24 import running_bitrix24
from support import apply_lines
from support.crm import OPS, crm_line
from support.timing import scaled


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openlines",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=scaled(60))
    return proc.returncode or 0, out.decode()


async def test_crm_check_reports_the_connection_and_what_each_line_creates(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('create = "deal"\ndeal_pipeline = "4"\nresponsible = "anna"'))
    async with running_bitrix24() as peer:
        env = {
            "OPENLINES_NATS_URL": nats_server.url,
            "OPENLINES_CRM_BACKEND": "bitrix24",
            "OPENLINES_BITRIX24_WEBHOOK": peer.webhook,
            "OPENLINES_CRM_USERS": '{"7": "anna"}',
        }
        code, out = await run_cli(env, "crm", "check")
    assert code == 0, out
    assert "connected as Webhook" in out and "crm present" in out
    assert "new client: a contact and a deal (CATEGORY_ID 4, STAGE_ID C4:NEW)" in out
    assert "SOURCE_ID for telegram: TELEGRAM" in out and "SOURCE_ID for webchat: OPENLINE" in out
    assert "anna (CRM user 7)" in out
    assert "crm check: ok" in out


async def test_crm_check_flags_a_source_the_crm_does_not_know_and_a_missing_scope(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + crm_line('source_ids = { webchat = "NO_SUCH_SOURCE" }'))
    async with running_bitrix24() as peer:
        env = {
            "OPENLINES_NATS_URL": nats_server.url,
            "OPENLINES_CRM_BACKEND": "bitrix24",
            "OPENLINES_BITRIX24_WEBHOOK": peer.webhook,
        }
        code, out = await run_cli(env, "crm", "check")
        assert code == 1 and "NO_SUCH_SOURCE  <- not a SOURCE_ID of this CRM" in out, out
        peer.scopes = ["user"]
        code, out = await run_cli(env, "crm", "check")
        assert code == 1 and "lacks the 'crm' scope" in out, out
