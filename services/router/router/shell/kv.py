"""Compare-and-set that may start from what this trigger already read or wrote.

``openlines.bus.kv_update`` reads the key before every write. On the router's
common path the value is in hand already (the client read at the start of a
message, the session just created, the operator's record in the watch-fed
copy), so the first attempt decides on it and writes with its revision: one
round trip instead of two. Nothing is trusted blindly: a write fails if the
key changed since (and is decided again on a fresh read), and a "no change"
decided on the known value is checked again on a fresh read too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from openlines.bus import kv_get

T = TypeVar("T")

Known = tuple[T | None, int | None]  # (value, revision); (None, None) = the key is known to be absent


async def cas(
    kv: KeyValue,
    key: str,
    typ: type[T],
    change: Callable[[T | None], T | None] | Callable[[T | None], Awaitable[T | None]],
    *,
    known: Known[T] | None = None,
    attempts: int = 50,
) -> tuple[T | None, int | None]:
    """Read-modify-write one key like ``kv_update``; returns what is stored after and its revision.

    ``change`` must be free of side effects: it may be called on the known value and again on a fresh one.
    """
    start = known
    for _ in range(attempts):
        if start is not None:
            current, revision = start
        else:
            current, revision = await kv_get(kv, key, typ)
        result = change(current)
        new = await result if asyncio.iscoroutine(result) else result
        if new is None:
            if start is not None:
                start = None  # decided on what we knew: make sure on what is stored
                continue
            return current, revision
        data = msgspec.json.encode(new)
        try:
            written = await kv.create(key, data) if revision is None else await kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            start = None
            continue
        except BadRequestError as exc:
            # create() on a key that exists (or was deleted) answers "wrong last sequence"
            if "wrong last sequence" not in str(exc).lower():
                raise
            start = None
            continue
        return new, written  # type: ignore[return-value]
    raise RuntimeError(f"kv {key}: too much contention, gave up after {attempts} attempts")
