"""The router's request/reply service: operator commands on ``ol.cmd.*``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from prometheus_client import Counter, Gauge

from openlines import bus, subjects
from openlines import commands as cmds
from openlines.commands import Result
from openlines.envelopes import BAD_JSON
from router.engine import Engine, Refused

log = logging.getLogger("router.commands")

COMMANDS = Counter("openlines_router_commands_total", "Operator commands", ["command", "result"])
IN_PROGRESS = Gauge("openlines_router_commands_in_progress", "Operator commands being handled by this replica now")


class AtOnce:
    """Up to ``limit`` commands handled side by side on this replica.

    nats-py hands a subscription's messages to its callback one after another, so a command that waits
    (a write retried through a NATS fault, a slow bucket) held every later command of its kind on the
    replica: one operator's stuck close delayed every other operator's close, one slow reply every reply.
    Commands on the same chat need no order from here: each page waits for one answer before it asks
    again, and every change is a compare-and-set, as between two replicas.
    """

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, handle: Callable[[Request], Awaitable[None]]) -> Callable[[Request], Awaitable[None]]:
        async def start(req: Request) -> None:
            await self._slots.acquire()  # all busy: the next request waits in the subscription
            task = asyncio.get_running_loop().create_task(self._run(handle, req), name="router-command")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return start

    async def _run(self, handle: Callable[[Request], Awaitable[None]], req: Request) -> None:
        IN_PROGRESS.inc()
        try:
            await handle(req)
        except Exception:  # the answer could not be sent (NATS away): the caller's request times out
            log.exception("command answer not sent", extra={"subject": req.subject})
        finally:
            IN_PROGRESS.dec()
            self._slots.release()

    async def finish(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the commands being handled: their callers are waiting for the answer."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _answer(result: Result) -> bytes:
    return msgspec.json.encode(result)


async def serve(nc: NATS, engine: Engine, running: AtOnce) -> Service:
    svc = await add_service(nc, name=subjects.ROUTER_SERVICE, version="0.1.0", description="openlines line rules")

    async def status(c: cmds.SetStatus) -> Result:
        await engine.set_status(c.operator_id, c.status)
        return Result(ok=True)

    async def accept(c: cmds.Accept) -> Result:
        return Result(ok=True, session=await engine.accept(c.operator_id, c.session_id))

    async def reply(c: cmds.Reply) -> Result:
        session, out_id = await engine.reply(c.operator_id, c.session_id, c.text, c.client_msg_id, c.attachments, c.template)
        return Result(ok=True, session=session, message_id=out_id)

    async def close(c: cmds.Close) -> Result:
        return Result(ok=True, session=await engine.close(c.operator_id, c.session_id))

    async def skip(c: cmds.Skip) -> Result:
        await engine.skip(c.operator_id, c.session_id)
        return Result(ok=True)

    async def transfer(c: cmds.Transfer) -> Result:
        return Result(ok=True, session=await engine.transfer(c.operator_id, c.session_id, c.to_operator, c.to_line, c.comment))

    async def pin(c: cmds.Pin) -> Result:
        return Result(ok=True, session=await engine.pin(c.operator_id, c.session_id, c.pinned))

    async def spam(c: cmds.Spam) -> Result:
        return Result(ok=True, session=await engine.spam(c.operator_id, c.session_id))

    async def presence(c: cmds.Presence) -> Result:
        await engine.presence(c.operator_id, c.connected, c.desk)
        return Result(ok=True)

    async def intercept(c: cmds.Intercept) -> Result:
        return Result(ok=True, session=await engine.intercept(c.operator_id, c.session_id))

    async def take(c: cmds.Take) -> Result:
        return Result(ok=True, session=await engine.take(c.operator_id, c.session_id))

    async def note(c: cmds.Note) -> Result:
        return Result(ok=True, session=await engine.note(c.operator_id, c.session_id, c.text, c.client_msg_id))

    async def tag(c: cmds.Tag) -> Result:
        return Result(ok=True, session=await engine.tag(c.operator_id, c.session_id, c.add, c.remove))

    async def edit_client(c: cmds.EditClient) -> Result:
        return Result(ok=True, session=await engine.edit_client(c.operator_id, c.session_id, c.name, c.phone, c.email))

    async def merge(c: cmds.MergeClients) -> Result:
        return Result(ok=True, session=await engine.merge_clients(c.operator_id, c.session_id, c.other_session_id))

    handlers: dict[str, Callable[..., Awaitable[Result]]] = {
        "client": edit_client,
        "merge": merge,
        "take": take,
        "tag": tag,
        "note": note,
        "intercept": intercept,
        "status": status,
        "accept": accept,
        "reply": reply,
        "close": close,
        "skip": skip,
        "transfer": transfer,
        "pin": pin,
        "spam": spam,
        "presence": presence,
    }
    for name, fn in handlers.items():
        handler = running.wrap(_endpoint(name, cmds.COMMANDS[name], fn))
        await svc.add_endpoint(name=name, subject=subjects.command(name), handler=handler)
    return svc


def _endpoint(name: str, typ: type[msgspec.Struct], fn: Callable[..., Awaitable[Result]]) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(typ)

    async def handle(req: Request) -> None:
        try:
            cmd = decoder.decode(req.data)
        except BAD_JSON as exc:
            COMMANDS.labels(name, "invalid").inc()
            await req.respond(_answer(Result(ok=False, error="invalid", detail=str(exc))))
            return
        try:
            # Its caller waits COMMAND_TIMEOUT for the answer: past that, nobody reads it (see bus.deadline_in).
            with bus.deadline_in(cmds.COMMAND_TIMEOUT):
                result = await fn(cmd)
        except Refused as exc:
            COMMANDS.labels(name, exc.code).inc()
            await req.respond(_answer(Result(ok=False, error=exc.code, detail=exc.detail)))
            return
        except subjects.BadToken as exc:
            COMMANDS.labels(name, "invalid").inc()
            await req.respond(_answer(Result(ok=False, error="invalid", detail=str(exc))))
            return
        except Exception as exc:
            if isinstance(exc, bus.UNAVAILABLE) or bus.storing_already(exc):  # NATS away: one line, no stack
                log.warning("command failed: NATS unavailable", extra={"command": name, "error": repr(exc)})
            else:
                log.exception("command failed", extra={"command": name})
            COMMANDS.labels(name, "unavailable").inc()
            await req.respond(
                _answer(Result(ok=False, error="unavailable", detail="the router could not complete the command; retry"))
            )
            return
        COMMANDS.labels(name, "ok").inc()
        await req.respond(_answer(result))

    return handle
