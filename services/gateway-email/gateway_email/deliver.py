"""Operator replies out: a durable consumer on ``ol.out.email.>`` sending over SMTP.

Each message is acked only when it is sent (and recorded), or known to be
undeliverable (``delivery_failed`` published), or deliberately not sent (an
automatic reply to a sender that must get none, RFC 3834). Temporary failures
(4xx, connection trouble) are retried with a growing delay through
``nak(delay)``; after ``smtp_attempts`` tries they count as failed.

Exactly-once is not possible over SMTP; what we do: the Message-ID is derived
from the outbound id, the ``sent.<id>`` KV record is written right after the
server accepted the mail and before the ack, and a redelivered message with
that record is acked without sending. The remaining window is a crash (or
NATS outage) between the server's "250 accepted" and that KV write: the mail
is then sent a second time, with the same Message-ID, which mail clients show
as one message.

Operators' files go as MIME attachments, read from the desk's store by
reference (never from a link). A file that is no longer kept is left out and
reported (``delivery_failed`` naming it); files together larger than
``OPENLINES_EMAIL_ATTACHMENTS_MAX_BYTES`` make the reply ``delivery_failed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

import aiosmtplib
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gateway_email import metrics
from gateway_email.core import loopguard, replies
from gateway_email.mailboxes import Mailbox
from gateway_email.normalise import CHANNEL
from gateway_email.settings import Settings
from gateway_email.store import ChatState, MessageRef, SentRecord, Store
from openlines import files, marks, subjects
from openlines.consume import Durable, outbound_consumer
from openlines.envelopes import Outbound, decoder, utcnow
from openlines.pace import backoff

log = logging.getLogger("gateway_email.deliver")

_outbound = decoder(Outbound)


class Temporary(Exception):
    """Worth another try later (4xx, connection trouble)."""


class Permanent(Exception):
    """The server refused the mail for good (5xx)."""


@dataclass(frozen=True, slots=True)
class FilePart:
    name: str
    mime: str
    data: bytes


def compose(mb: Mailbox, out: Outbound, chat: ChatState | None, parts: Sequence[FilePart] = ()) -> EmailMessage:
    """The mail for one outbound message, threaded onto the client's last mail, its files attached. Pure."""
    msg = EmailMessage()
    msg["From"] = formataddr((mb.from_name, mb.from_address)) if mb.from_name else mb.from_address
    msg["To"] = out.chat_id
    if chat is not None and chat.cc and not out.auto:
        msg["Cc"] = ", ".join(a for a in chat.cc if a != out.chat_id)
    msg["Subject"] = replies.reply_subject(chat.subject if chat else "")
    msg["Date"] = format_datetime(out.created_at)
    msg["Message-ID"] = replies.our_message_id(out.id, mb.domain)
    if chat is not None and chat.last_message_id:
        msg["In-Reply-To"] = chat.last_message_id
        msg["References"] = " ".join(replies.references(chat.references, chat.last_message_id))
    if out.auto:
        # RFC 3834 §5: mark our automatic answers so other robots do not answer them.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(out.text or " ")
    for part in parts:
        maintype, _, subtype = (part.mime if "/" in part.mime else "application/octet-stream").partition("/")
        msg.add_attachment(part.data, maintype=maintype, subtype=subtype or "octet-stream", filename=part.name)
    return msg


