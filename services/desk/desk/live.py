"""Live push to operators' WebSockets.

The router publishes session events on ``ol.evt.>`` and transcript entries on
``ol.hist.>``; every desk replica listens to all of them (plain core NATS
subscriptions) and forwards what concerns the operators connected to *it*.
A missed push is harmless: a page re-reads the snapshot from KV whenever it
reconnects, and KV, not this hub, is the truth.

Which operators have a page open here is reported to the router and kept
alive by a heartbeat (``desk.presence``): the router counts an operator's pages
closed when they close, or when this replica dies without a word.

The hub also closes pages whose sign-in ended elsewhere: a sign-out on any
replica (``ol.desk.signed_out``), and a change of the account's password,
roles or permissions or its removal, seen through a watch of ``ol-accounts``
(whoever wrote it: the admin pages, the API, ``openlines lines apply``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import WSCloseCode, web
from nats import nuid
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from desk.presence import Heartbeat, Reporter
from desk.reads import Reader, holders_of, sla_clock
from openlines import bus, subjects
from openlines.bus import kv_get
from openlines.envelopes import DeliveryMark, HistoryEntry, Seen, SessionEvent, Typing
from openlines.roles import is_supervisor
from openlines.state import ClientRecord, OperatorAccount, Session, client_key

log = logging.getLogger("desk.live")

HOLDER_TTL = 2.0  # seconds a session -> operator lookup is trusted for transcript pushes
TYPING_EVERY = 2.0  # seconds: an operator's typing is passed to the client at most this often per chat
QUEUE_LIMIT = 1000  # frames waiting for one slow socket before we drop it (it reconnects and re-snapshots)
CLOSE_SECONDS = 2.0  # a page given this long to answer our close when the desk stops; then it is dropped

SOCKETS = Gauge("openlines_desk_websockets", "Open operator WebSockets on this replica")
PUSHED = Counter("openlines_desk_frames_pushed_total", "Frames pushed to operator WebSockets", ["type"])
HELD = Counter("openlines_desk_held_messages_total", "Client messages beyond the flood limit, not pushed to operators")

_event_decoder = msgspec.json.Decoder(SessionEvent)
_history_decoder = msgspec.json.Decoder(HistoryEntry)
_mark_decoder = msgspec.json.Decoder(DeliveryMark)
_account_decoder = msgspec.json.Decoder(OperatorAccount)

Stamp = Callable[[OperatorAccount], str]


class Connection:
    """One operator WebSocket: frames are queued and written by one task, in order."""

    def __init__(self, ws: web.WebSocketResponse, operator_id: str, nonce: str = "", stamp: str = "") -> None:
        self.ws = ws
        self.operator_id = operator_id
        self.nonce = nonce  # the sign-in this page belongs to: a sign-out closes it
        self.stamp = stamp  # the account's credential stamp at that sign-in: a change of it closes the page
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self.shown: set[str] = set()  # sessions this page lists
        self.typed: dict[str, float] = {}  # session -> when this operator's typing was last passed on
        self.seen: dict[str, str] = {}  # session -> the client's newest message this operator was last said to have seen
        self.overflowed = False

    def push(self, frame: dict[str, Any]) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed = True
            log.warning("websocket too slow; closing it so it re-reads the snapshot", extra={"operator": self.operator_id})
            asyncio.get_running_loop().create_task(self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow"))
            return
        kind = frame.get("type")
        if kind == "chat":
            self.shown.add(str(frame["chat"]["id"]))
        elif kind == "closed":
            self.shown.discard(str(frame["session_id"]))

    async def write_forever(self) -> None:
        while True:
            frame = await self.queue.get()
            if self.ws.closed:
                return
            await self.ws.send_json(frame)
            PUSHED.labels(str(frame.get("type"))).inc()


class Hub:
    def __init__(self, nc: NATS, reader: Reader, stamp: Stamp, *, heartbeat_seconds: float = 5.0, replicas: int = 1) -> None:
        self.nc = nc
        self.reader = reader
        self.stamp = stamp  # the credential stamp of an account as it is now (desk.auth.Signer.stamp)
        self.watching = asyncio.Event()  # the account watch has started
        self.conns: dict[str, set[Connection]] = {}
        self._holders: dict[str, tuple[frozenset[str], float]] = {}
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.desk_id = nuid.NUID().next().decode()  # this replica, for the router's presence tracking
        self.reporter = Reporter(nc, self.desk_id)
        self.heartbeat = Heartbeat(reader.js, self.desk_id, heartbeat_seconds, replicas, lambda: sorted(self.conns))

    @property
    def subscribed(self) -> bool:
        return len(self._subs) == 5 and self.watching.is_set()

    async def start(self) -> None:
        self._subs.append(await self.nc.subscribe(subjects.events_all(), cb=self._on_event))
        self._subs.append(await self.nc.subscribe(subjects.history_all(), cb=self._on_history))
        self._subs.append(await self.nc.subscribe(subjects.DESK_SIGNED_OUT, cb=self._on_signed_out))
        self._subs.append(await self.nc.subscribe(subjects.marks_all(), cb=self._on_mark))
        self._subs.append(await self.nc.subscribe(subjects.typing_in_all(), cb=self._on_typing))
        await bus.flush_all(self.nc)  # the server has every subscription before the desk says it is up
        await self.heartbeat.open()  # before any page: the router never sees a page on a replica with no heartbeat
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.reporter.run(), name="desk-presence-reports"))
        self._tasks.append(loop.create_task(self.heartbeat.run(self._report_all), name="desk-heartbeat"))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        # No waiting for the reports of the pages closed below (a router may be stopping too): the key's
        # removal tells the router that every page here is gone, at its next look.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # Pages reconnect (to another replica, or to us after the restart). All at once, each given
        # CLOSE_SECONDS: a page that stopped reading would otherwise hold the close (and the stop) for good.
        await asyncio.gather(*(self._close(c) for group in self.conns.values() for c in group))
        await self.heartbeat.remove()

    @staticmethod
    async def _close(conn: Connection) -> None:
        with contextlib.suppress(Exception):  # a timeout included: aiohttp then drops the connection
            await asyncio.wait_for(conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"desk restarting"), CLOSE_SECONDS)

    # -- sockets ----------------------------------------------------------

    def add(self, conn: Connection) -> None:
        first = conn.operator_id not in self.conns
        self.conns.setdefault(conn.operator_id, set()).add(conn)
        SOCKETS.inc()
        if first:
            self.reporter.report(conn.operator_id, connected=True)

    def remove(self, conn: Connection) -> None:
        group = self.conns.get(conn.operator_id)
        if group is None or conn not in group:
            return
        group.discard(conn)
        SOCKETS.dec()
        if not group:
            del self.conns[conn.operator_id]
            # The router starts the line's grace period; if no page comes back
            # in time, the operator goes offline and their chats move on.
            log.info("last desk page of operator closed", extra={"operator": conn.operator_id})
            self.reporter.report(conn.operator_id, connected=False)

    def _report_all(self) -> None:
        """Our heartbeat had run out, so the router counted our pages closed: report the open ones again."""
        for operator_id in list(self.conns):
            self.reporter.report(operator_id, connected=True)

    def _send(self, operator_id: str, frame: dict[str, Any]) -> None:
        for conn in self.conns.get(operator_id, ()):
            conn.push(frame)

    # -- NATS -------------------------------------------------------------

    async def watch_accounts(self) -> None:
        """Close the pages of an account whose password, roles or permissions changed, or that was removed.

        Runs for the life of the desk. A watch that ends or fails (NATS gone a while) is started again;
        the pages open meanwhile are then checked against the accounts as they are, so a change made
        while no watch ran still closes them. (Their cookies are refused on every request meanwhile.)
        """
        while True:
            try:
                await self._watch_accounts_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("account watch failed; starting it again", extra={"error": repr(exc)})
            self.watching.clear()
            await asyncio.sleep(1.0)

    async def _watch_accounts_once(self) -> None:
        watcher = await self.reader.b.accounts.watchall()
        self.watching.set()
        try:
            for operator_id in list(self.conns):
                await self._account_changed(operator_id, await self.reader.account(operator_id))
            async for entry in watcher:
                if entry is None or entry.key not in self.conns:
                    continue
                account = None
                if entry.operation not in ("DEL", "PURGE") and entry.value:
                    with contextlib.suppress(msgspec.DecodeError):
                        account = _account_decoder.decode(entry.value)
                await self._account_changed(entry.key, account)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _account_changed(self, operator_id: str, account: OperatorAccount | None) -> None:
        stamp = self.stamp(account) if account is not None else None
        stale = [c for c in self.conns.get(operator_id, ()) if c.stamp != stamp]
        if stale:
            reason = "removed" if account is None else "password, roles or permissions changed"
            log.info(
                "closing live pages of a changed account", extra={"operator": operator_id, "reason": reason, "pages": len(stale)}
            )
        for conn in stale:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"credentials changed")

    async def _on_signed_out(self, msg: Msg) -> None:
        """A sign-out on any replica closes that login's live pages here (the cookie is already refused)."""
        nonce = msg.data.decode(errors="replace")
        for conn in [c for group in self.conns.values() for c in group if c.nonce and c.nonce == nonce]:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"signed out")

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = _event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable event", extra={"subject": msg.subject})
            return
        try:
            if event.kind == "operator_status" and event.operator_id:
                if event.operator_id in self.conns:
                    state = await self.reader.operator(event.operator_id)
                    self._send(event.operator_id, {"type": "status", "status": state.status})
            elif event.session_id:  # any session event: re-read the session from KV
                await self._session_changed(event)
                if event.kind == "sla_breached":
                    await self._alert_supervisors(event)
        except Exception:
            # A failed push is repaired by the next snapshot; never kill the subscription.
            log.exception("could not push event", extra={"session": event.session_id, "kind": event.kind})

    async def _session_changed(self, event: SessionEvent) -> None:
        sid = event.session_id
        self._holders.pop(sid, None)
        if not self.conns:
            return  # nobody on this replica to tell; the next transcript entry re-reads KV
        session = await self.reader.session(sid)
        holders = holders_of(session)
        self._remember(sid, holders)
        if session is not None:
            present = [h for h in holders if h in self.conns]
            if present:
                chat = await self.reader.chat(session)
                for holder in present:
                    self._send(holder, {"type": "chat", "chat": chat})
        # Everyone else who lists this session loses it: closed, back in the queue, or given to another.
        reason = "closed" if session is None or session.status == "closed" else "reassigned"
        concerned = {event.operator_id, session.operator_id if session else ""}
        for operator_id, group in list(self.conns.items()):
            if operator_id in holders:
                continue
            for conn in list(group):
                if sid in conn.shown or operator_id in concerned:
                    conn.push({"type": "closed", "session_id": sid, "reason": reason})

    async def _alert_supervisors(self, event: SessionEvent) -> None:
        """A chat passed an SLA target: tell the supervisors of its line (its queue lists them) who have a page here."""
        line = await self.reader.line(event.line_id)
        if line is None:
            return
        present = [op for op in dict.fromkeys(line.queue.operators) if op in self.conns]
        if not present:
            return
        session = await self.reader.session(event.session_id)
        operator = await self.reader.account(event.operator_id) if event.operator_id else None
        frame = {
            "type": "sla_breached",
            "session_id": event.session_id,
            "line_id": event.line_id,
            "line_name": line.name or line.id,
            "operator_id": event.operator_id,
            "operator_name": operator.name if operator is not None else event.operator_id,
            "client_name": (session.client_name if session is not None else "") or "Client",
            "reason": event.reason,
            "at": event.at.isoformat(),
        }
        for op_id in present:
            account = await self.reader.account(op_id)
            if account is not None and is_supervisor(account.roles):
                self._send(op_id, frame)

    async def watch_sla(self) -> None:
        """Push each change of an SLA clock (``ol-sla``, written by the router) to the pages listing that chat."""
        while True:
            try:
                kv = await self.reader.sla_bucket()
                if kv is not None:
                    await self._watch_sla_once(kv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sla watch failed; starting it again", extra={"error": repr(exc)})
            await asyncio.sleep(1.0)  # no bucket yet (no router ran), or the watch ended: look again

    async def _watch_sla_once(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                clock = None
                if entry.operation not in ("DEL", "PURGE") and entry.value:
                    with contextlib.suppress(msgspec.DecodeError):
                        clock = msgspec.json.decode(entry.value)
                if not self.conns:
                    continue
                frame = {"type": "sla", "session_id": entry.key, "sla": sla_clock(clock if isinstance(clock, dict) else None)}
                # Its holders too: a chat pushed to a page just now may not be marked shown there yet.
                holders = await self._holders_of(entry.key)
                for operator_id, group in list(self.conns.items()):
                    for conn in group:
                        if entry.key in conn.shown or operator_id in holders:
                            conn.push(frame)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _holders_of(self, session_id: str) -> frozenset[str]:
        cached = self._holders.get(session_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        session = await self.reader.session(session_id)
        holders = holders_of(session)
        self._remember(session_id, holders)
        return holders

    def _remember(self, session_id: str, holders: frozenset[str]) -> None:
        now = time.monotonic()
        if len(self._holders) > 10_000:
            self._holders = {k: v for k, v in self._holders.items() if v[1] > now}
        self._holders[session_id] = (holders, now + HOLDER_TTL)

    async def _on_mark(self, msg: Msg) -> None:
        """A channel's word on an operator's message (sent, delivered, read, failed): to whoever shows the chat."""
        if not self.conns:
            return
        try:
            mark = _mark_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable delivery mark", extra={"subject": msg.subject})
            return
        try:
            holders = await self._holders_of(mark.session_id)
        except Exception:
            log.exception("could not look up the session of a delivery mark", extra={"session": mark.session_id})
            return
        frame = {
            "type": "mark",
            "session_id": mark.session_id,
            "message_id": mark.message_id,
            "status": mark.status,
            "reason": mark.reason,
            "at": mark.at.isoformat(),
        }
        for holder in holders:
            self._send(holder, frame)

    async def _on_typing(self, msg: Msg) -> None:
        """ol.typing.in.<channel>.<account>.<chat key>: the client is typing; to whoever shows their open chats."""
        if not self.conns:
            return
        parts = msg.subject.split(".")
        if len(parts) != 6:
            return
        channel, account, chat = parts[3:]
        try:
            record, _ = await kv_get(self.reader.b.clients, client_key(channel, account, chat), ClientRecord)
            if record is None:
                return
            for session_id in record.open_sessions.values():
                for holder in await self._holders_of(session_id):
                    self._send(holder, {"type": "typing", "session_id": session_id})
        except Exception:
            log.warning("could not pass on a client's typing", extra={"subject": msg.subject}, exc_info=True)

    async def _answering(self, conn: Connection, session_id: str) -> Session | None:
        """The session, if the operator of ``conn`` is the one answering it (and it is open); else None."""
        session = await self.reader.session(session_id)
        if session is None or session.operator_id != conn.operator_id or session.status == "closed":
            return None
        return session

    async def typing(self, conn: Connection, session_id: str, name: str) -> bool:
        """The operator of ``conn`` types in ``session_id``: tell the client, if the chat is theirs (at most every 2 s)."""
        now = time.monotonic()
        if session_id not in conn.shown or now - conn.typed.get(session_id, 0.0) < TYPING_EVERY:
            return False
        session = await self._answering(conn, session_id)
        if session is None:
            return False  # only the operator answering the chat is shown typing to the client
        conn.typed[session_id] = now
        if len(conn.typed) > 100:
            conn.typed = {k: v for k, v in conn.typed.items() if now - v < TYPING_EVERY}
        typing = Typing(chat_id=session.chat_id, operator_name=name)
        await self.nc.publish(
            subjects.typing_out(session.channel, session.account, session.chat_key), msgspec.json.encode(typing)
        )
        return True

    async def seen(self, conn: Connection, session_id: str, upto: str) -> bool:
        """The operator of ``conn`` has the chat open with the client's messages up to ``upto`` on screen:
        tell the client's gateway (the widget shows "read"), if the chat is theirs, once per message."""
        if session_id not in conn.shown or conn.seen.get(session_id) == upto:
            return False
        session = await self._answering(conn, session_id)
        if session is None:
            return False  # a colleague or a supervisor looking in does not count as the answer being read
        conn.seen[session_id] = upto
        if len(conn.seen) > 200:
            conn.seen = {session_id: upto}
        body = msgspec.json.encode(Seen(chat_id=session.chat_id, upto=upto))
        await self.nc.publish(subjects.seen(session.channel, session.account, session.chat_key), body)
        return True

    async def _on_history(self, msg: Msg) -> None:
        if not self.conns:
            return
        try:
            entry = _history_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable transcript entry", extra={"subject": msg.subject})
            return
        if entry.held:
            # Beyond the flood limit: stored in the transcript (shown when the chat is opened), not pushed.
            HELD.inc()
            return
        try:
            holders = await self._holders_of(entry.session_id)
        except Exception:
            log.exception("could not look up the session of a transcript entry", extra={"session": entry.session_id})
            return
        for named in entry.mentions if entry.note else []:
            # @login in a colleague's note: told wherever they are, whether or not the chat is theirs.
            mention = {
                "type": "mention",
                "session_id": entry.session_id,
                "author_name": entry.author_name,
                "text": entry.text[:300],
            }
            self._send(named, mention)
        if holders:
            frame: dict[str, Any] = {"type": "message", **msgspec.to_builtins(entry)}
            for holder in holders:
                self._send(holder, frame)
