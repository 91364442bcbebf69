"""An operator's command the router does not answer - its replica killed while at it, frozen, or gone - as
the operator sees it through the desk's HTTP API (decision 032).

A command that is safe to repeat (a close) is asked again within ``OPENLINES_COMMAND_RETRY_SECONDS`` and
done once; when no router comes back within it, the operator gets 503 with the reason and nothing changed.
A command that is not safe to repeat (a transfer) is asked once: 503 saying it may have been done.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
from support import apply_lines, client_writes, events, history, router_answers, session_by_id
from support.desk import http_session, running_desk, sign_in
from support.servers import ServiceProcess
from support.timing import scaled, wait_for

from openlines import subjects
from openlines.commands import SetStatus, call
from openlines.crashpoints import ENV as CRASH_ENV
from openlines.runner import Service


async def _router_up(nc: Any, router: ServiceProcess, **env: str) -> None:
    """The demo lines applied and the router process started (with ``env``) and answering commands."""
    await apply_lines(nc)
    router.start(**env)
    await wait_for(lambda: router_answers(nc), timeout=30, what="router answering commands")


@contextmanager
def _frozen(router: ServiceProcess) -> Iterator[None]:
    """The router process stopped (SIGSTOP) in the block: alive, connected, answering nothing - as when overloaded."""
    assert router.proc is not None
    os.kill(router.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(router.proc.pid, signal.SIGCONT)


@asynccontextmanager
async def _desk(url: str, retry_seconds: float) -> AsyncIterator[tuple[Service[Any], aiohttp.ClientSession, dict[str, str]]]:
    """A desk asking the router again for up to ``retry_seconds``, and anna signed in to it."""
    async with running_desk(url, command_retry_seconds=retry_seconds) as desk, http_session(desk) as http:
        yield desk, http, await sign_in(http, "anna")


async def _anna_answers_a_chat(nc: Any, http: aiohttp.ClientSession, h: dict[str, str], visitor: str) -> str:
    """Anna goes online, a client writes, the chat is offered to her and she accepts it; its id."""
    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
    await client_writes(nc, visitor, f"{visitor}-1", "Hello")

    async def offered() -> str | None:
        chats = (await (await http.get("/api/chats")).json())["chats"]
        return next((c["id"] for c in chats if c["status"] == "assigned"), None)

    sid = await wait_for(offered, timeout=30, what="the chat offered to anna")
    accepted = await http.post(f"/api/sessions/{sid}/accept", headers=h)
    assert accepted.status == 200, await accepted.text()
    return sid


async def _metric(desk: Service[Any], command: str, result: str) -> float:
    """``openlines_desk_repeated_commands_total`` of the desk, read from its /metrics."""
    async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{desk.metrics_port}/metrics") as r:
        text = await r.text()
    found = re.search(rf'^openlines_desk_repeated_commands_total\{{command="{command}",result="{result}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def _closes(nc: Any, sid: str) -> tuple[list[str], int]:
    """The transcript lines of the close, and how many session_closed events the chat has."""
    lines = [e.text for e in await history(nc, sid) if e.direction == "system" and e.text.startswith("Closed")]
    return lines, sum(1 for e in await events(nc, "session_closed") if e.session_id == sid)


async def test_a_close_the_router_dies_in_is_asked_again_of_the_restarted_router_and_done_once(
    nc: Any, nats_server: Any, router_process: ServiceProcess
) -> None:
    await _router_up(nc, router_process, **{CRASH_ENV: "router.close.recorded"})  # dies after writing "closed"
    # Long enough for the first try's wait (5 s) and a restart on a loaded machine.
    async with _desk(nats_server.url, min(60.0, scaled(30))) as (desk, http, h):
        sid = await _anna_answers_a_chat(nc, http, h, "v-crash")
        before = await _metric(desk, "close", "ok")
        close = asyncio.create_task(http.post(f"/api/sessions/{sid}/close", headers=h))
        await wait_for(lambda: router_process.exited() is not None, timeout=30, what="the router dying in the close")
        router_process.start(**{CRASH_ENV: ""})
        answer = await close
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["session"]["status"] == "closed"
        assert await _metric(desk, "close", "ok") == before + 1
    closed = await session_by_id(nc, sid)
    assert closed.status == "closed" and closed.closed_by == "anna" and closed.close_finished
    assert await _closes(nc, sid) == (["Closed by Anna Petrova"], 1)


async def test_a_close_a_frozen_router_is_slow_to_answer_is_asked_again_and_done_once(
    nc: Any, nats_server: Any, router_process: ServiceProcess
) -> None:
    """The repeat reaches the router while the first ask is still waiting there: both are answered as closed."""
    await _router_up(nc, router_process)
    asked = await nc.subscribe(subjects.command("close"))  # sees every ask (the router's is a queue group)
    async with _desk(nats_server.url, min(60.0, scaled(30))) as (_, http, h):
        sid = await _anna_answers_a_chat(nc, http, h, "v-frozen")
        with _frozen(router_process):
            close = asyncio.create_task(http.post(f"/api/sessions/{sid}/close", headers=h))
            await asked.next_msg(timeout=scaled(10))
            await asked.next_msg(timeout=scaled(20))  # the first ask got no answer in time: asked again
        answer = await close
        assert answer.status == 200, await answer.text()
    assert await _closes(nc, sid) == (["Closed by Anna Petrova"], 1)


async def test_a_close_without_a_router_for_longer_than_the_retries_answers_503_with_the_reason_and_changes_nothing(
    nc: Any, nats_server: Any, router_process: ServiceProcess
) -> None:
    await _router_up(nc, router_process)
    async with _desk(nats_server.url, 3.0) as (desk, http, h):
        sid = await _anna_answers_a_chat(nc, http, h, "v-gone")
        before = await _metric(desk, "close", "unavailable")
        router_process.kill()
        answer = await http.post(f"/api/sessions/{sid}/close", headers=h)
        assert answer.status == 503, await answer.text()
        assert answer.headers["Retry-After"] == "2"
        body = await answer.json()
        assert body["error"] == "unavailable"
        tries = re.search(
            r"^router unavailable: no router is running; asked (\d+) times in \d+ s\. Asking again is safe$", body["detail"]
        )
        assert tries and int(tries.group(1)) >= 2, body
        assert await _metric(desk, "close", "unavailable") == before + 1
    still = await session_by_id(nc, sid)
    assert still.status == "answered" and still.operator_id == "anna"
    assert await _closes(nc, sid) == ([], 0)


async def test_a_transfer_the_router_does_not_answer_is_asked_once_and_the_operator_told_it_may_be_done(
    nc: Any, nats_server: Any, router_process: ServiceProcess
) -> None:
    """A transfer asked again could move a chat that came back meanwhile a second time: it is never repeated."""
    await _router_up(nc, router_process)
    await call(nc, "status", SetStatus(operator_id="boris", status="online"))
    asked = await nc.subscribe(subjects.command("transfer"))
    async with _desk(nats_server.url, min(60.0, scaled(30))) as (_, http, h):
        sid = await _anna_answers_a_chat(nc, http, h, "v-transfer")
        with _frozen(router_process):
            answer = await http.post(f"/api/sessions/{sid}/transfer", json={"to_operator": "boris"}, headers=h)
        assert answer.status == 503, await answer.text()
        body = await answer.json()
        assert body == {
            "error": "unavailable",
            "detail": "router unavailable: no answer in time; the transfer may have been done"
            " - reload the chat before asking again",
        }
    # The one ask, answered late by the router once it runs again: done once.
    await wait_for(lambda: _offered_to_boris(nc, sid), timeout=30, what="the transfer done once the router runs again")
    assert asked.pending_msgs == 1
    moved = [e.text for e in await history(nc, sid) if "transferred the chat" in e.text]
    assert moved == ["Anna Petrova transferred the chat to Boris Ivanov"]


async def _offered_to_boris(nc: Any, sid: str) -> bool:
    s = await session_by_id(nc, sid)
    return "boris" in s.offered_to or s.operator_id == "boris"
