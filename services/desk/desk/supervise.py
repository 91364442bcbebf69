"""The supervisor view: per line, who waits, who works, what is live. Reads only.

Everything comes from KV: line configs (``ol-lines``), the waiting chats
(``ol-waiting``, one key per chat), operator presence and load
(``ol-operators``), names (``ol-accounts``) and the sessions themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from desk.reads import Reader, sla_clock
from openlines import subjects
from openlines.apply import load_lines
from openlines.bus import kv_entries
from openlines.roles import is_supervisor
from openlines.state import OperatorAccount, OperatorState, QueuedChat, Session, parse_waiting_key


def supervisor_problem(roles: list[str]) -> str | None:
    """Why this account may not open the supervisor view, or None when it may."""
    if is_supervisor(roles):
        return None
    have = ", ".join(roles) or "none"
    return f"the supervisor view needs the supervisor or admin role (your roles: {have}): ask an administrator"


def _session_row(s: Session, names: dict[str, str], now: float, clocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": s.id,
        "client_name": s.client_name or "Client",
        "channel": s.channel,
        "status": s.status,
        # Answered at least once (accepted, replied to, or intercepted), as the statistics and the
        # sessions API (answered_at) count it: a chat moved back to the queue after an answer stays answered.
        "answered": s.answered_at is not None,
        "operator_id": s.operator_id,
        "operator_name": names.get(s.operator_id, s.operator_id),
        "offered_to": list(s.offered_to),
        "opened_at": s.opened_at.isoformat(),
        "open_seconds": max(0, int(now - s.opened_at.timestamp())),
        "messages_in": s.messages_in,
        "held": s.held,
        "flagged": s.flagged,  # marked for a supervisor (e.g. "flood")
        "sla": sla_clock(clocks.get(s.id)),  # its running response-time clock, breached or not (docs/lines.md)
    }


async def overview(reader: Reader, now: float | None = None) -> dict[str, Any]:
    """Every line with its waiting queue, its operators (status, load) and its live sessions."""
    now = time.time() if now is None else now
    lines = await load_lines(reader.js)
    states: dict[str, OperatorState] = {}
    for key, (_rev, data) in (await kv_entries(reader.js, subjects.KV_OPERATORS)).items():
        try:
            states[key] = msgspec.json.decode(data, type=OperatorState)
        except msgspec.DecodeError:
            continue
    names: dict[str, str] = {}
    for key, (_rev, data) in (await kv_entries(reader.js, subjects.KV_ACCOUNTS)).items():
        try:
            names[key] = msgspec.json.decode(data, type=OperatorAccount).name
        except msgspec.DecodeError:
            continue
    queues: dict[str, list[QueuedChat]] = {}
    for key, (_rev, data) in (await kv_entries(reader.js, subjects.KV_WAITING)).items():
        try:
            chat = msgspec.json.decode(data, type=QueuedChat)
        except msgspec.DecodeError:
            continue
        queues.setdefault(chat.line_id or parse_waiting_key(key)[0], []).append(chat)
    for chats in queues.values():
        chats.sort(key=lambda c: (c.since, c.session_id))
    # Every open session someone holds or is offered, plus every waiting one: the live set.
    wanted = {sid for st in states.values() for sid in (*st.sessions, *st.offers)}
    wanted |= {c.session_id for chats in queues.values() for c in chats}
    loaded = await asyncio.gather(*(reader.session(sid) for sid in sorted(wanted)))
    sessions = {s.id: s for s in loaded if s is not None and s.is_open}
    clocks: dict[str, dict[str, Any]] = {}
    if await reader.sla_bucket() is not None:  # none before a router made it
        for key, (_rev, data) in (await kv_entries(reader.js, subjects.KV_SLA)).items():
            with contextlib.suppress(msgspec.DecodeError):
                clocks[key] = msgspec.json.decode(data)

    out_lines: list[dict[str, Any]] = []
    for line in lines:
        waiting = []
        for chat in queues.get(line.id, []):
            s = sessions.get(chat.session_id)
            waiting.append(
                {
                    "session_id": chat.session_id,
                    "client_name": (s.client_name if s else "") or "Client",
                    "channel": s.channel if s else "",
                    "held": bool(s and s.held),
                    "answered": bool(s and s.answered_at is not None),
                    "since": chat.since,
                    "wait_seconds": max(0, int(now - chat.since)),
                }
            )
        members = list(
            dict.fromkeys(
                [*line.queue.operators, *(s.operator_id for s in sessions.values() if s.line_id == line.id and s.operator_id)]
            )
        )
        operators = []
        for op_id in members:
            st = states.get(op_id) or OperatorState(id=op_id)
            on_line = [sid for sid in st.sessions if sid in sessions and sessions[sid].line_id == line.id]
            operators.append(
                {
                    "id": op_id,
                    "name": names.get(op_id, op_id),
                    "status": st.status,
                    "in_queue": op_id in line.queue.operators,
                    "load": len(st.sessions),
                    "load_on_line": len(on_line),
                    "unanswered": len([sid for sid in st.sessions if sid not in set(st.answered)]),
                    "offers": len(st.offers),
                    "max_chats": line.queue.max_chats_per_operator,
                    "connected": bool(st.desks),
                }
            )
        live = [_session_row(s, names, now, clocks) for s in sessions.values() if s.line_id == line.id]
        live.sort(key=lambda r: r["opened_at"])
        out_lines.append(
            {
                "id": line.id,
                "name": line.name,
                "mode": line.queue.mode,
                "wait_seconds": line.queue.wait_seconds,
                "waiting": waiting,
                "operators": operators,
                "sessions": live,
            }
        )
    return {"type": "supervisor", "at": now, "lines": out_lines, "intercept": INTERCEPT_NOTE}


INTERCEPT_NOTE = "Intercept takes a chat over: it leaves its operator (or the queue) and opens in your workspace, answered."
