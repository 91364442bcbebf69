"""The widget accounts that some line is bound to, kept current from the ``ol-lines`` bucket.

A widget account feeds a line when a line declares
``channels = [{ channel = "webchat", account = "<account>" }]``. The gateway
accepts sockets only for those accounts: a message for an account no line
uses would be stored and then dead-lettered by the router, i.e. anyone could
fill the inbound stream through a name nobody answers. The bucket is watched,
so ``openlines lines apply`` (or an admin save) takes effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import subjects
from openlines.apply import LINE_PREFIX
from openlines.consume import pause
from openlines.lines import LineConfig
from openlines.pace import backoff

log = logging.getLogger("gateway_webchat.lines")


async def keep_watching(watch: Callable[[asyncio.Event], Awaitable[None]], stopping: asyncio.Event, what: str) -> None:
    """Run ``watch`` until ``stopping`` is set, again after each failure (a bucket not there yet, NATS away)."""
    attempt = 0
    while not stopping.is_set():
        try:
            await watch(stopping)
            return
        except Exception as exc:  # nats raises several unrelated types
            attempt += 1
            log.warning(f"{what} not readable, retrying", extra={"attempt": attempt, "error": repr(exc)})
            await pause(stopping, backoff(attempt, 0.2, 5.0))


class BoundAccounts:
    def __init__(self, js: JetStreamContext, channel: str) -> None:
        self.js = js
        self.channel = channel
        self._by_line: dict[str, frozenset[str]] = {}
        self._lines: dict[str, LineConfig] = {}
        self.accounts: frozenset[str] = frozenset()
        self.loaded = asyncio.Event()

    def __contains__(self, account: str) -> bool:
        return account in self.accounts

    def lines_of(self, account: str) -> list[LineConfig]:
        """The lines this widget account feeds (their queues and hours say who may answer it)."""
        return [self._lines[line_id] for line_id, accounts in self._by_line.items() if account in accounts]

    def ready(self) -> str | None:
        return None if self.loaded.is_set() else "line configs not loaded yet"

    async def run(self, stopping: asyncio.Event) -> None:
        """Watch the bucket, retrying until it exists and NATS answers; returns when ``stopping`` is set."""
        await keep_watching(self._watch, stopping, "line configs")

    async def _watch(self, stopping: asyncio.Event) -> None:
        kv: KeyValue = await self.js.key_value(subjects.KV_LINES)
        # Loaded = every entry written before the watch began was seen (counted
        # by revision: the watcher's own end marker can come before them).
        info = await self.js.stream_info(f"KV_{subjects.KV_LINES}")
        target = info.state.last_seq or 0
        if target == 0:
            self._mark_loaded()
        watcher = await kv.watchall()
        try:
            while not stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    continue
                if entry is None:
                    continue
                self._apply(entry)
                if not self.loaded.is_set() and entry.revision >= target:
                    self._mark_loaded()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _mark_loaded(self) -> None:
        self.loaded.set()
        log.info("widget accounts loaded", extra={"accounts": sorted(self.accounts)})

    def _apply(self, entry: KeyValue.Entry) -> None:
        if not entry.key.startswith(LINE_PREFIX):
            return
        line_id = entry.key.removeprefix(LINE_PREFIX)
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._by_line.pop(line_id, None)
            self._lines.pop(line_id, None)
        else:
            try:
                line = msgspec.json.decode(entry.value, type=LineConfig)
            except msgspec.ValidationError as exc:
                log.error("ignoring invalid line config in KV", extra={"line": line_id, "error": str(exc)})
                return
            self._by_line[line_id] = frozenset(ch.account for ch in line.channels if ch.channel == self.channel)
            self._lines[line_id] = line
        before = self.accounts
        self.accounts = frozenset().union(*self._by_line.values())
        if self.loaded.is_set() and self.accounts != before:
            log.info("widget accounts changed", extra={"accounts": sorted(self.accounts)})
