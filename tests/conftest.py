"""Shared fixtures: a real nats-server per test, mail servers, the per-test hang guard.

The helpers tests import are the package ``tests/support/`` (this file puts ``tests/`` on the path);
a test imports them from there, never from this file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import ADMIN_ENV, NatsServer  # noqa: E402
from support.timing import scaled  # noqa: E402

# The tests' own connections (bus.connect without a service's settings, the
# `openlines` CLI run as a process) act as the admin identity of auth.conf;
# every service under test gets its own identity (support.servers.creds / ServiceProcess).
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
    """A real nats-server under the shipped permission file; the test fails if it refused anyone anything.

    Every service under test connects with its own identity, so a refusal here is a grant
    auth.conf lacks (or a test doing what no service may: give it its own server).
    """
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()
    refused = server.violations()
    assert not refused, "NATS refused what a service did (deploy/nats/auth.conf lacks it):\n" + "\n".join(refused)


PER_TEST_TIMEOUT = 180.0  # pyproject's pytest timeout, the hang guard on an idle machine


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The per-test hang guard stretches with the machine's load as the deadlines inside tests do."""
    guard = pytest.mark.timeout(scaled(PER_TEST_TIMEOUT))
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(guard)


EXPECT_TIMEOUT = 5.0  # Playwright's own default for expect(...), on an idle machine


@pytest.fixture(autouse=True)
def _browser_expect_scales_with_load(request: pytest.FixtureRequest) -> None:
    """Playwright's ``expect`` waits 5 s by default, whatever the load: stretch it like every other deadline."""
    if request.node.get_closest_marker("browser") is None:
        return
    from playwright.async_api import expect

    expect.set_options(timeout=scaled(EXPECT_TIMEOUT) * 1000)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Any]:
    """A client connection with the streams and buckets bootstrapped."""
    from openlines import bus

    conn = await bus.connect(nats_server.url, "test", first_attempts=5)
    await bus.bootstrap(conn.jetstream())
    yield conn
    await conn.close()


os.environ.setdefault("OPENLINES_LOG_LEVEL", "warning")
# Services started as processes serve /metrics on a free port unless a test chooses one
# (the default, the HTTP port + 1000, could be taken on a busy machine).
os.environ.setdefault("OPENLINES_METRICS_PORT", "0")
