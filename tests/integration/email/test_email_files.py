"""Files both ways through the e-mail gateway, a real Dovecot and a real SMTP server.

In: a client's attachments are kept in ``ol-email-files`` and named by
reference. Out: an operator's files leave as MIME attachments (never links);
a file no longer kept is left out and reported, files too large for a mail
make the reply ``delivery_failed``.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from peers.mailservers import Dovecot, SmtpSink, append, client_mail
from support import events, history, session_of
from support.email import MAIL, mail_flow, mail_lines
from support.timing import wait_for

from desk.files import FileStore
from openlines import files, subjects
from openlines.commands import Reply, SetStatus, call
from openlines.envelopes import Attachment
from openlines.state import Session

pytestmark = pytest.mark.mail

PDF = b"%PDF-1.4 the invoice"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


async def assigned(nc: Any, address: str) -> Session | None:
    s = await session_of(nc, address, **MAIL)
    return s if s is not None and s.operator_id == "anna" else None


def with_files(sender: str, text: str) -> EmailMessage:
    mail = client_mail(sender, text)
    mail.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice 42.pdf")
    mail.add_attachment(PNG, maintype="image", subtype="png", filename="photo.png")
    return mail


def attachments_of(mail: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    return [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in mail.iter_attachments()]  # type: ignore[misc]


async def test_a_clients_attachments_are_kept_and_the_operators_files_leave_as_mime_parts(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    store = await FileStore.open(nc.jetstream())
    async with mail_flow(nc, nats_server.url, imap, smtp, mail_lines(welcome="")):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await append(imap, with_files("ann@client.example.test", "The invoice and a photo of the box."))
        session = await wait_for(lambda: assigned(nc, "ann@client.example.test"), timeout=20, what="the chat")

        async def client_entry() -> Any:
            return [h for h in await history(nc, session.id) if h.direction == "in"]

        [entry] = await wait_for(client_entry, timeout=10, what="the mail in the transcript")
        pdf, png = entry.attachments
        assert (pdf.name, pdf.mime, pdf.kind) == ("invoice 42.pdf", "application/pdf", "file")
        assert (png.name, png.mime, png.kind) == ("photo.png", "image/png", "image")
        reader = files.Reader(nc.jetstream())
        assert pdf.ref.startswith(f"{subjects.OBJ_EMAIL_FILES}:support/") and (await reader.get(pdf.ref)).data == PDF
        assert (await reader.get(png.ref)).data == PNG

        label = await store.put(session.id, "label.png", "image/png", PNG)
        terms = await store.put(session.id, "terms.pdf", "application/pdf", PDF + b" terms")
        atts = [label.attachment("https://desk.example.com"), terms.attachment("https://desk.example.com")]
        reply = Reply(operator_id="anna", session_id=session.id, text="Here is your label.", client_msg_id="r1", attachments=atts)
        await call(nc, "reply", reply)

        def answer() -> list[Any]:
            return [r for r in smtp.to("ann@client.example.test") if "Here is your label." in r.data.decode(errors="replace")]

        [sent] = await wait_for(answer, timeout=20, what="the reply with its files")
    mail = sent.message
    body = mail.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Here is your label."
    assert "http" not in body.get_content()  # the files are attached, not linked
    assert attachments_of(mail) == [("label.png", "image/png", PNG), ("terms.pdf", "application/pdf", PDF + b" terms")]
    assert not await events(nc, "delivery_failed")


async def test_a_file_no_longer_kept_is_left_out_and_files_too_large_for_a_mail_fail_the_reply(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    store = await FileStore.open(nc.jetstream())
    async with mail_flow(nc, nats_server.url, imap, smtp, mail_lines(welcome=""), email_attachments_max_bytes=1000):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        for who in ("gone", "big"):
            await append(imap, client_mail(f"{who}@client.example.test", "Hi"))
        gone = await wait_for(lambda: assigned(nc, "gone@client.example.test"), timeout=20, what="gone's chat")
        big = await wait_for(lambda: assigned(nc, "big@client.example.test"), timeout=20, what="big's chat")

        missing = Attachment(
            kind="file", name="old.pdf", mime="application/pdf", ref=f"ol-desk-files:{gone.id}/AAAAAAAAAAAAAAAAAAAAAAAA"
        )
        await call(
            nc,
            "reply",
            Reply(operator_id="anna", session_id=gone.id, text="See the file", client_msg_id="g1", attachments=[missing]),
        )
        huge = await store.put(big.id, "scan.pdf", "application/pdf", PDF + bytes(2000))
        await call(
            nc,
            "reply",
            Reply(operator_id="anna", session_id=big.id, text="The scan", client_msg_id="b1", attachments=[huge.attachment("")]),
        )

        failed = await wait_for(lambda: _two(events(nc, "delivery_failed")), timeout=20, what="both replies reported")
        [sent] = await wait_for(lambda: smtp.to("gone@client.example.test"), timeout=20, what="the mail without the file")
    by_chat = {f.chat_id: f.reason for f in failed}
    assert (
        "old.pdf" in by_chat["gone@client.example.test"]
        and "no longer in the desk's file store" in by_chat["gone@client.example.test"]
    )
    assert "sent without" in by_chat["gone@client.example.test"]
    assert "1000 bytes" in by_chat["big@client.example.test"]
    assert attachments_of(sent.message) == [] and "See the file" in sent.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert smtp.to("big@client.example.test") == []


async def _two(pending: Any) -> Any:
    got = await pending
    return got if len(got) >= 2 else None
