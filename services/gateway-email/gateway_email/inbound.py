"""Client mails in: one worker per mailbox, owning it through a KV lease.

While it holds the lease the worker keeps one IMAP connection, reads every
mail above the stored cursor ``(UIDVALIDITY, last UID)``, publishes it and
only then moves the cursor; then it waits in IDLE (re-issued every
``idle_renew`` seconds) or polls when the server has no IDLE. A crash between
the publish and the cursor write redoes that mail: the publish carries the
same ``Nats-Msg-Id`` and the Message-ID is remembered, so nothing doubles.
A changed UIDVALIDITY restarts the folder from UID 1, skipping every
Message-ID already handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway_email import metrics
from gateway_email.core import replies
from gateway_email.imap import ImapConnection, Selected
from gateway_email.mailboxes import Mailbox
from gateway_email.normalise import (
    CHANNEL,
    FileAttachment,
    Mail,
    MailError,
    attachment_envelope,
    parse_headers_only,
    parse_mail,
    to_inbound,
)
from gateway_email.settings import Settings
from gateway_email.store import ChatState, Cursor, Lease, MessageRef, Store
from openlines import bus, files, marks, subjects
from openlines.envelopes import Attachment, MarkStatus, SessionEvent, utcnow
from openlines.pace import backoff

log = logging.getLogger("gateway_email.inbound")

PUBLISH_TIMEOUT = 5.0  # seconds to wait for the PubAck of one mail
THREAD_LOOKUPS = 10  # In-Reply-To / References ids looked up to find the conversation a mail belongs to
MAX_CC = 10  # other people of a conversation copied on our replies

# What a report about one of our mails becomes: the event kind on that mail's session.
REPORT_EVENTS = {
    "failed": "delivery_failed",
    "delayed": "delivery_delayed",
    "delivered": "delivery_confirmed",
    "read": "message_read",
    "disposition": "message_disposition",
    "complaint": "spam_complaint",
    "auto": "auto_reply_received",
    "report": "report_received",
}

# ... and the reports that are also a status under the operator's message (a later mark never hides "failed").
REPORT_MARKS: dict[str, MarkStatus] = {"failed": "failed", "delayed": "delayed", "delivered": "delivered", "read": "read"}


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


class MailboxWorker:
    def __init__(self, nc: NATS, js: JetStreamContext, store: Store, mailbox: Mailbox, settings: Settings, owner: str) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.mb = mailbox
        self.settings = settings
        self.owner = owner
        self.account = mailbox.account
        self.state = "starting"  # for /readyz and debugging: waiting | owner | error: ...
        self.idle = False  # the connection uses IDLE (else it polls)
        self.waits = 0  # IDLE rounds / polls completed (an IDLE renewal counts as one)

    # ------------------------------------------------------------ ownership

    async def run(self, stopping: asyncio.Event) -> None:
        lease = Lease(self.store.leases, self.account, self.owner)
        while not stopping.is_set():
            try:
                got = await lease.acquire()
            except Exception as exc:  # NATS away: try again
                log.warning("lease not reachable", extra={"account": self.account, "error": repr(exc)})
                got = False
            if not got:
                self.state = "waiting: another replica owns the mailbox"
                await _pause(stopping, self.settings.lease_ttl / 3)
                continue
            log.info("mailbox lease taken", extra={"channel": CHANNEL, "account": self.account})
            metrics.OWNED.inc()
            try:
                await self._own(lease, stopping)
            finally:
                metrics.OWNED.dec()
                await lease.release()
                self.state = "released"

    async def _own(self, lease: Lease, stopping: asyncio.Event) -> None:
        work = asyncio.create_task(self._imap_forever(), name=f"imap-{self.account}")
        stop_wait = asyncio.ensure_future(stopping.wait())
        renewed_at = time.monotonic()
        try:
            while True:
                await asyncio.wait({work, stop_wait}, timeout=self.settings.lease_ttl / 3, return_when=asyncio.FIRST_COMPLETED)
                if stopping.is_set() or work.done():
                    return
                try:
                    if not await lease.renew():
                        log.warning("mailbox lease lost to another replica", extra={"account": self.account})
                        return
                    renewed_at = time.monotonic()
                except Exception as exc:
                    if time.monotonic() - renewed_at > self.settings.lease_ttl:
                        log.warning("mailbox lease expired (NATS unreachable)", extra={"account": self.account})
                        return
                    log.warning("lease renewal failed, retrying", extra={"account": self.account, "error": repr(exc)})
        finally:
            stop_wait.cancel()
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work

    # ------------------------------------------------------------ IMAP loop

    async def _imap_forever(self) -> None:
        attempt = 0
        while True:
            conn = ImapConnection(self.mb, self.settings.imap_timeout)
            try:
                await conn.open()
                selected = await conn.select(self.mb.folder)
                attempt = 0
                self.idle = self.mb.use_idle and conn.has_idle
                self.state = "owner"
                log.info("mailbox open", extra={"account": self.account, "idle": self.idle})
                cursor = await self._cursor_for(conn, selected)
                while True:
                    cursor = await self._drain(conn, cursor)
                    await conn.wait_for_news(
                        idle=self.idle, idle_renew=self.settings.idle_renew, poll_interval=self.settings.poll_interval
                    )
                    self.waits += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # IMAP trouble or NATS away: reconnect, the cursor says where we were
                attempt += 1
                metrics.IMAP_ERRORS.labels(self.account).inc()
                self.state = f"error: {exc.__class__.__name__}"
                log.warning("mailbox session ended, reconnecting", extra={"account": self.account, "error": repr(exc)[:300]})
            finally:
                await conn.close()
            await asyncio.sleep(backoff(attempt + 1, 0.25, 60.0))

    async def _cursor_for(self, conn: ImapConnection, selected: Selected) -> Cursor:
        cursor = await self.store.cursor(self.account)
        if cursor is not None and cursor.uidvalidity == selected.uidvalidity:
            return cursor
        if cursor is not None:
            log.warning(
                "UIDVALIDITY changed: resynchronising the folder (known Message-IDs are skipped)",
                extra={"account": self.account, "old": cursor.uidvalidity, "new": selected.uidvalidity},
            )
        # First start, or UIDs that mean nothing any more: where the backlog begins.
        start = 0
        if self.mb.backlog == "none":
            start = max(0, selected.uidnext - 1)
        elif self.mb.backlog == "unseen":
            unseen = await conn.unseen()
            start = (min(unseen) - 1) if unseen else max(0, selected.uidnext - 1)
        cursor = Cursor(uidvalidity=selected.uidvalidity, last_uid=start)
        await self.store.set_cursor(self.account, cursor)
        return cursor

    async def _drain(self, conn: ImapConnection, cursor: Cursor) -> Cursor:
        for uid in await conn.uids_after(cursor.last_uid):
            await self._one(conn, cursor.uidvalidity, uid)
            # Only now is the mail done: published (PubAck) and remembered.
            cursor = Cursor(uidvalidity=cursor.uidvalidity, last_uid=uid)
            await self.store.set_cursor(self.account, cursor)
        return cursor

    async def _one(self, conn: ImapConnection, uidvalidity: int, uid: int) -> None:
        size = await conn.size(uid)
        if size is None:
            return  # expunged meanwhile
        languages = self.settings.languages()
        too_large = size > self.settings.max_message_bytes
        raw = await conn.fetch(uid, headers_only=too_large)
        if raw is None:
            return
        try:
            if too_large:
                mail = parse_headers_only(raw, size, languages=languages)
            else:
                mail = parse_mail(
                    raw,
                    max_attachment_bytes=self.settings.max_attachment_bytes,
                    languages=languages,
                    max_text_chars=self.settings.max_text_chars,
                )
        except MailError as exc:
            await self._dead_letter(uidvalidity, uid, f"mail UID {uid} not published: {exc}")
            return
        except Exception as exc:  # a mail the parser chokes on must not stop the mailbox
            log.exception("mail could not be parsed", extra={"account": self.account, "uid": uid})
            await self._dead_letter(uidvalidity, uid, f"mail UID {uid} could not be parsed: {exc!r}"[:1000])
            return
        await self.handle(mail)

    # ------------------------------------------------------------ one mail

    async def handle(self, mail: Mail) -> str:
        """Publish one parsed mail; returns what happened (for metrics and tests)."""
        result = await self._handle(mail)
        metrics.MAILS.labels(self.account, result).inc()
        if mail.problems:
            log.info("mail read with problems", extra={"account": self.account, "msg_id": mail.key, "problems": mail.problems})
        return result

    async def _handle(self, mail: Mail) -> str:
        if mail.sender and mail.sender == self.mb.from_address.lower():
            return "own"  # a copy of our own mail (Bcc, forwarding loop): never a client message
        seen = await self.store.message(self.account, mail.key)
        if seen is not None and seen.direction == "in":
            log.info("mail already handled", extra={"account": self.account, "msg_id": mail.key})
            return "duplicate"
        if mail.report is not None:
            await self._report(mail)
            return "bounce" if mail.report.kind == "failed" else "report"
        now = utcnow()
        started = time.monotonic()
        attachments = [await self._keep(att) for att in mail.attachments]
        # A reply to a conversation we know (by In-Reply-To / References) from
        # another address (an alias, a colleague in copy) joins that conversation.
        chat_id = await self._thread_of(mail) or mail.sender
        joined = chat_id != mail.sender
        chat = await self.store.chat(self.account, chat_id)
        cc = list(chat.cc) if chat is not None and (mail.in_reply_to or mail.references) else []
        if joined and mail.sender not in cc:
            cc = [*cc, mail.sender][-MAX_CC:]
        # Written before the publish: the welcome the router sends for this
        # very mail must already find the loop-guard flag.
        await self.store.put_chat(
            self.account,
            ChatState(
                address=chat_id,
                name=(chat.name if chat else "") if joined else (mail.sender_name or (chat.name if chat else "")),
                subject=mail.subject or (chat.subject if chat else ""),
                last_message_id=mail.message_id or (chat.last_message_id if chat else ""),
                references=mail.references if mail.message_id else (chat.references if chat else []),
                cc=cc,
                no_auto_reply=bool(mail.no_auto_reply),
                no_auto_reply_reason=mail.no_auto_reply,
                updated_at=now,
            ),
        )
        env = to_inbound(self.account, mail, attachments, now, chat_id=chat_id)
        state_written = time.monotonic()
        # The gateways' one way in: fails at once when NATS is away (the mailbox
        # loop retries the mail from its cursor), deduplicated by the mail's id.
        ack = await bus.publish_inbound(self.nc, self.js, env, timeout=PUBLISH_TIMEOUT)
        await self.store.remember_message(MessageRef(message_id=mail.key, account=self.account, chat_id=chat_id, direction="in"))
        log.info(
            "mail published",
            extra={
                "channel": CHANNEL,
                "account": self.account,
                "msg_id": env.id,
                "duplicate": ack.duplicate,
                "no_auto_reply": env.no_auto_reply,
                "joined_thread": joined,
                # where a slow mail spent its time: reading and writing the chat state, then the publish
                "state_seconds": round(state_written - started, 3),
                "publish_seconds": round(time.monotonic() - state_written, 3),
            },
        )
        return "published"

    async def _thread_of(self, mail: Mail) -> str:
        """The chat (client address) of the conversation this mail replies to, "" when none is known."""
        ids = [mail.in_reply_to, *reversed(mail.references)] if mail.in_reply_to else list(reversed(mail.references))
        for message_id in list(dict.fromkeys(i for i in ids if i))[:THREAD_LOOKUPS]:
            ref = await self.store.message(self.account, message_id)
            if ref is not None and ref.chat_id and "@" in ref.chat_id:
                return ref.chat_id
        return ""

    async def _keep(self, att: FileAttachment) -> Attachment:
        if att.data is None:
            return attachment_envelope(att, ref="")
        key = att.object_key(self.account)
        await files.put_once(self.store.files, key, att.data, files.Meta(name=att.name, mime=att.mime))
        return attachment_envelope(att, ref=files.ref(subjects.OBJ_EMAIL_FILES, key))

    async def _report(self, mail: Mail) -> None:
        """A machine's mail (bounce, read receipt, complaint, vacation reply, bulk): never a chat.

        When it is about one of our mails it becomes an event on that mail's
        session (``delivery_failed``, ``delivery_delayed``, ``message_read``,
        ``spam_complaint``, ``auto_reply_received``...); otherwise a
        ``dead_letter`` event saying what it was, so nothing vanishes silently.
        """
        assert mail.report is not None
        r = mail.report
        event_id = f"report:{self.account}:{replies.digest(mail.key)}"
        about = None
        for message_id in r.refers_to[:THREAD_LOOKUPS]:
            ref = await self.store.message(self.account, message_id)
            if ref is not None and ref.direction == "out" and ref.session_id:
                about = ref
                break
        kind = REPORT_EVENTS[r.kind]
        who = f" ({r.recipient})" if r.recipient else ""
        if about is not None:
            evt = SessionEvent(
                id=event_id,
                kind=kind,
                at=utcnow(),
                session_id=about.session_id,
                channel=CHANNEL,
                account=self.account,
                chat_id=about.chat_id,
                reason=(f"bounced{who}: {r.reason}" if r.kind == "failed" else f"{r.reason}{who}")[:1000],
            )
            await bus.publish_event(self.js, evt)
            status = REPORT_MARKS.get(r.kind)
            if status is not None and about.out_id:
                # ... and a status under the operator's message itself, as other channels report it.
                await marks.publish_mark(
                    self.js,
                    channel=CHANNEL,
                    session_id=about.session_id,
                    message_id=about.out_id,
                    status=status,
                    at=evt.at,
                    account=self.account,
                    reason=evt.reason if status in ("failed", "delayed") else "",
                    timeout=PUBLISH_TIMEOUT,
                )
            log.info("report on our mail", extra={"account": self.account, "session": about.session_id, "kind": kind})
        else:
            what = {"failed": "bounce", "auto": "automatic mail"}.get(r.kind, kind.replace("_", " "))
            await bus.dead_letter(
                self.js,
                CHANNEL,
                self.account,
                f"report:{replies.digest(mail.key)}",
                f"{what} from {mail.sender or 'an unknown sender'} not opened as a chat"
                f" (about {r.original_message_id or 'no mail of ours'}): {r.reason}",
                timeout=PUBLISH_TIMEOUT,
            )
        ref = MessageRef(message_id=mail.key, account=self.account, chat_id=r.recipient, direction="in")
        await self.store.remember_message(ref)

    async def _dead_letter(self, uidvalidity: int, uid: int, reason: str) -> None:
        metrics.MAILS.labels(self.account, "dead_letter").inc()
        log.warning("mail dead-lettered", extra={"account": self.account, "uid": uid, "reason": reason[:300]})
        await bus.dead_letter(self.js, CHANNEL, self.account, f"{uidvalidity}:{uid}", reason, timeout=PUBLISH_TIMEOUT)
