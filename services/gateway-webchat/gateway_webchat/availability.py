"""Whether someone can answer a widget now: an operator of its line online, within business hours.

The widget must not say "Online" while every operator is away (a visitor then waits for an
answer that is not coming). The operators' statuses are watched from the router's
``ol-operators`` bucket and the lines' queues and hours come from ``ol-lines`` (via
:class:`~gateway_webchat.lines.BoundAccounts`); a change is pushed to the open sockets of the
accounts it concerns as ``{"type": "availability", "available": ...}`` (plus ``closed`` and the
line's ``closed_text`` when it is outside business hours everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from gateway_webchat.lines import BoundAccounts, keep_watching
from openlines import subjects
from openlines.hours import is_open
from openlines.state import OperatorState

log = logging.getLogger("gateway_webchat.availability")
RECHECK_SECONDS = 30.0  # business hours open and close with no event: looked at this often


class State(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the widget says: Online; Away (nobody online); or Closed, outside the line's hours, with its text."""

    available: bool
    closed: bool = False
    closed_text: str = ""  # the line's outside_hours auto-reply, shown in the widget while closed

    def fields(self) -> dict[str, object]:
        return msgspec.structs.asdict(self) if self.closed else {"available": self.available}


class Availability:
    def __init__(self, js: JetStreamContext, bound: BoundAccounts, notify: Callable[[str, State], None]) -> None:
        self.js = js
        self.bound = bound
        self.notify = notify  # (account, state): tell that account's open sockets
        self.online: set[str] = set()
        self._told: dict[str, State] = {}

    def available(self, account: str, now: datetime | None = None) -> bool:
        """An operator of a line this account feeds is online, and that line is open now."""
        return self.state(account, now).available

    def state(self, account: str, now: datetime | None = None) -> State:
        """Whether someone can answer now; if not, whether it is because every line of the account is closed, and its text."""
        now = now or datetime.now(UTC)
        lines = self.bound.lines_of(account)
        closed: list[str] = []
        for line in lines:
            if line.hours.enabled and not is_open(line.hours, now):
                closed.append(line.auto_replies.outside_hours)
                continue
            if self.online.intersection(line.queue.operators):
                return State(available=True)
        if lines and len(closed) == len(lines):  # outside business hours everywhere: say so, with the line's own words
            return State(available=False, closed=True, closed_text=next((t for t in closed if t), ""))
        return State(available=False)

    def recheck(self) -> None:
        """Tell the sockets of every account whose availability changed since last told."""
        for account in self.bound.accounts:
            now = self.state(account)
            if self._told.get(account) != now:
                self._told[account] = now
                self.notify(account, now)

    async def run(self, stopping: asyncio.Event) -> None:
        await keep_watching(self._watch, stopping, "operator statuses")

    async def _watch(self, stopping: asyncio.Event) -> None:
        kv: KeyValue = await self.js.key_value(subjects.KV_OPERATORS)
        watcher = await kv.watchall()
        last_check = 0.0
        try:
            while not stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    entry = None
                if entry is not None:
                    self._apply(entry)
                loop_now = asyncio.get_running_loop().time()
                if entry is not None or loop_now - last_check >= RECHECK_SECONDS:
                    last_check = loop_now
                    self.recheck()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.online.discard(entry.key)
            return
        try:
            state = msgspec.json.decode(entry.value, type=OperatorState)
        except msgspec.ValidationError:
            return  # not an operator's state
        if state.status == "online":
            self.online.add(entry.key)
        else:
            self.online.discard(entry.key)
