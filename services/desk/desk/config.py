"""The live line configuration as the admin pages and API read and change it.

The configuration lives in two buckets (operators in ``ol-accounts``, lines in
``ol-lines``), written only by :func:`openlines.apply.apply` - the path the
CLI uses too, so the router hot-reloads an admin's change like any other.

Concurrent edits: a snapshot carries a *version*, the revision of a guard key
in ``ol-lines`` (outside apply's ``line.`` prefix, so the router ignores it)
plus a digest of every managed key's revision. A save must name the version it
started from; it then moves the guard key by compare-and-set, so of two admins
who started from the same version exactly one wins and the other is told the
configuration changed meanwhile. A CLI apply changes the digest, so a page
opened before it cannot overwrite it either.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import tomllib
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from openlines import subjects
from openlines.apply import LINE_PREFIX, apply, to_toml
from openlines.bus import Buckets, kv_entries
from openlines.doctor import Finding, diagnose
from openlines.lines import PERMISSION_OPENLINES, ConfigError, LineConfig, LinesFile, OperatorConfig, check, convert_all
from openlines.roles import DESK_ROLES
from openlines.state import OperatorAccount

GUARD_KEY = "admin.version"
_VERSION = re.compile(r"^(\d{1,20})-([0-9a-f]{16})$")


class Conflict(Exception):
    """The configuration changed since the version the edit started from."""

    def __init__(self, current: str) -> None:
        super().__init__(f"the configuration changed meanwhile (now version {current})")
        self.current = current


@dataclass(frozen=True, slots=True)
class Snapshot:
    cfg: LinesFile
    version: str

    def line(self, line_id: str) -> LineConfig | None:
        return next((line for line in self.cfg.lines if line.id == line_id), None)


def valid_version(value: str | None) -> bool:
    return bool(value) and _VERSION.match(value or "") is not None


def lines_toml(lines: list[LineConfig]) -> str:
    """The lines as the TOML editor shows them (defaults left out, like a hand-written file)."""
    return to_toml(LinesFile(lines=lines), operators=False)


def parse_lines_toml(text: str) -> list[LineConfig]:
    """``[[lines]]`` tables from the editor; ConfigError naming the key for anything wrong."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"]) from None
    extra = sorted(set(raw) - {"lines"})
    if extra:
        raise ConfigError(
            [f"{key}: only [[lines]] tables belong here; operators are edited on the Operators page" for key in extra]
        )
    cfg, errors = convert_all(raw)  # every bad key at once, one error each
    if errors:
        raise ConfigError(errors)
    return cfg.lines


def validate(cfg: LinesFile) -> None:
    errors = check(cfg)
    if errors:
        raise ConfigError(errors)


async def diagnosed(cfg: LinesFile) -> list[Finding]:
    """The doctor's findings, worked out off the event loop: checking password hashes against the
    published passwords costs argon2 time per new hash (tens of ms each), which must not stall
    every operator's live page."""
    return await asyncio.to_thread(diagnose, cfg)


def queues_of(cfg: LinesFile, operator_id: str) -> list[str]:
    return [line.id for line in cfg.lines if operator_id in line.queue.operators]


# Doctor findings that no_chats_reasons already says in its own words.
_COVERED = frozenset({"operator-no-permission", "operator-no-desk-role", "operator-in-no-queue"})
# Findings about an operator that do not keep chats from them (the lines page shows them with the rest).
_NOT_ABOUT_CHATS = frozenset({"operator-demo-password"})


def takes_chats(cfg: LinesFile, operator_id: str) -> bool:
    """Whether the account is meant to answer clients (else it is, say, an admin-only account)."""
    op = cfg.operators[operator_id]
    return bool(queues_of(cfg, operator_id)) or PERMISSION_OPENLINES in op.permissions or "operator" in op.roles


