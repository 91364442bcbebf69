"""Waiting visitors see their place in the queue, live.

After each change this replica makes to a line's queue, the chats at the
front of it (the first :data:`TOLD_EXACTLY`) that write from a channel which
shows the queue live (the widget) are told their new place on core NATS,
``ol.queue.<channel>.<account>.<chat key>``; a chat that leaves the queue is
told place 0. Only places that changed since this replica last told them are
sent, so an offer that finds an operator at once sends one message, and a
line with many waiting sends one per visitor whose place moved.

A place is worth nothing a moment later, so nothing is stored or retried: a
lost one is corrected by the next change, and the widget asks for nothing.
Only lines that tell clients their place (``queue.tell_position``) do so.
A replica's copy of the queue may be a moment behind another's writes; the
places it tells are then a moment old, and the next change corrects them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from openlines import subjects
from openlines.envelopes import QueuePlace
from openlines.state import QueuedChat
from router.waiting import Waiting

log = logging.getLogger("router.places")

LIVE_CHANNELS = frozenset({"webchat"})  # channels whose client sees the queue move (chat apps get the auto-reply only)
TOLD_EXACTLY = 100  # places told as they change; a visitor further back is told on reaching the front hundred
_REMEMBERED = 100_000  # places remembered per replica before the memory starts again


class QueuePlaces:
    def __init__(self, nc: NATS, waiting: Waiting, tells: Callable[[str], bool]) -> None:
        self.nc = nc
        self.waiting = waiting
        self.tells = tells  # line id -> whether that line tells clients their place
        self._told: dict[str, int] = {}  # session -> place last told by this replica

    async def changed(self, line_id: str, left: QueuedChat | None) -> None:
        """Tell the visitors whose place moved; never fails the routing that called it."""
        try:
            if not self.tells(line_id):
                return
            if left is not None and left.channel in LIVE_CHANNELS:
                self._told.pop(left.session_id, None)
                await self._tell(left, 0)
            if len(self._told) > _REMEMBERED:
                self._told.clear()
            for place, chat in enumerate(self.waiting.first(line_id, TOLD_EXACTLY), start=1):
                if chat.channel in LIVE_CHANNELS and chat.chat_id and self._told.get(chat.session_id) != place:
                    self._told[chat.session_id] = place
                    await self._tell(chat, place)
        except Exception as exc:  # a place not told only means the widget shows it at the next change
            log.info("queue places not told", extra={"line": line_id, "error": repr(exc)[:200]})

    async def _tell(self, chat: QueuedChat, place: int) -> None:
        if not (chat.channel and chat.account and chat.chat_id):
            return
        key = subjects.chat_key(chat.channel, chat.account, chat.chat_id)
        body = msgspec.json.encode(QueuePlace(chat_id=chat.chat_id, place=place))
        await self.nc.publish(subjects.queue_place(chat.channel, chat.account, key), body)
