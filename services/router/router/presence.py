"""Desk replicas that died without a word: their operators' pages are gone.

A desk replica tells the router when an operator's last page on it closes. A
replica killed with SIGKILL (or cut off from NATS, or frozen) tells nothing,
so every replica also keeps a key ``<desk id>`` in ``ol-desk-presence``,
renewed every ``OPENLINES_DESK_HEARTBEAT_SECONDS`` and expiring after three
missed renewals (the bucket's TTL). Every router replica looks now and then
(``OPENLINES_DESK_SWEEP_SECONDS``) at the desks its operators are said to
have pages on; a desk whose key is gone is removed from them, exactly as if it
had reported the pages closed: an operator left with no page anywhere starts
the line's ``presence_grace_seconds``, and goes offline (their chats moving
on) unless a page comes back meanwhile, on any replica.

Several router replicas sweeping at once is harmless: each removal is a
compare-and-set that looks at the heartbeat again right before writing.
"""

from __future__ import annotations

import functools
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import subjects
from openlines.bus import kv_entries
from openlines.state import OperatorState
from router.engine import Engine

log = logging.getLogger("router.presence")

REAPED = Counter("openlines_router_desk_pages_reaped_total", "Operator pages on desk replicas that stopped heartbeating")


class DeskReaper:
    def __init__(self, js: JetStreamContext, engine: Engine) -> None:
        self.js = js
        self.engine = engine
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue | None:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(subjects.KV_DESK_PRESENCE)
            except (NotFoundError, BadRequestError):
                return None  # no desk has run yet (the desk creates it)
        return self._kv

    async def alive(self, desk: str) -> bool:
        """Whether the desk replica renewed its heartbeat within the bucket's TTL."""
        kv = await self._bucket()
        if kv is None:
            return True  # nothing to judge by: leave its pages alone
        try:
            entry = await kv.get(desk)
        except NotFoundError:  # absent, expired or deleted (a graceful stop)
            return False
        return entry.value is not None

    async def _states(self) -> dict[str, OperatorState]:
        cache = self.engine.operators
        if cache is not None and cache.loaded.is_set():
            return cache.all()
        out: dict[str, OperatorState] = {}
        for key, (_rev, data) in (await kv_entries(self.js, subjects.KV_OPERATORS)).items():
            try:
                out[key] = msgspec.json.decode(data, type=OperatorState)
            except msgspec.DecodeError:
                continue
        return out

    async def sweep(self) -> int:
        """Remove dead desks from the operators said to have pages on them; returns how many pages."""
        held = sorted((op_id, desk) for op_id, st in (await self._states()).items() for desk in st.desks)
        if not held or await self._bucket() is None:
            return 0
        alive = {desk: await self.alive(desk) for desk in sorted({desk for _, desk in held})}
        reaped = 0
        for op_id, desk in held:
            if alive[desk]:
                continue
            if await self.engine.desk_gone(op_id, desk, still_there=functools.partial(self.alive, desk)):
                log.warning(
                    "desk replica stopped heartbeating: the operator's page on it counts as closed",
                    extra={"operator": op_id, "desk": desk},
                )
                REAPED.inc()
                reaped += 1
        return reaped
