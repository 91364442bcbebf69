"""Helpers for tests: start services in-process, publish client messages, read streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from openlines import bus, subjects
from openlines.apply import apply, live
from openlines.envelopes import (
    MSG_ID_HEADER,
    ClientProfile,
    DeliveryMark,
    HistoryEntry,
    Inbound,
    Outbound,
    SessionEvent,
    encode,
    utcnow,
)
from openlines.lines import load, parse
from openlines.runner import Service, launch
from openlines.state import ClientRecord, Session, client_key
from support.servers import creds
from support.timing import scaled, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_LINES = ROOT / "deploy" / "lines.example.toml"


async def session_of(
    nc: NATS, chat_id: str, *, channel: str = "webchat", account: str = "demo", line: str = "support"
) -> Session | None:
    """The open session of a client's chat on ``line`` (the line their channel feeds), as the router stored it:
    None before the chat's first message and once the session is closed. By default a webchat visitor of
    account ``demo`` on line ``support``."""
    rec = await client_record(nc, chat_id, channel=channel, account=account)
    if rec is None or line not in rec.open_sessions:
        return None
    s, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).sessions, rec.open_sessions[line], Session)
    return s


async def client_record(nc: NATS, chat_id: str, *, channel: str = "webchat", account: str = "demo") -> ClientRecord | None:
    """The router's record of the client of a chat (profile, open sessions); None before their first message."""
    b = await bus.Buckets(nc.jetstream()).open()
    rec, _ = await bus.kv_get(b.clients, client_key(channel, account, subjects.chat_key(channel, account, chat_id)), ClientRecord)
    return rec


async def session_by_id(nc: NATS, session_id: str) -> Session:
    """The session as the router stored it; the test fails when there is none."""
    s, _ = await bus.kv_get((await bus.Buckets(nc.jetstream()).open()).sessions, session_id, Session)
    assert s is not None, f"no session {session_id}"
    return s


async def held_session(
    nc: NATS,
    chat_id: str,
    *,
    channel: str = "webchat",
    account: str = "demo",
    line: str = "support",
    other_than: str = "",
    timeout: float = 15,
) -> Session:
    """The chat's open session (as :func:`session_of`) once an operator holds it, offered or accepted;
    ``other_than`` passes over an earlier session of the chat."""

    async def probe() -> Session | None:
        s = await session_of(nc, chat_id, channel=channel, account=account, line=line)
        return s if s is not None and s.operator_id and s.id != other_than else None

    return await wait_for(probe, timeout=timeout, what=f"an operator holding {channel}/{chat_id}'s session on {line}")


async def pending_timers(nc: NATS, kind: str, target: str) -> int:
    """Timers of ``kind`` for ``target`` still in OL_TIMER: waiting in the server, or due and not yet fired
    (a fired one is acked, so removed)."""
    js = nc.jetstream()
    total = 0
    for subject in (subjects.timers_set(kind, target), subjects.timer(kind, target)):
        info = await js.stream_info(subjects.STREAM_TIMER, subjects_filter=subject)
        total += sum((info.state.subjects or {}).values())
    return total


async def last_timer_set(nc: NATS, kind: str, target: str) -> bytes | None:
    """The body of the newest timer of ``kind`` for ``target`` waiting in the server, None if none waits."""
    try:
        msg = await nc.jetstream().get_last_msg(subjects.STREAM_TIMER, subjects.timers_set(kind, target))
    except NotFoundError:
        return None
    return msg.data


async def sla_timers(nc: NATS, session_id: str) -> int:
    """SLA timers of the session still pending in OL_TIMER."""
    return await pending_timers(nc, "sla", session_id)


def sla_lines(first: int, *, next_response: int = 0, welcome: str = "") -> str:
    """Anna alone on line ``support`` (webchat ``demo``, chats wait 60 s) with SLA targets in seconds."""
    sla = f"[lines.sla]\nfirst_response_seconds = {first}" + (
        f"\nnext_response_seconds = {next_response}" if next_response else ""
    )
    replies = f'welcome = "{welcome}"' if welcome else ""
    return operators_block("anna") + line_block(operators='"anna"', queue="wait_seconds = 60", replies=replies, extra=sla)


async def router_answers(nc: NATS) -> bool:
    """The router answers commands (a status request; an empty one is refused, which is an answer too)."""
    try:
        await nc.request(subjects.command("status"), b"{}", timeout=scaled(0.5))
    except Exception:
        return False
    return True


def operators_block(*ids: str) -> str:
    """The ``[operators.<id>]`` tables of a lines file, each named after its id (``anna`` is "Anna")."""
    return "".join(f'[operators.{op}]\nname = "{op.capitalize()}"\n' for op in ids)


