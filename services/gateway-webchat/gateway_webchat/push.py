"""Operator replies to visitors: the per-replica outbound consumer, the socket
registry, and the replay of missed replies on (re)connect.

Every replica sees every webchat outbound message (one ordered push consumer
per replica, deliver policy NEW) and pushes it to the sockets of that visitor
it holds. A socket that connects with ``since=N`` first gets the visitor's
replies with stream seq > N read from ``OL_OUT``; live pushes that arrive
meanwhile are held and released afterwards, skipping what the replay already
sent, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gateway_webchat import metrics
from gateway_webchat.files import Links
from gateway_webchat.normalise import CHANNEL
from openlines import bus, subjects
from openlines.consume import pause
from openlines.envelopes import Outbound, decoder, is_rating_request
from openlines.follow import Follow
from openlines.pace import backoff

log = logging.getLogger("gateway_webchat.push")

_outbound = decoder(Outbound)
_encode = msgspec.json.Encoder().encode


def frame(**fields: Any) -> str:
    return _encode(fields).decode()


def reply_frame(seq: int, out: Outbound, links: Links) -> str:
    """The frame of one reply; its files as links this gateway signed for the visitor (never a desk link)."""
    fields: dict[str, Any] = {
        "type": "reply",
        "seq": seq,
        "id": out.id,
        "text": out.text,
        "operator": out.operator_name,
        "auto": out.auto,
        "at": out.created_at,
    }
    if is_rating_request(out):
        fields["rating"] = True  # the widget shows 1-5 as buttons under it
    if out.attachments:
        now = time.time()
        fields["attachments"] = [
            {"kind": a.kind, "name": a.name, "mime": a.mime, "size": a.size, "url": links.path(out.account, out.chat_id, a, now)}
            for a in out.attachments
        ]
    return _encode(fields).decode()


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class Socket:
    """One open visitor WebSocket.

    Frames go out one at a time, in the order they were sent, and a slow
    browser never blocks the outbound consumer: :meth:`send` only appends to
    the socket's pending frames and, when nothing is being written, starts a
    short-lived writer task that exits once they are out. The socket's own
    reader writes its answers inline (:meth:`write`) when nothing is pending.
    An idle socket therefore holds no task, queue or event: only these slots.
    """

    __slots__ = (
        "_busy",
        "_closing",
        "_drained",
        "_held",
        "_max_queue",
        "_pending",
        "_stuck_close",
        "_writer",
        "account",
        "browser",
        "chat",
        "language",
        "last_seq",
        "replaying",
        "typing_at",
        "visitor",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        account: str,
        visitor: str,
        *,
        since: int,
        max_queue: int,
        browser: str = "",
        language: str = "",
    ) -> None:
        self.ws = ws
        self.account = account
        self.visitor = visitor
        self.browser = browser  # from the socket's User-Agent and Accept-Language: told to the operator
        self.language = language
        self.typing_at = 0.0  # when this visitor's "typing" was last passed on (monotonic)
        self.chat = subjects.chat_key(CHANNEL, account, visitor)
        self.last_seq = since  # highest reply seq sent (or known to the browser)
        self.replaying = True
        self._held: list[tuple[int, str]] | None = None  # live replies that arrived during the replay
        self._pending: collections.deque[str | Close] | None = None  # frames not yet written, only while there are any
        self._busy = False  # a write is in progress (inline or by the writer task)
        self._writer: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # only while someone waits in drained()
        self._max_queue = max_queue
        self._closing = False
        self._stuck_close: asyncio.Task[Any] | None = None

    # -- writes -----------------------------------------------------------

    def send(self, data: str) -> None:
        """Queue ``data`` behind what is pending; never waits."""
        if self._closing:
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = collections.deque()
        elif len(pending) >= self._max_queue:
            self._too_slow()
            return
        pending.append(data)
        if not self._busy:
            self._busy = True
            self._writer = asyncio.create_task(self._drain(), name=f"ws-writer-{self.visitor}")

    async def write(self, data: str) -> None:
        """Send ``data`` from the socket's own reader: inline when nothing is pending, else behind it."""
        if self._busy or self._closing:
            self.send(data)
            return
        self._pending = collections.deque((data,))
        self._busy = True
        await self._drain()

    def close(self, code: int, reason: str) -> None:
        """Send what is pending, then close with ``code``."""
        if self._closing:
            return
        self._closing = True
        if self._pending is None:
            self._pending = collections.deque()
        self._pending.append(Close(code, reason))
        if not self._busy:
            self._busy = True
            self._writer = asyncio.create_task(self._drain(), name=f"ws-close-{self.visitor}")

    async def drained(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every pending frame is written; then stop trying."""
        if self._busy:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        if self._writer is not None:
            self._writer.cancel()

    def _too_slow(self) -> None:
        log.warning("visitor socket too slow; closing it", extra={"channel": CHANNEL, "account": self.account})
        self._closing = True
        self._pending = None
        if self._writer is not None:
            self._writer.cancel()
        self._stuck_close = asyncio.create_task(self.ws.close(code=1013, message=b"too slow, reconnect"))

    async def _drain(self) -> None:
        try:
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, Close):
                    self._pending = None
                    await self.ws.close(code=item.code, message=item.reason.encode()[:120])
                    return
                await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            self._pending = None  # the browser is gone; the reader side notices and cleans up
        finally:
            self._busy = False
            self._writer = None
            if self._pending is not None and not self._pending:
                self._pending = None
            if self._drained is not None:
                if not self._drained.done():
                    self._drained.set_result(None)
                self._drained = None

    # -- replies ----------------------------------------------------------

    def push_reply(self, seq: int, data: str) -> bool:
        if self.replaying:
            if self._held is None:
                self._held = []
            self._held.append((seq, data))
            return False
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        self.send(data)
        metrics.REPLIES_PUSHED.inc()
        return True

    def finish_replay(self, replayed: list[tuple[int, str]]) -> None:
        """Send the replayed replies, then the held live ones not already sent; go live."""
        self.replaying = False
        held, self._held = self._held or [], None
        for seq, data in sorted(replayed + held, key=lambda item: item[0]):
            self.push_reply(seq, data)


REMEMBERED_REPLIES = 50_000  # replies whose session a replica keeps for read marks (~8 MB)


class Hub:
    """The sockets of this replica, by visitor chat key."""

    def __init__(self) -> None:
        self._by_chat: dict[str, list[Socket]] = {}
        self.count = 0
        # (chat, reply id) -> its session, for the replies this replica showed: a visitor's "read" names
        # reply ids, and only those of its own chat can become a read mark. Oldest forgotten first.
        self._replies: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        # chat -> its place in the queue as last told, shown again to a socket that (re)connects
        self._places: collections.OrderedDict[str, int] = collections.OrderedDict()

    def add(self, sock: Socket) -> None:
        group = self._by_chat.get(sock.chat)
        if group is None:
            self._by_chat[sock.chat] = [sock]
        elif sock not in group:
            group.append(sock)
        else:
            return
        self.count += 1
        metrics.OPEN_SOCKETS.inc()

    def remove(self, sock: Socket) -> None:
        group = self._by_chat.get(sock.chat)
        if group is None or sock not in group:
            return
        group.remove(sock)
        if not group:
            del self._by_chat[sock.chat]
        self.count -= 1
        metrics.OPEN_SOCKETS.dec()

    def sockets(self) -> list[Socket]:
        return [s for group in self._by_chat.values() for s in group]

    def push(self, chat: str, seq: int, data: str) -> int:
        return sum(sock.push_reply(seq, data) for sock in list(self._by_chat.get(chat, ())))

    def remember_reply(self, chat: str, out_id: str, session_id: str) -> None:
        if not session_id:
            return
        self._replies[(chat, out_id)] = session_id
        self._replies.move_to_end((chat, out_id))
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    def reply_session(self, chat: str, out_id: str) -> str:
        """The session of a reply shown to this chat, "" when it is none of its replies (or long forgotten)."""
        return self._replies.get((chat, out_id), "")

    def tell_place(self, chat: str, place: int) -> int:
        """A waiting visitor's place in the queue (0: no longer waiting), kept for sockets that connect later."""
        self._places.pop(chat, None)
        if place > 0:
            self._places[chat] = place
            while len(self._places) > REMEMBERED_REPLIES:
                self._places.popitem(last=False)
        return self.tell(chat, frame(type="queue", place=place))

    def place(self, chat: str) -> int:
        return self._places.get(chat, 0)

    def tell(self, chat: str, data: str) -> int:
        """A frame for every socket of one visitor chat (not a reply: no seq); how many got it."""
        group = list(self._by_chat.get(chat, ()))
        for sock in group:
            sock.send(data)
        return len(group)


async def replay(js: JetStreamContext, sock: Socket, links: Links, hub: Hub | None = None) -> int:
    """Send ``sock`` the visitor's replies after ``sock.last_seq``, then go live."""
    subject = subjects.outbound(CHANNEL, sock.account, sock.chat)
    replayed: list[tuple[int, str]] = []
    for seq, data in await bus.read_subject(js, subjects.STREAM_OUT, subject, start_seq=sock.last_seq + 1):
        try:
            out = _outbound.decode(data)
            replayed.append((seq, reply_frame(seq, out, links)))
            if hub is not None:
                hub.remember_reply(sock.chat, out.id, out.session_id)
        except msgspec.DecodeError:
            log.warning("undecodable outbound message skipped", extra={"channel": CHANNEL, "seq": seq})
    sock.finish_replay(replayed)
    return len(replayed)


class OutboundConsumer:
    """One live follower per replica on ``ol.out.webchat.>`` (:class:`openlines.follow.Follow`).

    It starts right after the stream's end at start-up rather than with deliver
    policy NEW (a message published between reading the end and making the
    consumer would otherwise be missed by live pushes), and after a NATS restart
    or a lost message goes on after the last reply it saw: never from the start
    of 30 days of replies. Each consumer it makes is named (``webchat-live-<random>``),
    so the create request's subject carries the filter: the webchat gateway's
    NATS identity may read its own channel's replies and no other's
    (deploy/nats/auth.conf).
    """

    def __init__(self, js: JetStreamContext, hub: Hub, links: Links) -> None:
        self.js = js
        self.hub = hub
        self.links = links
        self.follow = Follow(
            js, subjects.STREAM_OUT, subjects.outbound_channel(CHANNEL), self._on_msg, name_prefix="webchat-live"
        )
        self._started = False

    async def run(self, stopping: asyncio.Event) -> None:
        """Find the stream's end (retrying until the stream exists and NATS answers), then follow until stopping."""
        attempt = 0
        while not stopping.is_set() and not self._started:
            try:
                await self.follow.start_at_end()
                self._started = True
            except Exception as exc:  # nats raises several unrelated types
                attempt += 1
                log.warning("outbound consumer not started, retrying", extra={"attempt": attempt, "error": repr(exc)})
                await pause(stopping, backoff(attempt, 0.2, 5.0))
        log.info("outbound consumer running", extra={"channel": CHANNEL})
        await self.follow.run(stopping)

    def ready(self) -> str | None:
        return "outbound consumer not running" if not self._started else self.follow.ready()

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            _channel, account, chat = subjects.parse_outbound(msg.subject)
            out = _outbound.decode(msg.data)
        except (subjects.BadToken, msgspec.DecodeError) as exc:
            log.warning("bad outbound message skipped", extra={"channel": CHANNEL, "seq": seq, "error": str(exc)})
            return
        self.hub.remember_reply(chat, out.id, out.session_id)
        pushed = self.hub.push(chat, seq, reply_frame(seq, out, self.links))
        log.debug("reply pushed", extra={"channel": CHANNEL, "account": account, "msg_id": out.id, "sockets": pushed})

    async def stop(self) -> None:
        await self.follow.close()
