"""The router's copy of every operator's state (``ol-operators``), kept current by a KV watch.

Routing decides on this copy instead of reading each operator of a line from
KV for every decision (20 operators = 20 reads per chat; 1,000 operators =
1,000). The copy may be a moment behind, which is safe: the capacity claim
still checks and writes the live value by compare-and-set, and whatever a
claim or a live read sees is put back here, so the next decision uses it.
When the copy says nobody can take a chat, the router looks at the live
values once more before leaving the chat waiting.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js.kv import KeyValue

from openlines.state import OperatorState

log = logging.getLogger("router.operators")


class OperatorsCache:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._states: dict[str, tuple[OperatorState, int]] = {}
        self.loaded = asyncio.Event()

    def get(self, op_id: str) -> OperatorState | None:
        found = self._states.get(op_id)
        return found[0] if found is not None else None

    def entry(self, op_id: str) -> tuple[OperatorState, int] | None:
        """The operator's state with its revision, once the copy is loaded (else None: read KV)."""
        return self._states.get(op_id) if self.loaded.is_set() else None

    def all(self) -> dict[str, OperatorState]:
        """Every operator's state as the copy has it now."""
        return {op_id: st for op_id, (st, _rev) in self._states.items()}

    def put(self, op_id: str, state: OperatorState | None, revision: int | None) -> None:
        """Keep what a live read or a write saw, unless the copy already has something newer."""
        if revision is None:
            return
        current = self._states.get(op_id)
        if current is not None and current[1] >= revision:
            return
        if state is None:
            self._states.pop(op_id, None)
        else:
            self._states[op_id] = (state, revision)

    async def run(self) -> None:
        # Loaded = every entry written before the watch began was seen (counted
        # by revision: the watcher's own end-of-initial-values marker can come early).
        target = (await self.kv.status()).stream_info.state.last_seq or 0
        if target == 0:
            self.loaded.set()
        watcher = await self.kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                self._apply(entry)
                if not self.loaded.is_set() and entry.revision is not None and entry.revision >= target:
                    self.loaded.set()
                    log.info("operator states loaded", extra={"operators": len(self._states)})
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, entry: KeyValue.Entry) -> None:
        revision = entry.revision or 0
        current = self._states.get(entry.key)
        if current is not None and current[1] >= revision:
            return
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._states.pop(entry.key, None)
            return
        try:
            self._states[entry.key] = (msgspec.json.decode(entry.value, type=OperatorState), revision)
        except msgspec.ValidationError as exc:
            log.error("ignoring an invalid operator state in KV", extra={"operator": entry.key, "error": str(exc)})
