"""One IMAP connection to one mailbox, on aioimaplib.

aioimaplib has no STARTTLS command, so :meth:`ImapConnection.open` upgrades
the socket itself (``loop.start_tls`` on the client protocol) and asks for
the capabilities again, as RFC 3501 §6.2.1 requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

import aioimaplib

from gateway_email.mailboxes import Mailbox


class ImapError(Exception):
    """The server refused something or the connection broke; the caller reconnects."""


_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass(frozen=True, slots=True)
class Selected:
    uidvalidity: int
    uidnext: int


class ImapConnection:
    def __init__(self, mailbox: Mailbox, timeout: float) -> None:
        self.mb = mailbox
        self.timeout = timeout
        self.client: aioimaplib.IMAP4 | None = None
        self.lost = asyncio.Event()

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    @property
    def c(self) -> aioimaplib.IMAP4:
        if self.client is None or self.lost.is_set():
            raise ImapError("not connected")
        return self.client

    async def open(self) -> None:
        mb = self.mb
        ctx = mb.ssl_context() if mb.imap_tls == "ssl" else None
        self.client = aioimaplib.IMAP4(
            host=mb.imap_host, port=mb.imap_port_, timeout=self.timeout, conn_lost_cb=self._on_lost, ssl_context=ctx
        )
        try:
            await self.client.wait_hello_from_server()
        except (OSError, TimeoutError) as exc:
            raise ImapError(f"cannot reach {mb.imap_host}:{mb.imap_port_}: {exc!r}") from None
        if mb.imap_tls == "starttls":
            await self._starttls()
        resp = await self.c.login(mb.username, mb.password)
        if resp.result != "OK":
            raise ImapError(f"login refused: {_text(resp.lines)}")

    async def _starttls(self) -> None:
        proto = self.c.protocol
        if not self.c.has_capability("STARTTLS"):
            raise ImapError('the server does not offer STARTTLS (set imap_tls = "ssl" or "none")')
        resp = await asyncio.wait_for(
            proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop)), self.timeout
        )
        if resp.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(resp.lines)}")
        loop = asyncio.get_running_loop()
        transport = await asyncio.wait_for(
            loop.start_tls(proto.transport, proto, self.mb.ssl_context(), server_hostname=self.mb.imap_host), self.timeout
        )
        if transport is None:
            raise ImapError("STARTTLS handshake failed")
        proto.transport = transport
        await asyncio.wait_for(proto.capability(), self.timeout)  # capabilities before TLS must not be trusted

    @property
    def has_idle(self) -> bool:
        return bool(self.c.has_capability("IDLE"))

    async def select(self, folder: str) -> Selected:
        resp = await self.c.select(_quote(folder))
        if resp.result != "OK":
            raise ImapError(f"SELECT {folder} refused: {_text(resp.lines)}")
        uidvalidity = uidnext = 0
        for line in resp.lines:
            if isinstance(line, bytes | bytearray):
                if m := _UIDVALIDITY.search(line):
                    uidvalidity = int(m.group(1))
                if m := _UIDNEXT.search(line):
                    uidnext = int(m.group(1))
        if not uidvalidity:
            raise ImapError("SELECT answered without UIDVALIDITY")
        return Selected(uidvalidity=uidvalidity, uidnext=uidnext)

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above ``last_uid``, ascending ("n:*" also matches the highest UID below n: filtered)."""
        resp = await self.c.uid_search("UID", f"{last_uid + 1}:*", charset=None)
        if resp.result != "OK":
            raise ImapError(f"UID SEARCH refused: {_text(resp.lines)}")
        uids: set[int] = set()
        for line in resp.lines[:-1]:
            if isinstance(line, bytes | bytearray):
                uids.update(int(tok) for tok in bytes(line).split() if tok.isdigit())
        return sorted(u for u in uids if u > last_uid)

    async def unseen(self) -> list[int]:
        resp = await self.c.uid_search("UNSEEN", charset=None)
        if resp.result != "OK":
            raise ImapError(f"UID SEARCH UNSEEN refused: {_text(resp.lines)}")
        return sorted(
            {
                int(tok)
                for line in resp.lines[:-1]
                if isinstance(line, bytes | bytearray)
                for tok in bytes(line).split()
                if tok.isdigit()
            }
        )

    async def size(self, uid: int) -> int | None:
        resp = await self.c.uid("fetch", str(uid), "(UID RFC822.SIZE)")
        if resp.result != "OK":
            raise ImapError(f"UID FETCH refused: {_text(resp.lines)}")
        for line in resp.lines:
            if isinstance(line, bytes | bytearray) and (m := _FETCH_SIZE.search(line)):
                found = _FETCH_UID.search(line)
                if found is None or int(found.group(1)) == uid:
                    return int(m.group(1))
        return None  # expunged meanwhile

    async def fetch(self, uid: int, *, headers_only: bool = False) -> bytes | None:
        """The raw mail (``BODY.PEEK``: reading does not mark it seen), None if it is gone."""
        part = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        resp = await self.c.uid("fetch", str(uid), f"(UID {part})")
        if resp.result != "OK":
            raise ImapError(f"UID FETCH refused: {_text(resp.lines)}")
        for line in resp.lines:
            if isinstance(line, bytearray):
                return bytes(line)
        return None

    async def wait_for_news(self, *, idle: bool, idle_renew: float, poll_interval: float) -> None:
        """Return when the folder may have changed: an IDLE push, the IDLE renewal, or the poll interval."""
        if not idle:
            lost = asyncio.ensure_future(self.lost.wait())
            try:
                await asyncio.wait({lost}, timeout=poll_interval)
            finally:
                lost.cancel()
            if self.lost.is_set():
                raise ImapError("connection lost")
            resp = await self.c.noop()
            if resp.result != "OK":
                raise ImapError("NOOP refused")
            return
        client = self.c
        idle_task = await client.idle_start(timeout=idle_renew)
        push = asyncio.ensure_future(client.wait_server_push(timeout=idle_renew + 5))
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({push, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            push.cancel()
            lost.cancel()
        if self.lost.is_set():
            idle_task.cancel()
            raise ImapError("connection lost while idling")
        client.idle_done()
        try:
            await asyncio.wait_for(idle_task, self.timeout)
        except TimeoutError:
            raise ImapError("IDLE did not end after DONE") from None

    async def close(self) -> None:
        if self.client is None:
            return
        client, self.client = self.client, None
        if not self.lost.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 2.0)
        with contextlib.suppress(Exception):
            transport = client.protocol.transport
            if transport is not None:
                transport.close()


def _quote(folder: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._/-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(lines: list[bytes | bytearray]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines[-2:])[:300]
