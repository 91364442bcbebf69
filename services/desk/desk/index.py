"""The conversation index behind the desk's views and search (docs/decisions/020).

Each desk replica keeps its own index in memory (SQLite with FTS5), fed as
things happen from three durable sources, and rebuilt from them on start:

- ``ol-sessions`` (KV, last value per key, then every change): one row per
  conversation - line, channel, status, operator, tags, times;
- ``ol-clients`` (KV, likewise): the client's name, username, phone and
  e-mail, in a trigram index (any part of a name, of an address, of the
  phone's digits);
- ``OL_HIST`` (the transcripts, from the newest ``max_messages`` on): the
  words of clients' and operators' messages.

A request reads only this index: no bucket or stream is read per request.
Replicas agree because they read the same streams; a replica that restarts
rebuilds from them (and says so in its answers until it has caught up).
Memory is bounded by ``max_messages`` (message rows) and ``max_sessions``
(conversation rows; the oldest closed ones go first).

All SQLite work runs on one thread of its own: the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from openlines import subjects
from openlines.envelopes import HistoryEntry
from openlines.state import OPEN_STATUSES, ClientRecord, Session

log = logging.getLogger("desk.index")

INDEXED_SESSIONS = Gauge("openlines_desk_index_sessions", "Conversations in this replica's search index")
INDEXED_MESSAGES = Gauge("openlines_desk_index_messages", "Messages in this replica's search index")

MAX_TEXT_INDEXED = 4000  # characters of one message that are searchable
MAX_TERMS = 8
MIN_TERM = 2  # characters of a search word
MAX_RESULTS = 200
FLUSH_BATCH = 2000

VIEWS = ("mine", "queue", "lines", "closed", "all")

PREVIEW_CHARS = 120  # of a chat's last message, under it in the chat list
_session_decoder = msgspec.json.Decoder(Session)
_client_decoder = msgspec.json.Decoder(ClientRecord)
_entry_decoder = msgspec.json.Decoder(HistoryEntry)

SCHEMA = """
CREATE TABLE conv(
  session_id TEXT PRIMARY KEY, line_id TEXT, channel TEXT, status TEXT, operator_id TEXT, offered_to TEXT,
  closed_by TEXT, client_id TEXT, opened_at REAL, closed_at REAL, last_at REAL, tags TEXT, data BLOB);
CREATE INDEX conv_line ON conv(line_id, status);
CREATE INDEX conv_client ON conv(client_id);
CREATE INDEX conv_closed ON conv(status, closed_at);
CREATE TABLE client(id INTEGER PRIMARY KEY, ckey TEXT UNIQUE, client_id TEXT, name TEXT, phone TEXT, email TEXT, merged TEXT);
CREATE INDEX client_id ON client(client_id);
CREATE VIRTUAL TABLE client_fts USING fts5(hay, tokenize='trigram');
CREATE VIRTUAL TABLE msg USING fts5(text, session_id UNINDEXED, tokenize='unicode61 remove_diacritics 2');
"""


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


_PHONEISH = re.compile(r"^[+()\d\s.-]+$")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking: their id, and the lines whose conversations they may see (None: every line)."""

    operator_id: str
    lines: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Query:
    view: str = "all"
    text: str = ""
    line: str = ""
    channel: str = ""
    status: str = ""
    tag: str = ""
    limit: int = 50


@dataclass(slots=True)
class Found:
    session: dict[str, Any]
    snippet: str = ""
    matched: str = ""  # "client" | "message" | "" (no text searched)


