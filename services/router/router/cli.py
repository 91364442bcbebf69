"""``openlines lines simulate``: what the router would do with a message (entry point ``openlines.cli.lines``).

Imports only the pure core, so the command starts at once and needs no NATS.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import cast

import msgspec

from openlines.lines import LinesFile, load
from router.core.simulate import OperatorSim, OperatorStatus, Outcome, simulate

STATUSES = ("online", "away", "offline")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}

OPERATORS_HELP = (
    "operators as id:status[:open[:unanswered[:ago]]], comma-separated, e.g. "
    '"anna:online:2,boris:away,vera:online:0:1". status is online|away|offline; open = open chats, '
    "unanswered = how many of them are not answered yet; ago = when they were last assigned a chat, "
    "before --at (30s, 15m, 2h, 1d; default never). Default: every declared operator online with no chats. "
    "An operator not listed has no state, like one who never signed in"
)


def register_simulate(lines: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = lines.add_parser(
        "simulate",
        help="print what the router would do with a new message: line, hours, auto-reply, operator",
        description="Dry-run the line rules for the first message of a new conversation. Needs no NATS.",
    )
    p.add_argument("file", help="the lines TOML file")
    p.add_argument(
        "--at",
        default="now",
        type=_instant,
        help='when the message arrives: ISO 8601 with an offset (2026-11-24T21:30+02:00), or "now" (default); '
        "a time without an offset is read as UTC",
    )
    p.add_argument("--channel", required=True, type=_binding, help="channel/account the message comes in on, e.g. webchat/demo")
    p.add_argument("--operators", type=_operators, default=None, help=OPERATORS_HELP)
    p.add_argument("--returning", action="store_true", help="the client has written before (not a first contact)")
    p.add_argument("--name", default="", help="the client's name as the channel reports it (fills {client_name})")
    p.add_argument("--responsible", default=None, help="the client's responsible manager per the CRM (mode crm_responsible)")
    p.add_argument("--waiting", type=_count, default=0, help="older chats already waiting in the line's queue (default 0)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(run=_run, is_async=False)


def _run(args: argparse.Namespace) -> int:
    cfg = load(args.file)  # ConfigError -> the same message and exit 2 as `openlines lines validate`
    at, naive = args.at
    channel, account = args.channel
    outcome = simulate(
        cfg,
        at=at,
        channel=channel,
        account=account,
        operators=_resolve_operators(cfg, args.operators, at),
        first_contact=not args.returning,
        client_name=args.name,
        responsible=args.responsible or None,
        waiting=args.waiting,
    )
    if args.json:
        print(msgspec.json.encode(outcome).decode())
    else:
        print(render(outcome, naive=naive))
    return 0


def render(outcome: Outcome, *, naive: bool = False) -> str:
    lines = []
    if naive:
        lines.append("(--at has no UTC offset: read as UTC)")
    lines += [f"{i}. {step.text}" for i, step in enumerate(outcome.steps, 1)]
    return "\n".join(lines)


# -------------------------------------------------------------- arguments

_RawOp = tuple[str, OperatorStatus, int, int, float | None]  # id, status, open, unanswered, seconds ago


def _instant(value: str) -> tuple[datetime, bool]:
    if value.strip().lower() == "now":
        return datetime.now(UTC), False
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-24T21:30+02:00) or 'now'") from None
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC), True
    return at, False


def _binding(value: str) -> tuple[str, str]:
    channel, sep, account = value.partition("/")
    if not sep or not channel or not account or "/" in account:
        raise argparse.ArgumentTypeError(f"{value!r} is not channel/account, e.g. webchat/demo")
    return channel, account


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return n


def _operators(value: str) -> list[_RawOp]:
    out: list[_RawOp] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) > 5 or not fields[0]:
            raise argparse.ArgumentTypeError(f"{item!r} is not id:status[:open[:unanswered[:ago]]]")
        status = fields[1] if len(fields) > 1 else "online"
        if status not in STATUSES:
            raise argparse.ArgumentTypeError(f"{item!r}: status {status!r} is not one of {', '.join(STATUSES)}")
        try:
            open_chats = _count(fields[2]) if len(fields) > 2 else 0
            unanswered = _count(fields[3]) if len(fields) > 3 else 0
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
        if unanswered > open_chats:
            raise argparse.ArgumentTypeError(f"{item!r}: {unanswered} unanswered of only {open_chats} open chats")
        ago: float | None = None
        if len(fields) > 4:
            m = _AGO.match(fields[4])
            if m is None:
                raise argparse.ArgumentTypeError(f"{item!r}: {fields[4]!r} is not a duration like 30s, 15m, 2h, 1d")
            ago = float(m.group(1)) * _UNIT[m.group(2)]
        out.append((fields[0], cast(OperatorStatus, status), open_chats, unanswered, ago))
    return out


def _resolve_operators(cfg: LinesFile, given: list[_RawOp] | None, at: datetime) -> list[OperatorSim]:
    if given is None:
        return [OperatorSim(id=op_id) for op_id in cfg.operators]
    return [
        OperatorSim(
            id=op_id,
            status=status,
            open_chats=open_chats,
            unanswered_chats=unanswered,
            last_assigned_at=0.0 if ago is None else (at - timedelta(seconds=ago)).timestamp(),
        )
        for op_id, status, open_chats, unanswered, ago in given
    ]
