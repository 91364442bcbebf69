"""API tokens can carry an expiry: past it they are refused with a 401 that says so, and the CLI shows it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from support import apply_lines
from support.desk_admin import LINES, bearer, http_session, running_desk

from desk.tokens import TokenStore, new_token, open_bucket, parse_duration
from openlines.envelopes import utcnow


@pytest.fixture
async def http(nc: Any, nats_server: Any) -> AsyncIterator[aiohttp.ClientSession]:
    await apply_lines(nc, LINES)
    async with running_desk(nats_server.url) as desk, http_session(desk) as session:
        yield session


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openlines", "--nats", url, "desk", "token", *args], capture_output=True, text=True, timeout=60
    )


async def test_an_expired_token_is_refused_with_the_reason_and_listed_as_expired(
    http: aiohttp.ClientSession, nc: Any, nats_server: Any
) -> None:
    store = TokenStore(nc.jetstream(), await open_bucket(nc.jetstream()))
    token, record = new_token("short job", "supervisor", timedelta(minutes=5))
    await store.add(msgspec.structs.replace(record, expires_at=utcnow() - timedelta(seconds=1)))
    live, live_record = new_token("still good", "supervisor", timedelta(days=1))
    await store.add(live_record)

    refused = await http.get("/api/v1/stats", headers=bearer(token))
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    body = await refused.json()
    assert body["error"] == "token_expired" and f"token {record.id} expired at" in body["detail"]
    assert (await http.get("/api/v1/stats", headers=bearer(live))).status == 200

    listed = await asyncio.to_thread(cli, nats_server.url, "list")
    assert listed.returncode == 0, listed.stderr
    [expired_row] = [row for row in listed.stdout.splitlines() if row.startswith(record.id)]
    assert "(expired)" in expired_row and "short job" in expired_row
    [live_row] = [row for row in listed.stdout.splitlines() if row.startswith(live_record.id)]
    assert "(expired)" not in live_row and live_record.expires_at is not None
    assert live_record.expires_at.isoformat(timespec="seconds") in live_row


async def test_the_cli_makes_a_token_with_an_expiry_and_refuses_a_bad_one(http: aiohttp.ClientSession, nats_server: Any) -> None:
    made = await asyncio.to_thread(
        cli, nats_server.url, "create", "quarterly export", "--role", "supervisor", "--expires-in", "30d"
    )
    assert made.returncode == 0, made.stderr
    assert "expires 20" in made.stdout
    token = made.stdout.strip().splitlines()[-1]
    assert (await http.get("/api/v1/stats", headers=bearer(token))).status == 200
    listed = await asyncio.to_thread(cli, nats_server.url, "list")
    row = next(r for r in listed.stdout.splitlines() if "quarterly export" in r)
    assert "expires 20" in row and "never" not in row
    forever = await asyncio.to_thread(cli, nats_server.url, "create", "no expiry", "--role", "admin")
    assert forever.returncode == 0 and "no expiry" in forever.stdout
    assert "expires never" in (await asyncio.to_thread(cli, nats_server.url, "list")).stdout

    bad = await asyncio.to_thread(cli, nats_server.url, "create", "oops", "--role", "admin", "--expires-in", "soon")
    assert bad.returncode == 2 and "e.g. 90m, 12h or 30d" in bad.stdout


@pytest.mark.parametrize(
    ("text", "value"), [("90m", timedelta(minutes=90)), ("12h", timedelta(hours=12)), ("30d", timedelta(days=30))]
)
def test_durations(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "0d", "30", "d", "-1d", "1w", "99999d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expiry"):
        parse_duration(text)
