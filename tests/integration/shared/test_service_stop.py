"""A service's stop always ends: a stop step or a background task that never returns is logged, with every
task's stack, and left behind (a desk's stop once hung for 720 s in the test suite, with nothing logged)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from support.servers import creds

from openlines.runner import Service, launch
from openlines.settings import BaseSettings


async def _never_ends(release: asyncio.Event) -> None:
    """An await that ignores being cancelled, as one stuck deep in a library can (until the test ends)."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def test_a_stop_step_and_a_background_task_that_never_end_do_not_hold_the_stop(
    nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = BaseSettings(nats_url=nats_server.url, http_port=0, shutdown_timeout=0.5, **creds("admin"))
    stopped: list[str] = []
    release = asyncio.Event()

    async def stuck_step() -> None:
        await _never_ends(release)

    async def later_step() -> None:  # registered first, so run after the stuck one
        stopped.append("later step")

    async def setup(svc: Service[BaseSettings]) -> None:
        svc.on_stop(later_step)
        svc.on_stop(stuck_step)
        svc.spawn(_never_ends(release), "stubborn-task")

    svc = await launch("stopping-service", settings, setup)
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    await asyncio.wait_for(svc.stop(), timeout=30)
    assert time.monotonic() - started < 10
    assert stopped == ["later step"], "the steps after a stuck one still run"
    assert svc.nc.is_closed, "and the connection is closed"
    stuck = [r for r in caplog.records if r.getMessage() == "a stop step did not end in time; stopping the rest anyway"]
    assert [r.__dict__["step"] for r in stuck] == [
        "test_a_stop_step_and_a_background_task_that_never_end_do_not_hold_the_stop.<locals>.stuck_step",
        "background tasks",
    ]
    assert stuck[1].__dict__["tasks"] == ["stubborn-task"]
    dumps = [r for r in caplog.records if r.getMessage() == "asyncio task stack"]
    assert any("_never_ends" in r.__dict__["stack"] for r in dumps), "the dump shows where it is stuck"
    release.set()  # the test's loop can end
