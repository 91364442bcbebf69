"""SIGUSR1 makes a running service log what every asyncio task is waiting on, and it goes on (openlines.taskdump)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from support.servers import ServiceProcess, free_port
from support.timing import wait_for


async def _answers(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


def _dumps(log: Path) -> list[list[dict[str, Any]]]:
    """Every dump in the service's log: its header line, then one line per distinct stack."""
    found: list[list[dict[str, Any]]] = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["event"] == "asyncio tasks":
            found.append([event])
        elif event["event"] == "asyncio task stack":
            found[-1].append(event)
    return found


async def test_sigusr1_logs_every_task_with_what_it_awaits_and_the_service_goes_on(
    nc: Any, nats_server: Any, tmp_path: Path
) -> None:
    port = free_port()  # the streams are made by ``nc``: the router's own identity may not
    env = {"OPENLINES_NATS_URL": nats_server.url, "OPENLINES_HTTP_PORT": str(port)}
    router = ServiceProcess("router", "router", env, tmp_path)
    router.start()
    try:
        await wait_for(lambda: _answers(port), timeout=30, what="the router ready")
        assert router.proc is not None
        log = tmp_path / "router.log"
        for n in (1, 2):  # the handler stays: every signal dumps again
            os.kill(router.proc.pid, signal.SIGUSR1)
            dumps = await wait_for(lambda n=n: [d for d in _dumps(log) if len(d) > 1][n - 1 :], what=f"dump {n} in the log")
        header, *stacks = dumps[-1]
        assert header["service"] == "router" and header["reason"] == "SIGUSR1"
        assert header["tasks"] == sum(s["tasks"] for s in stacks) and header["stacks"] == len(stacks)
        # The service's main task waits for its stop: where, through which awaits, and on what.
        main = [s for s in stacks if "await svc.stopping.wait()" in s["stack"]]
        assert len(main) == 1, [s["stack"] for s in stacks]
        stack = main[0]["stack"]
        assert "openlines/runner.py" in stack and ", in run\n" in stack
        assert stack.rstrip().endswith("await fut")  # innermost last: asyncio.Event.wait awaiting its future
        assert "wait_for=<Future pending" in main[0]["task"]
        assert router.exited() is None and await _answers(port)
    finally:
        router.stop()
