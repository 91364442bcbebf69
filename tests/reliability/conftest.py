"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.servers import ServiceProcess, free_port


@pytest.fixture
def router_process(nats_server: Any, tmp_path: Any) -> Iterator[ServiceProcess]:
    """The router as a process (not started): a test kills and starts it. A killed replica's inbound partitions
    are taken over after its lease, 3 s here."""
    env = {
        "OPENLINES_NATS_URL": nats_server.url,
        "OPENLINES_HTTP_PORT": str(free_port()),
        "OPENLINES_PARTITION_LEASE_SECONDS": "3",
    }
    r = ServiceProcess("router", "router", env, tmp_path)
    yield r
    r.stop()