class Source:
    """One feed of the index and whether it has caught up with what its stream held at start."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.target = 0  # the stream's last sequence when the feed began
        self.applied = 0  # the last stream sequence applied
        self.loaded = asyncio.Event()

    def check(self) -> None:
        if self.applied >= self.target:
            self.loaded.set()


class ConversationIndex:
    def __init__(self, js: JetStreamContext, *, max_messages: int, max_sessions: int) -> None:
        self._previews: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
        self.js = js
        self.max_messages = max_messages
        self.max_sessions = max_sessions
        self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.db.executescript(SCHEMA)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="desk-index")
        self.sources = {name: Source(name) for name in ("sessions", "clients", "history")}
        self._pending: list[tuple[str, int, bytes, str]] = []
        self._wake = asyncio.Event()
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = 0.0

    @property
    def ready(self) -> bool:
        return all(s.loaded.is_set() for s in self.sources.values())

    # -- feeding -------------------------------------------------------------------------

    async def start(self) -> None:
        """Begins following the sources; never fails the desk's start (a source NATS cannot give yet is retried)."""
        self.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._flush_forever(), name="desk-index-flush"))
        feeds = (
            ("sessions", f"KV_{subjects.KV_SESSIONS}", f"$KV.{subjects.KV_SESSIONS}.>", True),
            ("clients", f"KV_{subjects.KV_CLIENTS}", f"$KV.{subjects.KV_CLIENTS}.>", True),
            ("history", subjects.STREAM_HIST, subjects.history_all(), False),
        )
        for name, stream, subject, last_per_key in feeds:
            self._tasks.append(
                loop.create_task(self._keep_following(name, stream, subject, last_per_key), name=f"desk-index-{name}")
            )

    async def _keep_following(self, name: str, stream: str, subject: str, last_per_key: bool) -> None:
        delay = 0.5
        while True:
            try:
                await self._follow(name, stream, subject, last_per_key=last_per_key)
                return  # the ordered consumer follows from here on (nats-py restarts it after a gap)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "could not follow a source of the search index; trying again", extra={"source": name, "error": repr(exc)}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _follow(self, name: str, stream: str, subject: str, *, last_per_key: bool) -> None:
        source = self.sources[name]
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            source.loaded.set()  # nothing yet; what comes later is followed below once the stream exists
            return
        last = info.state.last_seq or 0
        source.target = last
        config = None
        policy = js_api.DeliverPolicy.LAST_PER_SUBJECT
        if not last_per_key:
            start = max(info.state.first_seq or 1, last - self.max_messages + 1, 1)
            config = js_api.ConsumerConfig(opt_start_seq=start)
            policy = js_api.DeliverPolicy.BY_START_SEQUENCE
        if (info.state.messages or 0) == 0:
            source.loaded.set()

        async def on_msg(msg: Msg) -> None:
            headers = msg.headers or {}
            op = "DEL" if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers else "PUT"
            key = msg.subject.split(".", 2)[2] if last_per_key else ""
            self._pending.append((name, msg.metadata.sequence.stream, msg.data, key if op == "PUT" else "\x00" + key))
            if len(self._pending) >= FLUSH_BATCH or not self._wake.is_set():
                self._wake.set()

        sub = await self.js.subscribe(
            subject, stream=stream, cb=on_msg, ordered_consumer=True, deliver_policy=policy, config=config
        )
        self._subs.append(sub)

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # let a burst of deliveries queue up behind the first
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                counts = await loop.run_in_executor(self.pool, self._apply, batch)
            except Exception:
                log.exception("could not index a batch; its conversations show as before until they change again")
                counts = None
            for name, _seq, _data, _key in batch:
                src = self.sources[name]
                src.applied = max(src.applied, _seq)
            for src in self.sources.values():
                src.check()
            if counts is not None:
                INDEXED_SESSIONS.set(counts[0])
                INDEXED_MESSAGES.set(counts[1])

    # -- the index (on its thread) ------------------------------------------------------

    def _apply(self, batch: list[tuple[str, int, bytes, str]]) -> tuple[int, int]:
        db = self.db
        db.execute("BEGIN")
        try:
            for name, _seq, data, key in batch:
                try:
                    if name == "sessions":
                        self._put_session(key, data)
                    elif name == "clients":
                        self._put_client(key, data)
                    else:
                        self._put_entry(data)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    continue  # not ours to judge: a record the desk cannot read is left out of the index
            sessions = self._bound()
            messages = self._messages()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return sessions, messages

    def _put_session(self, key: str, data: bytes) -> None:
        if key.startswith("\x00"):
            self.db.execute("DELETE FROM conv WHERE session_id = ?", (key[1:],))
            return
        if not data or "." in key:
            return  # the earlier queue layout (queue.<line>) lives in the same bucket
        s = _session_decoder.decode(data)
        self.db.execute(
            "INSERT OR REPLACE INTO conv VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                s.id,
                s.line_id,
                s.channel,
                s.status,
                s.operator_id,
                " " + " ".join(s.offered_to) + " ",
                s.closed_by,
                s.client_id,
                _ts(s.opened_at),
                _ts(s.closed_at),
                max(_ts(s.last_message_at), _ts(s.opened_at), _ts(s.closed_at)),
                " " + " ".join(s.tags) + " ",
                data,
            ),
        )

    def _put_client(self, key: str, data: bytes) -> None:
        db = self.db
        deleting = key.startswith("\x00")
        ckey = key[1:] if deleting else key
        row = db.execute("SELECT id FROM client WHERE ckey = ?", (ckey,)).fetchone()
        if row is not None:
            db.execute("DELETE FROM client_fts WHERE rowid = ?", (row[0],))
        if deleting or not data:
            db.execute("DELETE FROM client WHERE ckey = ?", (ckey,))
            return
        c = _client_decoder.decode(data)
        p = c.profile
        # the clients merged into this one (decision 024): their conversations are found under this client's name too
        values = (ckey, c.client_id, p.name, p.phone, p.email, " ".join(c.merged_ids))
        if row is None:
            sql = "INSERT INTO client(ckey, client_id, name, phone, email, merged) VALUES (?,?,?,?,?,?)"
            rowid = db.execute(sql, values).lastrowid
        else:
            rowid = row[0]
            sql = "UPDATE client SET ckey=?, client_id=?, name=?, phone=?, email=?, merged=? WHERE id=?"
            db.execute(sql, (*values, rowid))
        hay = " ".join(x for x in (p.name, p.username, p.email, _digits(p.phone), p.phone) if x).lower()
        db.execute("INSERT INTO client_fts(rowid, hay) VALUES (?, ?)", (rowid, hay))

    def _put_entry(self, data: bytes) -> None:
        e = _entry_decoder.decode(data)
        if e.direction == "system":
            return  # the trail's notes ("Offered to ...") are not what people search for
        if e.author_id != "auto":  # the welcome is not news: the chat list shows what people wrote
            self._remember_preview(e)
        words = " ".join([e.text, *(a.name for a in e.attachments if a.name)]).strip()
        if words:
            self.db.execute("INSERT INTO msg(text, session_id) VALUES (?, ?)", (words[:MAX_TEXT_INDEXED], e.session_id))

    def _remember_preview(self, e: HistoryEntry) -> None:
        """The chat list's line under a chat: its last message (a plain dict: read from the event loop, lock-free)."""
        files = ", ".join(a.name or a.kind for a in e.attachments)
        text = " ".join(e.text.split()) or (f"📎 {files}" if files else "")
        have = self._previews.get(e.session_id)
        if have is not None and have["at"] > e.at.isoformat():
            return  # an older entry replayed after a newer one
        self._previews[e.session_id] = {"text": text[:PREVIEW_CHARS], "at": e.at.isoformat(), "direction": e.direction}
        self._previews.move_to_end(e.session_id)
        while len(self._previews) > self.max_sessions:
            self._previews.popitem(last=False)

    def preview(self, session_id: str) -> dict[str, str] | None:
        return self._previews.get(session_id)

    def _messages(self) -> int:
        """How many messages the index holds, without counting them.

        ``count(*)`` on an FTS5 table reads every row (tens of milliseconds at
        the default bound, on every batch: the desk's CPU grew with the number
        of conversations it had seen). Rows are only ever added at the top
        (rowid = the highest + 1) and removed from the bottom (``_bound``), so
        the rowids held are one unbroken range.
        """
        # Two statements: SQLite answers a lone min() or max() of the rowid from the index's ends, not both at once.
        high = self.db.execute("SELECT max(rowid) FROM msg").fetchone()[0]
        low = self.db.execute("SELECT min(rowid) FROM msg").fetchone()[0]
        return 0 if high is None or low is None else high - low + 1

    def _bound(self) -> int:
        db = self.db
        top = db.execute("SELECT max(rowid) FROM msg").fetchone()[0] or 0
        if top > self.max_messages:
            db.execute("DELETE FROM msg WHERE rowid <= ?", (top - self.max_messages,))
        sessions: int = db.execute("SELECT count(*) FROM conv").fetchone()[0]
        if sessions > self.max_sessions:
            db.execute(
                "DELETE FROM conv WHERE session_id IN "
                "(SELECT session_id FROM conv WHERE status = 'closed' ORDER BY closed_at LIMIT ?)",
                (sessions - self.max_sessions,),
            )
            sessions = db.execute("SELECT count(*) FROM conv").fetchone()[0]
        return sessions

    # -- asking ------------------------------------------------------------------------

    async def find(self, viewer: Viewer, q: Query) -> list[Found]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._find, viewer, q)

    async def previous(self, client_ids: list[str], exclude: str, limit: int) -> list[Session]:
        """The client's closed conversations, newest first (the client card), from the index: no stream is read.

        ``client_ids``: the client and every client merged into it (decision 024).
        """
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._previous, client_ids, exclude, limit)

    def _previous(self, client_ids: list[str], exclude: str, limit: int) -> list[Session]:
        ids = list(dict.fromkeys(client_ids))[:100]
        marks = ",".join("?" for _ in ids)
        rows = self.db.execute(
            f"SELECT data FROM conv WHERE client_id IN ({marks}) AND status = 'closed' AND session_id != ? "
            "ORDER BY closed_at DESC LIMIT ?",
            (*ids, exclude, limit),
        ).fetchall()
        out: list[Session] = []
        for (data,) in rows:
            try:
                out.append(_session_decoder.decode(data))
            except msgspec.DecodeError:
                continue
        return out

    async def tags(self, viewer: Viewer) -> list[str]:
        """The tags in use on the conversations this viewer may see, most used first."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._tags, viewer)

    def _visible(self, viewer: Viewer) -> tuple[str, list[Any]]:
        if viewer.lines is None:
            return "1", []
        marks = ",".join("?" for _ in viewer.lines)
        where = f"(c.line_id IN ({marks}) OR c.operator_id = ? OR c.closed_by = ? OR instr(c.offered_to, ?) > 0)"
        return where, [*sorted(viewer.lines), viewer.operator_id, viewer.operator_id, f" {viewer.operator_id} "]

    def _tags(self, viewer: Viewer) -> list[str]:
        where, args = self._visible(viewer)
        counts: dict[str, int] = {}
        for (tags,) in self.db.execute(f"SELECT c.tags FROM conv c WHERE c.tags != '  ' AND {where}", args):
            for t in tags.split():
                counts[t] = counts.get(t, 0) + 1
        return sorted(counts, key=lambda t: (-counts[t], t))[:100]

    def _find(self, viewer: Viewer, q: Query) -> list[Found]:
        try:
            return self._find_in(viewer, q)
        except sqlite3.OperationalError as exc:  # a search FTS5 cannot parse finds nothing, it does not fail
            log.info("search not understood", extra={"error": str(exc)})
            return []

    def _find_in(self, viewer: Viewer, q: Query) -> list[Found]:
        where, args = self._visible(viewer)
        clauses = [where]
        me = viewer.operator_id
        if q.view == "mine":
            clauses.append("c.status IN ('assigned', 'answered') AND (c.operator_id = ? OR instr(c.offered_to, ?) > 0)")
            args += [me, f" {me} "]
        elif q.view == "queue":
            clauses.append("c.status = 'waiting'")
            if viewer.lines is not None:  # the queues of one's own lines: not chats one merely closed once
                clauses.append(f"c.line_id IN ({','.join('?' for _ in viewer.lines)})")
                args += sorted(viewer.lines)
        elif q.view == "lines":
            clauses.append(f"c.status IN ({','.join(repr(s) for s in OPEN_STATUSES)})")
        elif q.view == "closed":
            clauses.append("c.status = 'closed'")
        for column, value in (("line_id", q.line), ("channel", q.channel), ("status", q.status)):
            if value:
                clauses.append(f"c.{column} = ?")
                args.append(value)
        if q.tag:
            clauses.append("instr(c.tags, ?) > 0")
            args.append(f" {q.tag} ")
        # Words of one character are left out: they would match nearly everything, at the cost of a full scan.
        terms = [t for t in q.text.split() if len(t) >= MIN_TERM and any(ch.isalnum() for ch in t)][:MAX_TERMS]
        match_msg = ""
        client_set: set[str] = set()
        if terms:
            client_ids = self._client_ids(terms)
            match_msg = " AND ".join('"' + t.replace('"', '""') + '"*' for t in terms)
            marks = ",".join("?" for _ in client_ids)
            clauses.append(f"(c.client_id IN ({marks}) OR c.session_id IN (SELECT session_id FROM msg WHERE msg MATCH ?))")
            args += [*client_ids, match_msg]
            client_set.update(client_ids)
        order = {
            "queue": "c.opened_at ASC",
            "closed": "c.closed_at DESC",
            "mine": "c.opened_at ASC",
        }.get(q.view, "c.last_at DESC")
        sql = f"SELECT c.data, c.client_id, c.session_id FROM conv c WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT ?"
        rows = self.db.execute(sql, [*args, max(1, min(q.limit, MAX_RESULTS))]).fetchall()
        out = [Found(session=msgspec.json.decode(data)) for data, _, _ in rows]
        if terms:
            by_id = {f.session["id"]: f for f in out}
            for f, (_, client_id, _) in zip(out, rows, strict=True):
                f.matched = "client" if client_id in client_set else "message"
            wanted = [sid for sid, f in by_id.items() if f.matched == "message"]
            for sid, snip in self._snippets(match_msg, wanted):
                if not by_id[sid].snippet:
                    by_id[sid].snippet = snip
        return out

    def _client_ids(self, terms: list[str]) -> list[str]:
        """Clients whose name, username, e-mail or phone holds every term (phone terms by their digits)."""
        clauses, args = [], []
        for raw in terms:
            term = raw.lower()
            if _PHONEISH.match(term) and _digits(term):
                term = _digits(term)
            if len(term) >= 3:
                clauses.append("client_fts MATCH ?")
                args.append('"' + term.replace('"', '""') + '"')
            else:
                clauses.append("hay LIKE ? ESCAPE '\\'")
                args.append("%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        sql = (
            "SELECT DISTINCT client.client_id, client.merged FROM client WHERE client.id IN "
            f"(SELECT rowid FROM client_fts WHERE {' AND '.join(clauses)}) LIMIT 1000"
        )
        found: dict[str, None] = {}
        for client_id, merged in self.db.execute(sql, args):
            found[client_id] = None
            found.update(dict.fromkeys((merged or "").split()))
        return list(found)

    def _snippets(self, match: str, session_ids: Iterable[str]) -> list[tuple[str, str]]:
        ids = list(session_ids)
        if not ids:
            return []
        marks = ",".join("?" for _ in ids)
        sql = (
            f"SELECT session_id, snippet(msg, 0, '', '', '…', 12) FROM msg WHERE msg MATCH ? AND session_id IN ({marks}) "
            "ORDER BY rowid DESC LIMIT 500"
        )
        return [(r[0], r[1]) for r in self.db.execute(sql, [match, *ids])]