def line_block(
    line_id: str = "support",
    *,
    name: str = "",
    account: str = "demo",
    channels: str = "",
    operators: str = '"anna", "boris"',
    queue: str = "",
    hours: str = "",
    replies: str = "",
    session: str = "",
    crm: str = "",
    extra: str = "",
) -> str:
    """One ``[[lines]]`` block of a lines file: the line (``name``: "Line <id>" unless given) on the webchat
    ``account`` (or ``channels``, a TOML list) with ``operators`` (TOML list items) in its queue; each other
    section is written only when given a body."""
    channels = channels or f'[{{ channel = "webchat", account = "{account}" }}]'
    text = (
        f'\n[[lines]]\nid = "{line_id}"\nname = "{name or f"Line {line_id}"}"\nchannels = {channels}\n'
        f"[lines.queue]\noperators = [{operators}]\n{queue}\n"
    )
    for section, body in (("hours", hours), ("auto_replies", replies), ("session", session), ("crm", crm)):
        if body:
            text += f"[lines.{section}]\n{body}\n"
    return text + (f"{extra}\n" if extra else "")


async def apply_lines(nc: NATS, text: str | None = None) -> None:
    cfg = parse(text) if text is not None else load(EXAMPLE_LINES)
    await apply(await bus.Buckets(nc.jetstream()).open(), cfg)


async def leave_line(nc: NATS, operator_id: str, line_id: str) -> None:
    """Takes the operator out of the line's queue (as an admin would): they no longer see its conversations."""
    b = await bus.Buckets(nc.jetstream()).open()
    cfg = await live(b)
    for line in cfg.lines:
        if line.id == line_id:
            line.queue.operators = [op for op in line.queue.operators if op != operator_id]
    await apply(b, cfg)


async def partition_owners(nc: NATS) -> list[str]:
    """Which router replica leases each inbound partition ("" for a free one)."""
    kv = await nc.jetstream().key_value(subjects.KV_ROUTER)
    found = []
    for p in range(subjects.PARTITIONS):
        try:
            found.append(((await kv.get(f"lease.{p}")).value or b"").decode())
        except Exception:
            found.append("")
    return found


@asynccontextmanager
async def running_router(url: str, **overrides: Any) -> AsyncIterator[Service[Any]]:
    from router.app import setup
    from router.settings import Settings

    svc = await launch("router", Settings(nats_url=url, http_port=0, **{**creds("router"), **overrides}), setup, first_attempts=5)
    try:
        yield svc
    finally:
        await svc.stop()


def inbound(visitor: str, text: str, msg: str, account: str = "demo", name: str = "", **profile: str) -> Inbound:
    """Message ``msg`` of a webchat visitor as the gateway makes it (``profile``: the client's phone, email)."""
    return Inbound(
        id=f"webchat:{account}:{visitor}:{msg}",
        channel="webchat",
        account=account,
        chat_id=visitor,
        user_id=visitor,
        profile=ClientProfile(name=name, **profile),
        text=text,
        channel_msg_id=msg,
        received_at=utcnow(),
    )


async def publish(nc: NATS, env: Inbound) -> bool:
    """Publish like a gateway does; returns PubAck.duplicate."""
    ack = await nc.jetstream().publish(
        subjects.inbound(env.channel, env.account, env.chat_id), encode(env), headers={MSG_ID_HEADER: env.id}
    )
    return bool(ack.duplicate)


async def client_writes(nc: NATS, visitor: str, msg: str, text: str, account: str = "demo", **profile: str) -> None:
    """Message ``msg`` of a webchat visitor, published like the gateway does; the client's name is ``visitor``
    unless ``profile`` gives one."""
    await publish(nc, inbound(visitor, text, msg, account, **{"name": visitor, **profile}))


async def history(nc: NATS, session_id: str) -> list[HistoryEntry]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_HIST, subjects.history(session_id))
    return [msgspec.json.decode(data, type=HistoryEntry) for _, data in rows]


async def outbound_for(nc: NATS, visitor: str, account: str = "demo") -> list[Outbound]:
    subject = subjects.outbound("webchat", account, subjects.chat_key("webchat", account, visitor))
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_OUT, subject)
    return [msgspec.json.decode(data, type=Outbound) for _, data in rows]


async def marks_of(nc: NATS, session_id: str) -> list[DeliveryMark]:
    """The delivery marks a channel reported on the session's outbound messages, in order."""
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_MARK, subjects.mark(session_id))
    return [msgspec.json.decode(data, type=DeliveryMark) for _, data in rows]


async def events(nc: NATS, kind: str) -> list[SessionEvent]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event(kind))
    return [msgspec.json.decode(data, type=SessionEvent) for _, data in rows]
