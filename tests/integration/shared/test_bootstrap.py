from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from support.timing import scaled

from openlines import bus, subjects
from openlines.apply import apply, load_lines
from openlines.lines import load
from openlines.state import OperatorState

ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlines", *args], capture_output=True, text=True, timeout=60)


async def test_cli_bootstrap_is_idempotent(nats_server) -> None:  # type: ignore[no-untyped-def]
    first = run_cli("--nats", nats_server.url, "bootstrap")
    assert first.returncode == 0, first.stderr
    assert "stream OL_IN: created" in first.stdout
    second = run_cli("--nats", nats_server.url, "bootstrap")
    assert second.returncode == 0, second.stderr
    assert "stream OL_IN: up to date" in second.stdout
    nc = await bus.connect(nats_server.url, "t", first_attempts=3)
    js = nc.jetstream()
    for name in subjects.STREAMS:
        info = await js.stream_info(name)
        assert info.config.duplicate_window == 900
    assert await bus.missing_streams(js) == []
    await nc.close()


async def test_cli_apply_reports_changes_and_prunes(nats_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = run_cli("--nats", nats_server.url, "lines", "apply", str(ROOT / "deploy/lines.example.toml"))
    assert done.returncode == 0, done.stderr
    assert "line support: created" in done.stdout
    again = run_cli("--nats", nats_server.url, "lines", "apply", str(ROOT / "deploy/lines.example.toml"))
    assert "line support: unchanged" in again.stdout
    other = tmp_path / "l.toml"
    other.write_text('[operators.x]\nname = "X"\n[[lines]]\nid = "sales"\nname = "Sales"\n')
    pruned = run_cli("--nats", nats_server.url, "lines", "apply", str(other))
    assert "line support: removed" in pruned.stdout and "line sales: created" in pruned.stdout
    nc = await bus.connect(nats_server.url, "t", first_attempts=3)
    b = await bus.Buckets(nc.jetstream()).open()
    assert [line.id for line in await load_lines(b.js)] == ["sales"]
    await nc.close()


async def test_cli_rejects_invalid_file_and_changes_nothing(nats_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lines]]\nid = "x"\nname = "X"\ncolour = "red"\n')
    done = run_cli("--nats", nats_server.url, "lines", "apply", str(bad))
    assert done.returncode == 2
    assert "colour" in done.stderr
    nc = await bus.connect(nats_server.url, "t", first_attempts=3)
    js = nc.jetstream()
    await bus.bootstrap(js)
    b = await bus.Buckets(js).open()
    assert await load_lines(b.js) == []
    await nc.close()


async def test_kv_update_compare_and_set_never_loses_an_increment(nc) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    b = await bus.Buckets(nc.jetstream()).open()

    def bump(cur: OperatorState | None) -> OperatorState:
        cur = cur or OperatorState(id="anna")
        return msgspec.structs.replace(cur, last_assigned_at=cur.last_assigned_at + 1)

    await asyncio.gather(*(bus.kv_update(b.operators, "anna", OperatorState, bump) for _ in range(20)))
    value, _ = await bus.kv_get(b.operators, "anna", OperatorState)
    assert value is not None and value.last_assigned_at == 20


async def test_apply_in_process_matches_file(nc) -> None:  # type: ignore[no-untyped-def]
    b = await bus.Buckets(nc.jetstream()).open()
    cfg = load(ROOT / "deploy/lines.example.toml")
    changes = await apply(b, cfg)
    assert "operator anna: created" in changes
    lines = await load_lines(b.js)
    assert lines == cfg.lines


async def test_a_service_waits_for_a_cluster_that_cannot_hold_its_streams_yet(tmp_path: Path) -> None:
    """One node of three is up: JetStream has no leader, so R3 streams cannot be made. A service started
    now waits and retries (it neither crashes nor gives up), and is up once the cluster is whole."""
    import asyncio

    from support.servers import NatsCluster, creds
    from support.timing import wait_for

    from openlines.runner import launch
    from openlines.settings import BaseSettings

    cluster = NatsCluster(tmp_path)
    cluster.nodes[0].start()
    try:
        settings = BaseSettings(nats_url=cluster.url, http_port=0, replicas=3, **creds("admin"))  # the bootstrap identity

        async def setup(svc: object) -> None:
            return None

        starting = asyncio.create_task(launch("waiting-service", settings, setup))
        done, _ = await asyncio.wait({starting}, timeout=8)
        assert not done, "the service must keep waiting while the streams cannot be made"
        cluster.nodes[1].start()
        cluster.nodes[2].start()
        svc = await asyncio.wait_for(starting, timeout=scaled(120))
        try:
            info = await wait_for(lambda: svc.js.stream_info(subjects.STREAM_IN), timeout=30, what="OL_IN")
            assert info.config.num_replicas == 3
        finally:
            await svc.stop()
    finally:
        cluster.stop()


@pytest.mark.parametrize("service", ["router", "crm-sync"])
async def test_a_service_whose_set_up_gets_no_answer_from_nats_starts_over(nc: Any, nats_server: Any, service: str) -> None:
    """A service restarted while NATS cannot answer (a node restarting, a leader being elected) used to
    exit in its set-up (found by the fault suite: router and crm-sync, after a kill next to a NATS fault)."""
    from peers.natsproxy import NatsProxy
    from support import running_router
    from support.crm import running_crm_sync

    from crm_sync.backends.builtin import BUCKETS

    bucket = subjects.KV_ROUTER if service == "router" else BUCKETS["lead"]
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        lost = proxy.drop(f"$JS.API.STREAM.INFO.KV_{bucket}")  # the look-up of a bucket its set-up opens
        running = running_router(proxy.url) if service == "router" else running_crm_sync(proxy.url)
        async with running as svc:
            assert lost.fired == 1
            async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{svc.port}/healthz") as r:
                assert r.status == 200
    finally:
        await proxy.stop()
