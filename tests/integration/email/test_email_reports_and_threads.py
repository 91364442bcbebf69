"""Reports, forwards and replies from another address, through a real Dovecot, the gateway and the router.

- A read receipt, a spam complaint, a delayed-delivery notice and a vacation
  reply about our reply become events on its session; they open no chat and
  get no auto-reply (nor does a complaint
  about a mail we never sent, taken from the shared real-world corpus).
- A forwarded mail arrives with its ``.eml`` attachment stored and its text readable.
- A colleague in copy answering our reply joins the client's session, and
  the operator's next reply is copied to them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from peers.mailservers import Dovecot, SmtpSink, append, client_mail
from support import events, history, marks_of, session_of
from support.desk import http_session, running_desk, sign_in
from support.desk_admin import DEMO_HASH
from support.email import MAIL, assigned_session, inbound_mails, mail_flow, mail_lines, outbound_to
from support.timing import wait_for

from openlines import files
from openlines.commands import Reply, SetStatus, call

pytestmark = pytest.mark.mail

LINES = mail_lines(password_hash=DEMO_HASH)
CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "email"


async def _replied(nc: Any, smtp: SmtpSink, address: str, text: str) -> tuple[Any, Any]:
    """The client's session and the operator's reply as it reached the SMTP server."""
    session = await wait_for(lambda: assigned_session(nc, address), timeout=20, what=f"session of {address}")
    await call(
        nc, "reply", Reply(operator_id="anna", session_id=session.id, text=text, client_msg_id=re.sub(r"\W", "_", text)[:40])
    )

    def sent() -> list[Any]:
        return [r for r in smtp.to(address) if text in r.message.get_content()]

    return session, (await wait_for(sent, timeout=15, what="operator reply at the SMTP server"))[0].message


def _report(sender: str, report_type: str, part: str, about: str, mid: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: support@example.test\r\nSubject: Report\r\nMessage-ID: {mid}\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type={report_type}; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/plain\r\n\r\nHuman readable part.\r\n"
        f"--R\r\n{part}\r\n"
        f"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@example.test\r\nMessage-ID: {about}\r\n\r\n--R--\r\n"
    ).encode()


async def test_read_receipt_complaint_delay_and_vacation_reply_open_no_chat_get_no_auto_reply_and_mark_our_mail(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp, LINES):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await append(imap, client_mail("ann@client.example.test", "Where is my parcel?"))
        session, reply = await _replied(nc, smtp, "ann@client.example.test", "It left today.")
        ours = reply["Message-ID"]
        mdn = (
            "Content-Type: message/disposition-notification\r\n\r\nReporting-UA: pc.client.example.test; Thunderbird\r\n"
            f"Final-Recipient: rfc822;ann@client.example.test\r\nOriginal-Message-ID: {ours}\r\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
        )
        arf = (
            "Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n"
            "Original-Rcpt-To: ann@client.example.test\r\n"
        )
        await append(
            imap, _report("ann@client.example.test", "disposition-notification", mdn, ours, "<mdn-1@client.example.test>")
        )
        await append(imap, _report("fbl@isp.example.test", "feedback-report", arf, ours, "<arf-1@isp.example.test>"))
        delayed = (
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.client.example.test\r\n\r\n"
            "Final-Recipient: rfc822; ann@client.example.test\r\nAction: delayed\r\nStatus: 4.2.2\r\n"
            "Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n"
        )
        await append(imap, _report("MAILER-DAEMON@mx.client.example.test", "delivery-status", delayed, ours, "<dsn-1@mx>"))
        vacation = client_mail(
            "ann@client.example.test",
            "I am away until Monday.",
            subject="Automatic reply: Where is my parcel?",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ours},
        )
        await append(imap, vacation)
        foreign = CORPUS / "flanker__yahoo.eml"  # a complaint about a mail we never sent
        if foreign.is_file():
            await append(imap, foreign.read_bytes())

        read = await wait_for(lambda: events(nc, "message_read"), timeout=20, what="message_read from the read receipt")
        complaint = await wait_for(lambda: events(nc, "spam_complaint"), timeout=20, what="spam_complaint from the ARF")
        assert read[0].session_id == session.id and "displayed" in read[0].reason
        assert complaint[0].session_id == session.id and "abuse" in complaint[0].reason
        late = await wait_for(lambda: events(nc, "delivery_delayed"), timeout=20, what="delivery_delayed from the DSN")
        away = await wait_for(lambda: events(nc, "auto_reply_received"), timeout=20, what="auto_reply_received")
        assert late[0].session_id == session.id and "452 4.2.2 Mailbox full" in late[0].reason
        assert away[0].session_id == session.id and "away until Monday" in away[0].reason
        assert await events(nc, "delivery_failed") == []  # a delay is not a failure
        if foreign.is_file():

            async def foreign_noted() -> list[Any]:
                return [e for e in await events(nc, "dead_letter") if "spam complaint" in e.reason]

            noted = await wait_for(foreign_noted, timeout=20, what="the foreign complaint noted as a dead letter")
            assert "<20120711015015.4A8BE2E088E@www.example.com>" in noted[0].reason

        # Nothing of it reached the router as a message: one client mail, one session, one welcome.
        assert [e["chat_id"] for e in await inbound_mails(nc)] == ["ann@client.example.test"]
        assert len(await events(nc, "session_opened")) == 1
        assert await session_of(nc, "fbl@isp.example.test", **MAIL) is None
        assert await outbound_to(nc, "fbl@isp.example.test") == [] and smtp.to("fbl@isp.example.test") == []
        assert [o.auto for o in await outbound_to(nc, "ann@client.example.test")] == [True, False]
        assert all("Human readable part" not in h.text for h in await history(nc, session.id))
        # Under the operator's message itself: sent (the mail server took it), delayed (the notice, with its
        # reason) and read (the receipt). The complaint and the vacation reply are events only.
        [answer] = [o for o in await outbound_to(nc, "ann@client.example.test") if not o.auto]

        async def answer_marks() -> dict[str, str]:
            got = {m.status: m.reason for m in await marks_of(nc, session.id) if m.message_id == answer.id}
            return got if sorted(got) == ["delayed", "read", "sent"] else {}

        marks = await wait_for(answer_marks, timeout=20, what="sent, delayed and read marks on the operator's mail")
        assert "452 4.2.2 Mailbox full" in marks["delayed"] and marks["read"] == ""
        assert {m.channel for m in await marks_of(nc, session.id)} == {"email"}


async def test_forwarded_mail_arrives_with_its_eml_attachment_and_readable_text(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp, LINES):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        forwarded = client_mail(
            "Shop <orders@shop.example.test>", "Your order 42 was cancelled.", subject="Order 42 cancelled", to="ann@x.test"
        )
        mail = client_mail("ann@client.example.test", "Why was this cancelled?", subject="Fwd: Order 42 cancelled")
        mail.add_attachment(forwarded)  # message/rfc822, as mail clients forward "as attachment"
        await append(imap, mail)

        session = await wait_for(lambda: assigned_session(nc, "ann@client.example.test"), timeout=20, what="session")

        async def client_entries() -> list[Any]:
            return [h for h in await history(nc, session.id) if h.direction == "in"]

        entry = (await wait_for(client_entries, timeout=10, what="the mail in the transcript"))[0]
        assert entry.text.startswith("Fwd: Order 42 cancelled\n\nWhy was this cancelled?")
        assert "---- Forwarded message ----\nFrom: Shop <orders@shop.example.test>" in entry.text
        assert "Subject: Order 42 cancelled" in entry.text and "Your order 42 was cancelled." in entry.text
        [att] = entry.attachments
        assert (att.name, att.mime, att.kind) == ("Order 42 cancelled.eml", "message/rfc822", "file")
        assert att.ref.startswith("ol-email-files:support/")
        stored = await files.Reader(nc.jetstream()).get(att.ref)
        assert b"Your order 42 was cancelled." in stored.data and len(stored.data) == att.size


async def test_reply_from_a_colleague_in_copy_joins_the_clients_session_and_is_copied_on_the_answer(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp, LINES):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        first = client_mail(
            "Ann <ann@client.example.test>",
            "Our invoice is wrong.",
            subject="Invoice 7",
            message_id="<inv-1@client.example.test>",
            headers={"Cc": "Bob <bob@client.example.test>"},
        )
        await append(imap, first)
        session, reply = await _replied(nc, smtp, "ann@client.example.test", "Which line is wrong?")
        ours = reply["Message-ID"]
        answer = client_mail(
            "Bob Colleague <bob@client.example.test>",
            "Line 3, the quantity.\n\nOn Tue, Acme Support wrote:\n> Which line is wrong?\n",
            subject="Re: Invoice 7",
            message_id="<inv-2@client.example.test>",
            to="support@example.test, ann@client.example.test",
            headers={"In-Reply-To": ours, "References": f"<inv-1@client.example.test> {ours}"},
        )
        await append(imap, answer)

        async def bobs_answer() -> list[Any]:
            return [h for h in await history(nc, session.id) if h.direction == "in" and "Line 3" in h.text]

        entry = (await wait_for(bobs_answer, timeout=20, what="the colleague's answer in the client's session"))[0]
        assert entry.text.startswith("[From Bob Colleague <bob@client.example.test>, in this conversation]")
        assert "Which line is wrong" not in entry.text and entry.author_id == "bob@client.example.test"
        assert len(await events(nc, "session_opened")) == 1 and await session_of(nc, "bob@client.example.test", **MAIL) is None
        still = await session_of(nc, "ann@client.example.test", **MAIL)
        assert still is not None and still.id == session.id and still.client_name == "Ann"

        # The client card lists both addresses of the conversation, the client's first.
        async with running_desk(nats_server.url) as desk, http_session(desk) as http:
            await sign_in(http, "anna")
            async with http.get(f"/api/sessions/{session.id}/client") as r:
                card = await r.json()
            assert r.status == 200, card
            assert card["client"]["emails"] == ["ann@client.example.test", "bob@client.example.test"]

        _, second = await _replied(nc, smtp, "ann@client.example.test", "Fixed, new invoice attached.")
        assert second["To"] == "ann@client.example.test" and second["Cc"] == "bob@client.example.test"
        assert second["In-Reply-To"] == "<inv-2@client.example.test>"
        assert "<inv-1@client.example.test>" in second["References"]
