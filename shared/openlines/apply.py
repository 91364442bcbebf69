"""Apply a validated lines file to the KV buckets: the one path used by the
CLI and the admin API. The router hot-reloads from the ``ol-lines`` watch.

:func:`live` reads the configuration back and :func:`to_toml` writes it as a
lines file, so what admins changed in the pages can be kept as code
(``openlines lines export``)."""

from __future__ import annotations

from typing import Any

import msgspec
import tomli_w
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import subjects
from openlines.bus import Buckets, kv_entries
from openlines.lines import LineConfig, LinesFile, OperatorConfig
from openlines.state import OperatorAccount

LINE_PREFIX = "line."


def line_key(line_id: str) -> str:
    return LINE_PREFIX + line_id


async def _sync(
    js: JetStreamContext, bucket: str, kv: KeyValue, wanted: dict[str, bytes], managed_prefix: str, kind: str
) -> list[str]:
    changes: list[str] = []
    existing = {k for k in await kv_entries(js, bucket) if k.startswith(managed_prefix)}
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
    changes = await _sync(buckets.js, subjects.KV_ACCOUNTS, buckets.accounts, accounts, "", "operator")
    changes += await _sync(buckets.js, subjects.KV_LINES, buckets.lines, lines, LINE_PREFIX, "line")
    return changes


async def load_lines(js: JetStreamContext) -> list[LineConfig]:
    """Every line config the ``ol-lines`` bucket holds, by id."""
    entries = await kv_entries(js, subjects.KV_LINES)
    return [
        msgspec.json.decode(value, type=LineConfig) for key, (_, value) in sorted(entries.items()) if key.startswith(LINE_PREFIX)
    ]


async def live(buckets: Buckets) -> LinesFile:
    """The configuration the buckets hold now (what :func:`apply` last wrote, or an admin saved)."""
    accounts = await kv_entries(buckets.js, subjects.KV_ACCOUNTS)
    operators: dict[str, OperatorConfig] = {}
    for key, (_rev, data) in sorted(accounts.items()):
        acc = msgspec.json.decode(data, type=OperatorAccount)
        operators[key] = OperatorConfig(
            name=acc.name, password_hash=acc.password_hash, roles=list(acc.roles), permissions=list(acc.permissions)
        )
    return LinesFile(operators=operators, lines=await load_lines(buckets.js))


async def is_empty(buckets: Buckets) -> bool:
    """Whether no line and no operator was ever applied (a new store)."""
    cfg = await live(buckets)
    return not cfg.lines and not cfg.operators


def to_toml(cfg: LinesFile, *, operators: bool = True) -> str:
    """A lines file for ``cfg`` as a person would write it: defaults left out, whole numbers whole."""
    doc: dict[str, Any] = {}
    if operators and cfg.operators:
        doc["operators"] = {k: tidy(msgspec.to_builtins(op)) for k, op in cfg.operators.items()}
    doc["lines"] = [tidy(msgspec.to_builtins(line)) for line in cfg.lines]
    return tomli_w.dumps(doc)


def tidy(value: Any) -> Any:
    """Without sub-tables left at all their defaults (they would show as empty headers), and
    ``1440`` rather than ``1440.0`` for a whole number kept in a fractional setting."""
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