def no_chats_reasons(cfg: LinesFile, operator_id: str, findings: list[Finding]) -> list[str]:
    """Why this operator would see no chats in the desk; empty when they would see some."""
    op = cfg.operators[operator_id]
    reasons: list[str] = []
    if PERMISSION_OPENLINES not in op.permissions:
        reasons.append(f"lacks the {PERMISSION_OPENLINES!r} (open lines) permission: the desk refuses them")
    if not any(role in DESK_ROLES for role in op.roles):
        reasons.append("has no operator role (neither operator nor supervisor): the desk refuses them")
    if not queues_of(cfg, operator_id):
        reasons.append("is not a member of any line's queue (queue.operators): no chat is ever offered to them")
    mine = f"operators.{operator_id}"
    for f in findings:
        if f.code not in _COVERED | _NOT_ABOUT_CHATS and (f.key == mine or f.key.startswith(mine + ".")) and f.severity != "info":
            reasons.append(f.problem)
    return reasons


def operator_view(cfg: LinesFile, operator_id: str, findings: list[Finding]) -> dict[str, Any]:
    op = cfg.operators[operator_id]
    takes = takes_chats(cfg, operator_id)
    return {
        "id": operator_id,
        "name": op.name,
        "roles": list(op.roles),
        "permissions": list(op.permissions),
        "lines": queues_of(cfg, operator_id),
        "has_password": bool(op.password_hash),
        "takes_chats": takes,
        "no_chats": no_chats_reasons(cfg, operator_id, findings) if takes else [],
    }


class ConfigStore:
    def __init__(self, js: JetStreamContext, buckets: Buckets) -> None:
        self.js = js
        self.b = buckets

    async def snapshot(self) -> Snapshot:
        accounts = await kv_entries(self.js, subjects.KV_ACCOUNTS)
        lines = await kv_entries(self.js, subjects.KV_LINES)
        guard = lines.get(GUARD_KEY, (0, b""))[0]
        digest = hashlib.sha256()
        for bucket, entries, prefix in (("a", accounts, ""), ("l", lines, LINE_PREFIX)):
            for key in sorted(entries):
                if key.startswith(prefix) and key != GUARD_KEY:
                    digest.update(f"{bucket}\x1f{key}\x1f{entries[key][0]}\x1e".encode())
        operators: dict[str, OperatorConfig] = {}
        for key, (_rev, data) in sorted(accounts.items()):
            try:
                acc = msgspec.json.decode(data, type=OperatorAccount)
            except msgspec.DecodeError:
                continue
            operators[key] = OperatorConfig(
                name=acc.name, password_hash=acc.password_hash, roles=list(acc.roles), permissions=list(acc.permissions)
            )
        found: list[LineConfig] = []
        for key, (_rev, data) in sorted(lines.items()):
            if not key.startswith(LINE_PREFIX):
                continue
            try:
                found.append(msgspec.json.decode(data, type=LineConfig))
            except msgspec.DecodeError:
                continue
        return Snapshot(cfg=LinesFile(operators=operators, lines=found), version=f"{guard}-{digest.hexdigest()[:16]}")

    async def save(self, cfg: LinesFile, expected: str, by: str) -> tuple[list[str], str]:
        """Validate ``cfg`` and make it live if the configuration is still at ``expected``.

        Raises ConfigError (nothing changed) or Conflict (nothing changed).
        Returns apply's change lines and the new version.
        """
        validate(cfg)
        current = await self.snapshot()
        if current.version != expected:
            raise Conflict(current.version)
        guard = int(expected.split("-", 1)[0])
        mark = msgspec.json.encode({"by": by, "at": time.time()})
        try:
            if guard == 0:
                await self.b.lines.create(GUARD_KEY, mark)
            else:
                await self.b.lines.update(GUARD_KEY, mark, last=guard)
        except KeyWrongLastSequenceError:
            raise Conflict((await self.snapshot()).version) from None
        except BadRequestError as exc:
            if "wrong last sequence" in str(exc).lower():
                raise Conflict((await self.snapshot()).version) from None
            raise
        changes = await apply(self.b, cfg)
        return changes, (await self.snapshot()).version
