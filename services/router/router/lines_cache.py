"""The router's view of the line configs: loaded from the ``ol-lines`` bucket
and kept current by a KV watch, so an apply takes effect without a restart."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js.kv import KeyValue

from openlines.apply import LINE_PREFIX
from openlines.lines import LineConfig, binding_index

log = logging.getLogger("router.lines")


class LinesCache:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.lines: dict[str, LineConfig] = {}
        self.by_binding: dict[tuple[str, str], LineConfig] = {}
        self.loaded = asyncio.Event()
        self.version = 0
        self.changed: asyncio.Queue[str] = asyncio.Queue()  # ids of lines changed after the initial load

    def line_for(self, channel: str, account: str) -> LineConfig | None:
        return self.by_binding.get((channel, account))

    def lines_of(self, operator_id: str) -> list[LineConfig]:
        return [line for line in self.lines.values() if operator_id in line.queue.operators]

    def _reindex(self) -> None:
        self.by_binding = binding_index(list(self.lines.values()))
        self.version += 1

    async def run(self) -> None:
        # "Loaded" means: every entry written before the watch began has been
        # seen. The watcher's own end-of-initial-values marker can come before
        # values already on their way, and a router that believes a line does
        # not exist dead-letters its messages - so count by revision instead.
        target = (await self.kv.status()).stream_info.state.last_seq or 0
        if target == 0:
            self._mark_loaded()
        watcher = await self.kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if not self.loaded.is_set() and entry.revision >= target:
                    self._apply(entry)
                    self._mark_loaded()
                    continue
                self._apply(entry)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _mark_loaded(self) -> None:
        self.loaded.set()
        log.info("lines loaded", extra={"lines": sorted(self.lines)})

    def _apply(self, entry: KeyValue.Entry) -> None:
        if not entry.key.startswith(LINE_PREFIX):
            return
        line_id = entry.key.removeprefix(LINE_PREFIX)
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.lines.pop(line_id, None)
        else:
            try:
                self.lines[line_id] = msgspec.json.decode(entry.value, type=LineConfig)
            except msgspec.ValidationError as exc:
                log.error("ignoring invalid line config in KV", extra={"line": line_id, "error": str(exc)})
                return
        self._reindex()
        if self.loaded.is_set():
            log.info("line config reloaded", extra={"line": line_id})
            self.changed.put_nowait(line_id)
