"""An operator typing in the desk, shown in the client's messenger ("typing...").

The desk says so on ``ol.typing.out.<channel>.<account>.<chat key>`` (core NATS)
at most every 2 s per chat. A gateway relays it with its platform's call
(Telegram ``sendChatAction``, VK ``messages.setActivity``). Fire and forget: a
lost or refused one only means no "typing..." this time, so nothing is retried
and no delivery ever waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from openlines import bus, subjects
from openlines.envelopes import Typing

TIMEOUT = 5.0  # seconds one platform call may take
MAX_AT_ONCE = 64  # calls in flight; beyond that new ones are dropped (they are only a courtesy)

_decode = msgspec.json.Decoder(Typing)
log = logging.getLogger("openlines.typing_relay")


class TypingRelay:
    """Calls ``show(account, chat_id)`` for each operator typing to a chat of ``channel`` this gateway serves."""

    def __init__(self, nc: NATS, channel: str, show: Callable[[str, str], Awaitable[object] | None]) -> None:
        self.nc = nc
        self.channel = channel
        self.show = show  # returns None when the account is not ours
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.nc.subscribe(subjects.typing_out_channel(self.channel), cb=self._on_typing)
        # The server knows the subscription before the gateway says it is up: "typing" is never stored,
        # so one sent meanwhile would be lost (seen in a loaded test run).
        await bus.flush_all(self.nc)

    async def _on_typing(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 6 or len(self._tasks) >= MAX_AT_ONCE:
            log.debug("operator typing dropped", extra={"channel": self.channel, "in_flight": len(self._tasks)})
            return
        account, chat = parts[4], parts[5]
        try:
            typing = _decode.decode(msg.data)
        except msgspec.DecodeError:
            return
        # The subject names the chat by its key only: the chat id must be the one that key was made from.
        if not typing.chat_id or subjects.chat_key(self.channel, account, typing.chat_id) != chat:
            return
        call = self.show(account, typing.chat_id)
        if call is None:
            return
        task = asyncio.get_running_loop().create_task(self._run(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: Awaitable[object]) -> None:
        try:
            await asyncio.wait_for(call, timeout=TIMEOUT)
        except Exception as exc:  # refused or slow: only no "typing..." this time
            log.debug("operator typing not shown", extra={"channel": self.channel, "error": repr(exc)[:200]})

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