def classify(exc: BaseException) -> Exception:
    """An aiosmtplib error as :class:`Temporary` or :class:`Permanent`, with the server's reply."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        reply = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        return Permanent(reply) if codes and all(c >= 500 for c in codes) else Temporary(reply)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Our configuration, not the mail: retried, so a fixed password still sends it.
        return Temporary(f"authentication failed: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = f"{exc.code} {exc.message}"
        return Permanent(reply) if exc.code >= 500 else Temporary(reply)
    return Temporary(f"{exc.__class__.__name__}: {exc}")


class Outgoing:
    def __init__(self, js: JetStreamContext, store: Store, mailboxes: dict[str, Mailbox], settings: Settings) -> None:
        self.js = js
        self.store = store
        self.mailboxes = mailboxes
        self.settings = settings
        self.consumer: Durable | None = None
        self.desk_files = files.Reader(js, timeout=settings.smtp_timeout, allowed=frozenset({subjects.OBJ_DESK_FILES}))

    def ready(self) -> str | None:
        return None if self.consumer is not None and self.consumer.running else "outbound consumer not running"

    async def run(self, stopping: asyncio.Event) -> None:
        s = self.settings
        config = outbound_consumer(CHANNEL, s.outbound_consumer, ack_wait=s.smtp_timeout * 3 + 30, max_ack_pending=256)
        # A message whose recording failed (NATS trouble) comes again after ack_wait, as the SMTP side expects.
        self.consumer = Durable(self.js, subjects.STREAM_OUT, config, batch=16, retry_delay=config.ack_wait or 30.0)
        await self.consumer.run(self._one, stopping)

    async def _one(self, m: Msg) -> None:
        await self.handle(m)

    async def handle(self, m: Msg) -> str:
        try:
            out = _outbound.decode(m.data)
        except msgspec.DecodeError as exc:
            log.error("undecodable outbound message dropped", extra={"subject": m.subject, "error": str(exc)})
            await m.term()
            return "bad"
        result = await self._handle(m, out)
        metrics.SENT.labels(out.account, result).inc()
        return result

    async def _handle(self, m: Msg, out: Outbound) -> str:
        mb = self.mailboxes.get(out.account)
        if mb is None:
            await self._failed(out, f"no mailbox is configured for e-mail account {out.account!r}")
            await m.ack_sync()
            return "failed"
        done = await self.store.sent(out.id)
        if done is not None:
            if done.status == "sent":  # the mark may be what failed last time: stored once whatever happens
                await self._sent_mark(out)
            await m.ack_sync()
            return "duplicate"
        chat = await self.store.chat(mb.account, out.chat_id)
        message_id = replies.our_message_id(out.id, mb.domain)
        if out.auto:
            reason = (chat.no_auto_reply_reason if chat and chat.no_auto_reply else "") or loopguard.robot_address(out.chat_id)
            if reason:
                await self.store.record_sent(
                    SentRecord(out_id=out.id, message_id=message_id, status="suppressed", detail=reason, at=utcnow())
                )
                await m.ack_sync()
                log.info("automatic reply not sent (RFC 3834)", extra={"account": mb.account, "msg_id": out.id, "reason": reason})
                return "suppressed"
        try:
            parts, left_out = await self._files(out)
        except Permanent as exc:
            await self._failed(out, str(exc))
            await self.store.record_sent(
                SentRecord(out_id=out.id, message_id=message_id, status="failed", detail=str(exc)[:500], at=utcnow())
            )
            await m.ack_sync()
            return "failed"
        except Temporary as exc:
            log.warning("operator files not readable now, will retry", extra={"msg_id": out.id, "error": str(exc)})
            await m.nak(delay=self.settings.smtp_backoff)
            return "retry"
        if left_out and not parts and not out.text.strip():
            await self._failed(out, "; ".join(left_out))
            await m.ack_sync()
            return "failed"
        mail = compose(mb, out, chat, parts)
        try:
            await self._send(mb, mail)
        except Temporary as exc:
            tries = m.metadata.num_delivered
            if tries >= self.settings.smtp_attempts:
                await self._failed(out, f"gave up after {tries} attempts: {exc}")
                await self.store.record_sent(
                    SentRecord(out_id=out.id, message_id=message_id, status="failed", detail=str(exc)[:500], at=utcnow())
                )
                await m.ack_sync()
                return "failed"
            delay = backoff(tries, self.settings.smtp_backoff, self.settings.smtp_backoff_max)
            log.warning(
                "smtp temporary failure, will retry",
                extra={"account": mb.account, "msg_id": out.id, "retry_in_s": delay, "error": str(exc)[:300]},
            )
            await m.nak(delay=delay)
            return "retry"
        except Permanent as exc:
            await self._failed(out, f"refused by the mail server: {exc}")
            await self.store.record_sent(
                SentRecord(out_id=out.id, message_id=message_id, status="failed", detail=str(exc)[:500], at=utcnow())
            )
            await m.ack_sync()
            return "failed"
        # Recorded before the ack: a redelivery after this point sends nothing.
        await self.store.record_sent(SentRecord(out_id=out.id, message_id=message_id, status="sent", at=utcnow()))
        await self.store.remember_message(
            MessageRef(
                message_id=message_id,
                account=mb.account,
                chat_id=out.chat_id,
                direction="out",
                session_id=out.session_id,
                out_id=out.id,
            )
        )
        await self._sent_mark(out)
        if left_out:  # sent without them: the operator is told which files did not go, and why
            await self._failed(out, "sent without " + "; ".join(left_out), delivered=True)
        await m.ack_sync()
        log.info("mail sent", extra={"channel": CHANNEL, "account": mb.account, "msg_id": out.id, "session": out.session_id})
        return "sent"

    async def _files(self, out: Outbound) -> tuple[list[FilePart], list[str]]:
        """The operator's files as MIME parts, and what was left out (with the reason)."""
        parts: list[FilePart] = []
        left_out: list[str] = []
        limit = self.settings.email_attachments_max_bytes
        total = 0
        for att in out.attachments:
            name = files.clean_name(att.name or att.kind)
            parsed = files.parse_ref(att.ref)
            if parsed is None or parsed[0] != subjects.OBJ_DESK_FILES:
                left_out.append(f"{name!r}: not a file uploaded to the desk (links are never fetched)")
                continue
            try:
                stored = await self.desk_files.get(att.ref, max_bytes=limit)
            except files.FileTooLarge as exc:
                raise Permanent(f"{name!r} is {exc.size} bytes; a reply's files may be {limit} bytes together") from None
            except files.FileGone:
                left_out.append(f"{name!r}: no longer in the desk's file store")
                continue
            except files.StoreUnavailable as exc:
                raise Temporary(f"{name!r}: {exc}") from None
            total += stored.size
            if total > limit:
                raise Permanent(f"the files are more than {limit} bytes together; mail servers refuse such mails")
            parts.append(FilePart(name=name, mime=att.mime or stored.meta.mime or "application/octet-stream", data=stored.data))
        return parts, left_out

    async def _send(self, mb: Mailbox, mail: EmailMessage) -> None:
        login = mb.smtp_login
        try:
            await aiosmtplib.send(
                mail,
                hostname=mb.smtp_host_,
                port=mb.smtp_port_,
                username=login[0] if login else None,
                password=login[1] if login else None,
                use_tls=mb.smtp_tls == "ssl",
                start_tls=mb.smtp_tls == "starttls",
                tls_context=mb.ssl_context() if mb.smtp_tls != "none" else None,
                timeout=self.settings.smtp_timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise classify(exc) from None

    async def _sent_mark(self, out: Outbound) -> None:
        """The mail server took it: "sent" under the operator's message (delivered and read follow from reports)."""
        if not out.session_id:
            return
        await marks.publish_mark(
            self.js,
            channel=CHANNEL,
            session_id=out.session_id,
            message_id=out.id,
            status="sent",
            at=utcnow(),
            account=out.account,
        )

    async def _failed(self, out: Outbound, reason: str, *, delivered: bool = False) -> None:
        """``delivery_failed``; unless the mail went out without some files, also a failed mark under the message."""
        await marks.outbound_failed(
            self.js, out, channel=CHANNEL, reason=reason, delivered=delivered, event_id=f"failed:{out.id}"
        )
        log.warning("delivery failed", extra={"account": out.account, "msg_id": out.id, "reason": reason[:300]})
