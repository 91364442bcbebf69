"""Apply a validated lines file to the KV buckets: the one path used by the
CLI and the admin API. The router hot-reloads from the ``ol-lines`` watch."""

from __future__ import annotations

import msgspec
from nats.js.kv import KeyValue

from openlines.bus import Buckets, kv_entries
from openlines.lines import LineConfig, LinesFile
from openlines.state import OperatorAccount

LINE_PREFIX = "line."


def line_key(line_id: str) -> str:
    return LINE_PREFIX + line_id


async def _keys(kv: KeyValue) -> list[str]:
    return list(await kv_entries(kv._js, kv._name))  # the bucket's own context and name


async def _sync(kv: KeyValue, wanted: dict[str, bytes], managed_prefix: str, kind: str) -> list[str]:
    changes: list[str] = []
    existing = {k for k in await _keys(kv) if k.startswith(managed_prefix)}
    for key, data in wanted.items():
        try:
            entry = await kv.get(key)
            current = entry.value
        except Exception:
            current = None
        if current == data:
            changes.append(f"{kind} {key.removeprefix(managed_prefix)}: unchanged")
            continue
        await kv.put(key, data)
        changes.append(f"{kind} {key.removeprefix(managed_prefix)}: {'updated' if current is not None else 'created'}")
    for key in sorted(existing - wanted.keys()):
        await kv.delete(key)
        changes.append(f"{kind} {key.removeprefix(managed_prefix)}: removed")
    return changes


async def apply(buckets: Buckets, cfg: LinesFile) -> list[str]:
    """Make the buckets hold exactly ``cfg``. Returns one line per change."""
    accounts = {
        op_id: msgspec.json.encode(
            OperatorAccount(id=op_id, name=op.name, password_hash=op.password_hash, roles=op.roles, permissions=op.permissions)
        )
        for op_id, op in cfg.operators.items()
    }
    lines = {line_key(line.id): msgspec.json.encode(line) for line in cfg.lines}
    changes = await _sync(buckets.accounts, accounts, "", "operator")
    changes += await _sync(buckets.lines, lines, LINE_PREFIX, "line")
    return changes


async def load_lines(kv: KeyValue) -> list[LineConfig]:
    entries = await kv_entries(kv._js, kv._name)
    return [
        msgspec.json.decode(value, type=LineConfig) for key, (_, value) in sorted(entries.items()) if key.startswith(LINE_PREFIX)
    ]
