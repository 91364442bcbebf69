"""Shared fixtures: a real nats-server per test, free ports, polling helpers."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import ADMIN_ENV, NatsCluster, NatsServer, creds, creds_env, free_port, nats_binary  # noqa: E402

__all__ = ["NatsCluster", "NatsServer", "creds", "creds_env", "free_port", "nats_binary", "wait_for"]

# The tests' own connections (bus.connect without a service's settings, the
# `openlines` CLI run as a process) act as the admin identity of auth.conf;
# every service under test gets its own identity (servers.creds / ServiceProcess).
os.environ.update(ADMIN_ENV)


@pytest.fixture
def imap() -> Iterator[Any]:
    """A real Dovecot (IMAP) with users support@ and sales@example.test; skips when Dovecot is missing."""
    from peers.mailservers import dovecot_server

    with dovecot_server() as server:
        yield server


@pytest.fixture
async def smtp() -> AsyncIterator[Any]:
    """A real SMTP server (aiosmtpd) that keeps what it receives."""
    from peers.mailservers import smtp_server

    async with smtp_server() as sink:
        yield sink


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


async def wait_for(
    probe: Callable[[], Awaitable[T | None] | T | None], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Any]:
    """A client connection with the streams and buckets bootstrapped."""
    from openlines import bus

    conn = await bus.connect(nats_server.url, "test", first_attempts=5)
    await bus.bootstrap(conn.jetstream())
    yield conn
    await conn.close()


os.environ.setdefault("OPENLINES_LOG_LEVEL", "warning")
