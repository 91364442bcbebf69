"""The e-mail gateway with the real router, a real Dovecot and a real SMTP server.

A client mail is APPENDed to the mailbox over IMAP (as an MTA's delivery
agent would), the gateway reads it, the router opens a session, an operator
replies with the real ``reply`` command and the reply arrives at the SMTP
server threaded onto the client's mail.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from peers.mailservers import (
    Dovecot,
    SmtpSink,
    append,
    client_mail,
)
from support import events, history, marks_of, session_of
from support.email import MAIL, assigned_session, consumer_done, inbound_mails, mail_flow, mail_lines, outbound_to
from support.timing import wait_for

from openlines import subjects
from openlines.commands import Reply, SetStatus, call
from openlines.envelopes import Inbound

pytestmark = pytest.mark.mail


async def test_client_mail_reaches_operator_clean_and_reply_is_threaded_and_answer_continues_session(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        first = client_mail(
            "Ann Client <Ann@Client.Example.TEST>",
            "My order 42 has not arrived.\n\n"
            "On Mon, 6 Jan 2025 at 10:00, Acme <support@example.test> wrote:\n> Your order shipped.\n",
            subject="Where is order 42?",
            message_id="<first-42@client.example.test>",
            html="<p>My order 42 has <b>not</b> arrived.<script>alert('x')</script></p>"
            "<blockquote>Your order shipped.</blockquote>",
        )
        await append(imap, first)

        session = await wait_for(lambda: assigned_session(nc, "ann@client.example.test"), timeout=20, what="session offered")
        entries = await wait_for(
            lambda: _with_direction(history(nc, session.id), "in"), timeout=10, what="client mail in the transcript"
        )
        seen = entries[0].text
        assert "My order 42 has not arrived." in seen
        assert "Where is order 42?" in seen  # a new conversation starts with its subject
        assert "Your order shipped" not in seen and "wrote:" not in seen  # the quote is stripped
        assert "<" not in seen and "alert" not in seen
        env = (await inbound_mails(nc))[0]
        assert env["id"] == "email:support:first-42@client.example.test"
        assert env["chat_id"] == "ann@client.example.test" and env["profile"]["email"] == "ann@client.example.test"
        assert env["profile"]["name"] == "Ann Client" and not env.get("no_auto_reply", False)

        # The welcome auto-reply is sent, marked as automatic.
        welcome = await wait_for(lambda: smtp.to("ann@client.example.test"), timeout=15, what="welcome mail")
        assert welcome[0].message["Auto-Submitted"] == "auto-replied"

        result = await call(
            nc, "reply", Reply(operator_id="anna", session_id=session.id, text="It ships today.", client_msg_id="r1")
        )
        out_id = result.message_id

        async def reply_mail() -> list[Any]:
            return [r for r in smtp.to("ann@client.example.test") if "It ships today." in r.message.get_content()]

        got = (await wait_for(reply_mail, timeout=15, what="operator reply at the SMTP server"))[0].message
        assert got["In-Reply-To"] == "<first-42@client.example.test>"
        assert "<first-42@client.example.test>" in got["References"]
        assert got["Subject"] == "Re: Where is order 42?"
        assert got["Auto-Submitted"] is None
        assert got["From"].addresses[0].addr_spec == "support@example.test"
        our_id = got["Message-ID"]
        assert our_id.startswith("<out-") and our_id.endswith("@mail.example.test>")
        assert out_id

        # The client answers our mail: same session, nothing new opened.
        answer = client_mail(
            "ann@client.example.test",
            "Great, thanks!\n\nOn Tue, Acme Support wrote:\n> It ships today.\n",
            subject="Re: Where is order 42?",
            message_id="<second-42@client.example.test>",
            headers={"In-Reply-To": our_id, "References": f"<first-42@client.example.test> {our_id}"},
        )
        await append(imap, answer)

        async def answered() -> list[Any]:
            return [h for h in await history(nc, session.id) if h.direction == "in" and "Great, thanks!" in h.text]

        entry = (await wait_for(answered, timeout=20, what="client answer in the same session"))[0]
        assert "It ships today" not in entry.text and "Re:" not in entry.text
        still = await session_of(nc, "ann@client.example.test", **MAIL)
        assert still is not None and still.id == session.id
        assert len(await events(nc, "session_opened")) == 1


async def _with_direction(entries: Any, direction: str) -> list[Any]:
    return [h for h in await entries if h.direction == direction]


async def test_auto_submitted_and_bulk_mail_open_no_chat_list_mail_gets_no_auto_reply_while_a_person_does(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp):
        await append(imap, client_mail("vacation@client.example.test", "I am away.", headers={"Auto-Submitted": "auto-replied"}))
        await append(
            imap,
            client_mail(
                "news@lists.example.test",
                "Our newsletter",
                headers={"List-Id": "<news.lists.example.test>", "List-Unsubscribe": "<mailto:u@lists.example.test>"},
            ),
        )
        await append(imap, client_mail("bulk@promo.example.test", "Sale!", headers={"Precedence": "bulk"}))
        await append(imap, client_mail("person@client.example.test", "Hello, a question."))

        await wait_for(lambda: smtp.to("person@client.example.test"), timeout=20, what="welcome for the person")

        async def router_done() -> bool:
            for robot in ("news@lists.example.test", "bulk@promo.example.test", "vacation@client.example.test"):
                p = subjects.partition_of("email", "support", robot)
                try:
                    info = await nc.jetstream().consumer_info(subjects.STREAM_IN, f"router-p{p}")
                except Exception:
                    return False
                if info.num_pending or info.num_ack_pending:
                    return False
            return True

        await wait_for(router_done, timeout=20, what="the router has handled every mail")
        # The router honours the loop-guard flag: no auto-reply is even queued for the robots...
        for robot in ("vacation@client.example.test", "news@lists.example.test", "bulk@promo.example.test"):
            assert await outbound_to(nc, robot) == []
        # ...and the gateway would drop one anyway (its second safety net).
        assert smtp.to("vacation@client.example.test") == []
        assert smtp.to("news@lists.example.test") == []
        assert smtp.to("bulk@promo.example.test") == []
        flags = {e["chat_id"]: e.get("no_auto_reply", False) for e in await inbound_mails(nc)}
        # A program's mail (Auto-Submitted, Precedence: bulk) is no conversation: not published at all,
        # only noted; a list relaying a person's mail is, without an auto-reply.
        assert flags == {"news@lists.example.test": True, "person@client.example.test": False}
        noted = " | ".join(e.reason for e in await events(nc, "dead_letter"))
        assert "vacation@client.example.test not opened as a chat" in noted and "Auto-Submitted: auto-replied" in noted
        assert "bulk@promo.example.test not opened as a chat" in noted and "Precedence: bulk" in noted
        for robot in ("vacation@client.example.test", "bulk@promo.example.test"):
            assert await session_of(nc, robot, **MAIL) is None
        # The router still sees them as plain Inbound (the marker is an extra field).
        for e in await inbound_mails(nc):
            msgspec.convert(e, Inbound)


async def test_bounce_of_our_reply_becomes_delivery_failed_on_its_session(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with mail_flow(nc, nats_server.url, imap, smtp, mail_lines(welcome="")):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await append(imap, client_mail("gone@client.example.test", "Please call me."))
        session = await wait_for(lambda: assigned_session(nc, "gone@client.example.test"), timeout=20, what="session")
        await call(nc, "reply", Reply(operator_id="anna", session_id=session.id, text="Calling now.", client_msg_id="r1"))
        sent = (await wait_for(lambda: smtp.to("gone@client.example.test"), timeout=15, what="reply sent"))[0].message
        dsn = (
            "From: MAILER-DAEMON@mx.example.test\r\n"
            "To: support@example.test\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "Auto-Submitted: auto-replied\r\n"
            "Message-ID: <dsn-1@mx.example.test>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.test\r\n\r\n"
            "Final-Recipient: rfc822; gone@client.example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
            "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: support@example.test\r\nTo: gone@client.example.test\r\nMessage-ID: {sent['Message-ID']}\r\n\r\n"
            "--B--\r\n"
        )
        await append(imap, dsn.encode())
        failed = await wait_for(lambda: events(nc, "delivery_failed"), timeout=20, what="delivery_failed from the bounce")
        assert failed[0].session_id == session.id
        assert "550 5.1.1 user unknown" in failed[0].reason
        # The bounce is not a client message.
        assert all("could not be delivered" not in h.text for h in await history(nc, session.id))

        # ... and the operator sees it under the message itself: failed, with the server's reason.
        async def failed_mark() -> list[Any]:
            return [m for m in await marks_of(nc, session.id) if m.status == "failed"]

        [mark] = await wait_for(failed_mark, timeout=10, what="a failed mark on the operator's mail")
        assert "550 5.1.1 user unknown" in mark.reason and mark.channel == "email"
        [reply] = [o for o in await outbound_to(nc, "gone@client.example.test") if not o.auto]
        assert mark.message_id == reply.id


async def test_smtp_5xx_reports_delivery_failed_and_4xx_is_retried_then_sent_once(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    smtp.answers["nobody@client.example.test"] = ["550 5.1.1 no such user"]
    smtp.answers["busy@client.example.test"] = ["451 4.3.0 try again later", "421 4.7.0 busy"]
    async with mail_flow(nc, nats_server.url, imap, smtp, mail_lines(welcome="")):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        for who in ("nobody", "busy"):
            await append(imap, client_mail(f"{who}@client.example.test", "Hi"))
        for who in ("nobody", "busy"):
            s = await wait_for(lambda who=who: assigned_session(nc, f"{who}@client.example.test"), timeout=20, what=who)
            await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text=f"Hello {who}", client_msg_id="r1"))
        await wait_for(lambda: smtp.to("busy@client.example.test"), timeout=20, what="retried mail delivered")
        failed = await wait_for(lambda: events(nc, "delivery_failed"), timeout=10, what="delivery_failed")
        assert [f.chat_id for f in failed] == ["nobody@client.example.test"]
        assert "550 5.1.1 no such user" in failed[0].reason
        await wait_for(lambda: consumer_done(nc), timeout=10, what="outbound settled")
        assert smtp.attempts["busy@client.example.test"] == 3 and len(smtp.to("busy@client.example.test")) == 1
        assert smtp.to("nobody@client.example.test") == []
