"""Every line's waiting queue: one ``ol-waiting`` key per chat, ordered in memory.

Each waiting chat is its own KV entry (``<line>.<session>`` -> QueuedChat), so
putting a chat in or taking one out writes a few dozen bytes whatever the
queue's length, and no line has a ceiling on how many chats may wait. Every
router replica keeps the queues in memory, sorted, fed by a KV watch: the head
of a line is O(1), a chat's position O(log n).

The copy may be a moment behind another replica's writes. That is safe:

- a replica applies its own writes at once (with their revisions, so a late
  watch event never undoes them);
- whoever takes the head re-reads the session and claims it by compare-and-set,
  so a chat already taken elsewhere is only dropped from the queue;
- before saying "nobody waits" the copy catches up with the bucket
  (``sync``): a chat queued by another replica just before an operator became
  free is never left waiting for the next event.

A new chat that nobody waits before, with an operator free, never enters the
queue: it is offered at once (decision 026).

A chat leaves the queue by a purge whose marker expires after
``MARKER_TTL`` (per-message TTL), so the bucket holds only the chats that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from openlines import subjects
from openlines.envelopes import BAD_JSON
from openlines.state import QueuedChat, WaitingQueue, parse_waiting_key, queue_key, waiting_key
from router.core.queue import WaitingLine

log = logging.getLogger("router.waiting")

MARKER_TTL = 15 * 60  # seconds a "this chat left the queue" marker stays for watchers that lag behind
SYNC_TIMEOUT = 2.0  # longest wait for the copy to catch up before deciding on what it has

_KV_OP = "KV-Operation"


class Waiting:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._stream = f"KV_{subjects.KV_WAITING}"
        self._prefix = f"$KV.{subjects.KV_WAITING}."
        self._lines: dict[str, WaitingLine] = {}
        self._revisions: dict[str, int] = {}  # key -> newest revision applied (put or removal)
        self._seen = 0  # highest stream sequence the watch delivered
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (sequence, woken when the watch reaches it)
        self.loaded = asyncio.Event()
        # told after each write of ours: (line, the chat that left or None); see router.places
        self.on_change: Callable[[str, QueuedChat | None], Awaitable[None]] | None = None

    # ------------------------------------------------------------ reading

    def head(self, line_id: str) -> QueuedChat | None:
        line = self._lines.get(line_id)
        return line.head() if line is not None else None

    def position(self, line_id: str, session_id: str) -> int:
        line = self._lines.get(line_id)
        return line.position(session_id) if line is not None else 0

    def first(self, line_id: str, n: int) -> list[QueuedChat]:
        line = self._lines.get(line_id)
        return list(line.first(n)) if line is not None else []

    def count(self, line_id: str) -> int:
        line = self._lines.get(line_id)
        return len(line) if line is not None else 0

    def __contains__(self, item: tuple[str, str]) -> bool:
        line = self._lines.get(item[0])
        return line is not None and item[1] in line

    async def sync(self) -> None:
        """Wait until the copy has seen every write made to the bucket before this call (at most ``SYNC_TIMEOUT``).

        A bucket that does not answer in that time (its stream electing a leader: such a request is never
        answered, and nats-py would wait 5 s) is not waited for either: the decision is made on the copy, as
        when the copy lags (decision 035)."""
        try:
            info = await asyncio.wait_for(self.js.stream_info(self._stream), SYNC_TIMEOUT)
        except (TimeoutError, NatsError) as exc:
            log.info("waiting queues not checked against the bucket", extra={"error": repr(exc)})
            return
        target = info.state.last_seq or 0
        if self._seen >= target:
            return
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, reached))
        try:
            await asyncio.wait_for(reached, timeout=SYNC_TIMEOUT)
        except TimeoutError:
            log.warning("waiting queues lag behind the bucket", extra={"seen": self._seen, "last": target})
        finally:
            self._waiters = [(t, f) for t, f in self._waiters if f is not reached]

    # ------------------------------------------------------------ writing

    async def add(
        self, line_id: str, session_id: str, since: float, *, channel: str = "", account: str = "", chat_id: str = ""
    ) -> None:
        """Put a chat in its line's queue (again: it keeps its place, ``since`` being when it first waited)."""
        chat = QueuedChat(session_id=session_id, since=since, line_id=line_id, channel=channel, account=account, chat_id=chat_id)
        key = waiting_key(line_id, session_id)
        ack = await self.js.publish(self._prefix + key, msgspec.json.encode(chat), stream=self._stream)
        self._put(key, chat, ack.seq)
        if self.on_change is not None:
            await self.on_change(line_id, None)

    async def remove(self, line_id: str, session_id: str) -> None:
        """Take a chat out of its line's queue (nothing happens when it was not there)."""
        key = waiting_key(line_id, session_id)
        line = self._lines.get(line_id)
        left = line.get(session_id) if line is not None else None
        ack = await self.js.publish(
            self._prefix + key,
            b"",
            stream=self._stream,
            headers={_KV_OP: "PURGE", "Nats-Rollup": "sub"},
            msg_ttl=MARKER_TTL,
        )
        self._drop(key, line_id, session_id, ack.seq)
        if self.on_change is not None and left is not None:
            await self.on_change(line_id, left)

    # ------------------------------------------------------------ the watch

    async def run(self) -> None:
        info = await self.js.stream_info(self._stream)
        if not info.state.messages:
            self.loaded.set()
        # An ordered push consumer (what a KV watch is) read in its callback: every replica sees
        # two changes per routed chat, so no per-change queue hop or entry object.
        sub = await self.js.subscribe(
            self._prefix + ">",
            stream=self._stream,
            cb=self._on_change,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=300.0,
        )
        try:
            with contextlib.suppress(Exception):
                if not (await sub.consumer_info()).num_pending:
                    self.loaded.set()  # nothing (left) to deliver, e.g. every entry expired meanwhile
            await asyncio.Future()  # until cancelled: the service stops
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), timeout=5)

    async def _on_change(self, msg: Msg) -> None:
        meta = msg.metadata
        revision = meta.sequence.stream
        headers = msg.headers or {}
        deleted = headers.get(_KV_OP) in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
        self._apply(msg.subject[len(self._prefix) :], revision, None if deleted else msg.data)
        if not self.loaded.is_set() and not meta.num_pending:
            self.loaded.set()
            log.info("waiting queues loaded", extra={"chats": sum(len(q) for q in self._lines.values())})
        self._seen = max(self._seen, revision)
        if self._waiters:
            for target, reached in self._waiters:
                if target <= self._seen and not reached.done():
                    reached.set_result(None)

    def _apply(self, key: str, revision: int, value: bytes | None) -> None:
        """A change the watch delivered: ``value`` None = the chat left the queue."""
        line_id, session_id = parse_waiting_key(key)
        if not value:
            self._drop(key, line_id, session_id, revision, from_watch=True)
            return
        if self._revisions.get(key, 0) >= revision:
            return  # our own write coming back, or older than what the copy has
        try:
            chat = msgspec.json.decode(value, type=QueuedChat)
        except BAD_JSON as exc:
            log.error("ignoring an invalid waiting chat in KV", extra={"key": key, "error": str(exc)})
            return
        self._put(key, chat, revision)

    def _put(self, key: str, chat: QueuedChat, revision: int) -> None:
        if self._revisions.get(key, 0) >= revision:
            return  # the copy already has something newer for this chat
        self._revisions[key] = revision
        line_id = chat.line_id or parse_waiting_key(key)[0]
        self._lines.setdefault(line_id, WaitingLine()).add(chat)

    def _drop(self, key: str, line_id: str, session_id: str, revision: int, *, from_watch: bool = False) -> None:
        known = self._revisions.get(key, 0)
        if known > revision:
            return
        if known == revision:
            self._revisions.pop(key, None)  # the watch brought back our own removal: nothing newer can be undone now
            return
        line = self._lines.get(line_id)
        if line is not None:
            line.remove(session_id)
            if not len(line):
                del self._lines[line_id]
        # A removal of our own is remembered until the watch passes it, so an older put
        # arriving late is not re-applied; the watch itself delivers in order.
        if not from_watch and revision > self._seen:
            self._revisions[key] = revision
        else:
            self._revisions.pop(key, None)


async def move_old_queues(sessions: KeyValue, waiting: Waiting, line_ids: list[str]) -> int:
    """Move queues of the earlier layout (one ``queue.<line>`` value in ``ol-sessions``) to ``ol-waiting``."""
    moved = 0
    for line_id in line_ids:
        try:
            entry = await sessions.get(queue_key(line_id))
        except KeyNotFoundError:  # absent (the usual case) or already moved
            continue
        if not entry.value:
            continue
        started = time.monotonic()
        old = msgspec.json.decode(entry.value, type=WaitingQueue)
        for chat in old.chats:
            await waiting.add(line_id, chat.session_id, chat.since)
        await sessions.purge(queue_key(line_id))
        moved += len(old.chats)
        log.info(
            "moved a waiting queue to ol-waiting",
            extra={"line": line_id, "chats": len(old.chats), "seconds": round(time.monotonic() - started, 2)},
        )
    return moved
