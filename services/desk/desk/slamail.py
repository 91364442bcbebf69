"""SLA alerts by e-mail: each ``sla_breached`` event to the addresses its line lists (``sla.notify_emails``).

One durable consumer on OL_EVT (``desk-sla-mail``, only ``ol.evt.sla_breached``), shared by every
desk replica, so each alert is mailed by one of them; the event is acknowledged only after the SMTP
server accepted the mail. A mail server that is down delays the alerts (retried every
``OPENLINES_SLA_MAIL_RETRY_SECONDS``), it does not lose them; after ``MAX_DELIVER`` attempts the alert is given up and
logged. A crash between the server's acceptance and the ack sends that alert twice, with the same
Message-ID (derived from the event id), which mail clients show once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter

from desk.reads import Reader
from desk.settings import Settings
from openlines import subjects
from openlines.consume import Durable
from openlines.envelopes import SessionEvent

log = logging.getLogger("desk.slamail")

MAILED = Counter("openlines_desk_sla_mails_total", "SLA alert e-mails", ["result"])
MAX_DELIVER = 20  # with the default retry of 30 s: about ten minutes of a mail server that refuses
SMTP_TIMEOUT = 30.0

_decoder = msgspec.json.Decoder(SessionEvent)


def _one_line(text: str) -> str:
    """Whitespace (line breaks included) folded to single spaces: a header value from a chat stays one header."""
    return " ".join(text.split())[:200]


def message(
    event: SessionEvent, *, sender: str, to: list[str], line_name: str, client: str, operator: str, link: str
) -> EmailMessage:
    """The alert as a plain-text mail. Every value from a chat is put in by the email package, never spliced
    into a header by hand (a client's name holding a line break cannot add a header)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = _one_line(f"SLA: {client} on {line_name} - {event.reason.split(' (')[0]}")
    msg["Date"] = formatdate(event.at.timestamp(), usegmt=True)
    digest = hashlib.sha256(event.id.encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<sla-{digest}@openlines>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to it
    lines = [
        f"A chat on the line {line_name} passed its response-time target.",
        "",
        f"Client:   {_one_line(client)}",
        f"Operator: {operator or 'nobody assigned'}",
        f"Target:   {event.reason}",
        f"At:       {event.at.isoformat(timespec='seconds')}",
        f"Session:  {event.session_id}",
    ]
    if link:
        lines += ["", f"Read it: {link}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class MailNotSent(Exception):
    """Some addresses did not take the alert; it is tried again for them."""


class SlaMailer:
    def __init__(self, js: JetStreamContext, reader: Reader, settings: Settings) -> None:
        self.js = js
        self.reader = reader
        self.s = settings
        self._done: dict[str, set[str]] = {}  # event id -> addresses that took its mail (while others are retried)

    async def run(self) -> None:
        cfg = js_api.ConsumerConfig(
            durable_name=subjects.DESK_SLA_MAIL_CONSUMER,
            filter_subject=subjects.event("sla_breached"),
            deliver_policy=js_api.DeliverPolicy.NEW,  # from the first desk with e-mail on: no old alerts mailed
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=2 * SMTP_TIMEOUT,
            max_deliver=MAX_DELIVER,
            num_replicas=self.s.replicas,
        )
        consumer = Durable(self.js, subjects.STREAM_EVT, cfg, fetch_timeout=5.0, retry_delay=self.s.sla_mail_retry_seconds)
        await consumer.run(self._one, asyncio.Event())  # runs until the desk cancels it

    async def _one(self, m: Msg) -> None:
        try:
            event = _decoder.decode(m.data)
        except msgspec.DecodeError:
            await m.term()
            return
        try:
            await self.mail(event)
        except Exception as exc:
            attempt = m.metadata.num_delivered or 1
            gave_up = attempt >= MAX_DELIVER
            MAILED.labels("given_up" if gave_up else "retry").inc()
            log.warning(
                "sla alert mail not sent" + ("; giving up" if gave_up else "; trying again"),
                extra={"session": event.session_id, "attempt": attempt, "error": repr(exc)},
            )
            if gave_up:
                self._done.pop(event.id, None)
            else:
                await m.nak(delay=self.s.sla_mail_retry_seconds)
            return
        await m.ack_sync()

    async def mail(self, event: SessionEvent) -> None:
        line = await self.reader.line(event.line_id)
        to = list(line.sla.notify_emails) if line is not None else []
        if not to:
            MAILED.labels("no_address").inc()
            return
        session = await self.reader.session(event.session_id)
        operator = await self.reader.account(event.operator_id) if event.operator_id else None
        base = self.s.desk_public_url.rstrip("/")
        msg = message(
            event,
            sender=self.s.sla_mail_from,
            to=to,
            line_name=(line.name if line is not None else "") or event.line_id,
            client=(session.client_name if session is not None else "") or "Client",
            operator=(operator.name if operator is not None else event.operator_id),
            link=f"{base}/transcript/{event.session_id}" if base else "",
        )
        # One mail per address: one refused address (full mailbox, greylisting) is retried alone; the ones
        # that took it are remembered here and not mailed again (after a crash they may be: same Message-ID).
        done = self._done.setdefault(event.id, set())
        failed: list[str] = []
        for address in to:
            if address in done:
                continue
            try:
                await aiosmtplib.send(
                    msg,
                    recipients=[address],
                    hostname=self.s.sla_smtp_host,
                    port=self.s.sla_smtp_port,
                    username=self.s.sla_smtp_username or None,
                    password=self.s.sla_smtp_password or None,
                    use_tls=self.s.sla_smtp_tls == "tls",
                    start_tls=self.s.sla_smtp_tls == "starttls",
                    timeout=SMTP_TIMEOUT,
                )
            except aiosmtplib.SMTPException as exc:
                failed.append(f"{address}: {exc}")
                continue
            done.add(address)
            MAILED.labels("sent").inc()
        if failed:
            raise MailNotSent("; ".join(failed))
        self._done.pop(event.id, None)
        log.info("sla alert mailed", extra={"session": event.session_id, "line": event.line_id, "recipients": len(to)})
