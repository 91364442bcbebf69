"""Line configuration: the TOML file ops write, validated into msgspec Structs.

Every key is documented in docs/lines.md. Unknown keys are errors (a typo must
never silently fall back to a default), and each error names the key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from openlines.envelopes import CHANNELS

PERMISSION_OPENLINES = "openlines"
ROLES = ("admin", "supervisor", "operator")

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(ValueError):
    """The line configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ChannelBinding(_Strict):
    channel: str
    account: str


class QueueConfig(_Strict):
    mode: Literal["round_robin"] = "round_robin"
    operators: list[str] = []
    wait_seconds: int = 45  # Bitrix24 recommends 30-60
    max_chats_per_operator: int = 4  # Bitrix24 recommends 3-5
    skip_offline: bool = True


class AutoReplies(_Strict):
    welcome: str = ""
    closing: str = ""


class LineConfig(_Strict):
    id: str
    name: str
    channels: list[ChannelBinding] = []
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    auto_replies: AutoReplies = msgspec.field(default_factory=AutoReplies)


class OperatorConfig(_Strict):
    name: str
    password_hash: str = ""
    roles: list[str] = msgspec.field(default_factory=lambda: ["operator"])
    permissions: list[str] = msgspec.field(default_factory=lambda: [PERMISSION_OPENLINES])


class LinesFile(_Strict):
    operators: dict[str, OperatorConfig] = {}
    lines: list[LineConfig] = []


def parse(text: str, source: str = "<config>") -> LinesFile:
    """Parse and validate a lines TOML document; raise ConfigError with every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    try:
        cfg = msgspec.convert(raw, LinesFile)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{source}: {_readable(str(exc))}"]) from None
    errors = check(cfg)
    if errors:
        raise ConfigError([f"{source}: {e}" for e in errors])
    return cfg


def load(path: str | Path) -> LinesFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    return parse(text, str(p))


def _readable(msg: str) -> str:
    # msgspec says "... - at `$.lines[0].queue`"; keep it, it names the key.
    return msg.replace("`$.", "`").replace("`$`", "the top level")


def check(cfg: LinesFile) -> list[str]:
    """Cross-field rules msgspec cannot express. Returns problems, empty if none."""
    errors: list[str] = []
    for op_id, op in cfg.operators.items():
        if not _ID.match(op_id):
            errors.append(f"operators.{op_id}: id must be 1-64 characters of A-Z a-z 0-9 _ -")
        for role in op.roles:
            if role not in ROLES:
                errors.append(f"operators.{op_id}.roles: unknown role {role!r} (one of {', '.join(ROLES)})")
    seen_lines: set[str] = set()
    bound: dict[tuple[str, str], str] = {}
    for i, line in enumerate(cfg.lines):
        where = f"lines[{i}] ({line.id})"
        if not _ID.match(line.id):
            errors.append(f"{where}.id: must be 1-64 characters of A-Z a-z 0-9 _ -")
        if line.id in seen_lines:
            errors.append(f"{where}.id: line {line.id!r} is declared twice")
        seen_lines.add(line.id)
        for j, ch in enumerate(line.channels):
            if ch.channel not in CHANNELS:
                errors.append(f"{where}.channels[{j}].channel: unknown channel {ch.channel!r} (one of {', '.join(CHANNELS)})")
            if not _ID.match(ch.account):
                errors.append(f"{where}.channels[{j}].account: must be 1-64 characters of A-Z a-z 0-9 _ -")
            other = bound.get((ch.channel, ch.account))
            if other is not None and other != line.id:
                errors.append(
                    f"{where}.channels[{j}]: {ch.channel}/{ch.account} already feeds line {other!r};"
                    " a channel account feeds one line"
                )
            bound[(ch.channel, ch.account)] = line.id
        q = line.queue
        if q.wait_seconds < 5 or q.wait_seconds > 3600:
            errors.append(f"{where}.queue.wait_seconds: {q.wait_seconds} is outside 5-3600")
        if q.max_chats_per_operator < 1:
            errors.append(f"{where}.queue.max_chats_per_operator: must be at least 1")
        for op_id in q.operators:
            member = cfg.operators.get(op_id)
            if member is None:
                errors.append(f"{where}.queue.operators: {op_id!r} is not declared under [operators]")
            elif PERMISSION_OPENLINES not in member.permissions:
                errors.append(
                    f"{where}.queue.operators: {op_id!r} lacks the {PERMISSION_OPENLINES!r} permission and would never see a chat"
                )
    return errors


def binding_index(lines: list[LineConfig]) -> dict[tuple[str, str], LineConfig]:
    """(channel, account) -> the line it feeds."""
    return {(ch.channel, ch.account): line for line in lines for ch in line.channels}
